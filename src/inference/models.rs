//! Model configurations: every regular, non-hidden file in the models folder is a model; its
//! name is the file name; the file is a `KEY=VALUE` environment file that `model@.service` loads.

use crate::systemd::escape;
use crate::systemd::view::UnitView;
use crate::systemd::{Systemd, SystemdError};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Overrides the models folder (set it with a drop-in on inference-service.service).
pub const DIR_ENV: &str = "MODELS_CONFIG_DIR";
pub const UNIT_TEMPLATE: &str = "model@.service";
pub const UNIT_PATTERN: &str = "model@*.service";
/// Longest model name: a file name.
pub const NAME_MAX: usize = 255;

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub port: Option<u16>,
}

impl Model {
    pub fn unit(&self) -> String {
        unit_of(&self.name).expect("model names are validated")
    }

    /// The original's shape: `{model_name, file_path, port}`.
    pub fn json(&self) -> Value {
        json!({"model_name": self.name, "file_path": self.path, "port": self.port})
    }
}

/// `model@<escaped name>.service`.
pub fn unit_of(name: &str) -> Option<String> {
    escape::template_instance(UNIT_TEMPLATE, name)
}

/// The model name of a `model@….service` unit.
pub fn name_of(unit: &str) -> Option<String> {
    escape::unescape(escape::instance_of(unit, UNIT_TEMPLATE)?)
}

/// A running model: its name, and when its unit became active.
pub type Running = (String, Option<chrono::DateTime<chrono::Local>>);

/// Names of the running models, sorted: from the view of the `model@*` units (or, when it is
/// not live, one `ListUnitsByPatterns` call).
pub fn running(sd: &dyn Systemd, view: &UnitView) -> Result<Vec<String>, SystemdError> {
    Ok(running_since(sd, view)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The running models with when each unit became active (for the idle policy), sorted by name.
pub fn running_since(sd: &dyn Systemd, view: &UnitView) -> Result<Vec<Running>, SystemdError> {
    let by_name: std::collections::BTreeMap<String, Option<u64>> = view
        .units(sd, &[UNIT_PATTERN])?
        .into_iter()
        .filter(|u| u.row.is_up())
        .filter_map(|u| Some((name_of(&u.row.name)?, u.active_enter_usec)))
        .collect();
    Ok(by_name
        .into_iter()
        .map(|(name, since)| (name, since.and_then(crate::time::from_usec)))
        .collect())
}

/// `$MODELS_CONFIG_DIR`, else `~/models/configs` of the user the service runs as.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| PathBuf::from("/home/abc"), PathBuf::from);
    home.join("models").join("configs")
}

/// The templates a model name becomes an instance of.
pub const TEMPLATES: &[&str] = &[UNIT_TEMPLATE, "model-proxy@.service", "model-proxy@.socket"];

/// Checks a model name from a URL: the rules of [`escape::validate_name`], and its escaped
/// form fits a unit name of each of [`TEMPLATES`].
pub fn validate(name: &str) -> anyhow::Result<()> {
    escape::validate_name_for("model name", name, NAME_MAX, TEMPLATES)
}

/// The models in `dir`, sorted by name. Files whose names are not valid model names are left out
/// with a warning (they could not be addressed in a URL or a unit name).
pub fn list(dir: &Path) -> std::io::Result<Vec<Model>> {
    let mut models = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Err(why) = validate(&name) {
            crate::log_warn!("ignoring {}: {why}", entry.path().display());
            continue;
        }
        models.push(load(dir, &name));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// The model `name` in `dir`, if it is a regular file there. `name` must be validated first.
pub fn find(dir: &Path, name: &str) -> Option<Model> {
    let path = dir.join(name);
    std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file())?;
    Some(load(dir, name))
}

fn load(dir: &Path, name: &str) -> Model {
    let path = dir.join(name);
    let port = std::fs::read_to_string(&path).ok().and_then(|text| {
        crate::envfile::parse(&text)
            .into_iter()
            .find(|(k, _)| k == "PORT")
            .and_then(|(_, v)| v.trim().parse().ok())
    });
    Model {
        name: name.to_string(),
        path,
        port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_the_regular_visible_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("subdir")).unwrap();
        std::fs::write(dir.join("llama.env"), "PORT=\"8081\"\n").unwrap();
        std::fs::write(dir.join("noport"), "X=1\n").unwrap();
        std::fs::write(dir.join("badport"), "PORT=http\n").unwrap();
        std::fs::write(dir.join(".hidden"), "PORT=1\n").unwrap();
        std::fs::write(dir.join("a b"), "PORT=1\n").unwrap();
        let models = list(dir).unwrap();
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["badport", "llama.env", "noport"]);
        assert_eq!(models[1].port, Some(8081));
        assert_eq!(models[0].port, None);
        assert_eq!(models[1].json()["port"], 8081);
        assert!(models[2].json()["port"].is_null());
        assert_eq!(models[1].unit(), "model@llama.env.service");
        assert!(find(dir, "subdir").is_none());
        assert!(find(dir, "missing").is_none());
        assert_eq!(find(dir, "llama.env").unwrap().port, Some(8081));
    }

    #[test]
    fn unit_names_round_trip() {
        for name in ["llama", "x.service", "a-b_c.1"] {
            assert_eq!(name_of(&unit_of(name).unwrap()).as_deref(), Some(name));
        }
        assert_eq!(unit_of("a-b").unwrap(), r"model@a\x2db.service");
        assert_eq!(name_of("model@.service"), None);
        // 64 '-' pass the character rules but not as a unit name: refused, never a panic.
        let dashes = "-".repeat(64);
        assert!(
            validate(&dashes)
                .unwrap_err()
                .to_string()
                .contains("too long for a unit name")
        );
        assert!(validate(&"-".repeat(58)).is_ok());
    }
}
