//! The Debian package in a system without the project: install, metrics, shell integration,
//! upgrade, remove and purge, with apt as an administrator types it.

use crate::ensure_eq;
use crate::harness::{Group, Sandbox, repo_root, sandbox_script, wait_for};
use anyhow::{Context, Result, bail, ensure};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "package",
    cases: &[
        (
            "apt_install_answers_with_no_other_step",
            apt_install_answers_with_no_other_step,
        ),
        (
            "completions_man_pages_and_version",
            completions_man_pages_and_version,
        ),
        (
            "a_schedule_is_listed_by_list_timers",
            a_schedule_is_listed_by_list_timers,
        ),
        ("metrics_pass_promtool", metrics_pass_promtool),
        (
            "node_exporter_serves_the_admission_figures",
            node_exporter_serves_the_admission_figures,
        ),
        (
            "upgrade_keeps_schedule_and_token",
            upgrade_keeps_schedule_and_token,
        ),
        (
            "remove_stops_everything_and_keeps_state",
            remove_stops_everything_and_keeps_state,
        ),
        (
            "purge_deletes_state_and_token_not_env_files",
            purge_deletes_state_and_token_not_env_files,
        ),
    ],
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The "rebuilt package" of the upgrade case: the same tree, a higher version.
fn upgrade_version() -> String {
    format!("{VERSION}+test1")
}

/// Builds the package (`make deb`) of `version` once per run; both releases install the same file.
fn deb(version: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let build = |v: &str| -> Result<PathBuf, String> {
            let out = Command::new("make")
                .args(["-s", "deb", &format!("DEB_VERSION={v}")])
                .current_dir(repo_root())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running make deb: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "make deb DEB_VERSION={v} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let path = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string();
            Ok(repo_root().join(path))
        };
        Ok((build(VERSION)?, build(&upgrade_version())?))
    });
    let (first, upgrade) = built.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(if version == VERSION {
        first.clone()
    } else {
        upgrade.clone()
    })
}

/// Copies the package of `version` into the container's /root; returns its name there.
fn copy_in(s: &Sandbox, version: &str) -> Result<String> {
    let path = deb(version)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("package file name")?
        .to_string();
    std::fs::copy(&path, s.dir.join("root").join(&name))
        .with_context(|| format!("copying {} into the container", path.display()))?;
    Ok(name)
}

fn apt(s: &Sandbox, args: &str) -> Result<String> {
    s.ok(&format!(
        "cd /root && DEBIAN_FRONTEND=noninteractive apt-get {args} 2>&1"
    ))
}

fn token(s: &Sandbox) -> Result<String> {
    Ok(s.ok("cat /etc/homelab/api-token")?.trim().to_string())
}

fn exists(s: &Sandbox, path: &str) -> Result<bool> {
    Ok(s.sh(&format!("test -e '{path}'"))?.status.success())
}

fn apt_install_answers_with_no_other_step(s: &Sandbox) -> Result<()> {
    ensure!(
        !exists(s, "/usr/bin/shutdown-service")?,
        "the container is not clean: the project is installed already"
    );
    let name = copy_in(s, VERSION)?;
    apt(s, &format!("install -y ./{name}"))?;
    // No other step: the package's postinst enabled and started what is needed.
    let reply = s.get(":5001/health")?;
    ensure_eq!(reply.expect(200)?["status"], "healthy");
    ensure_eq!(s.get(":5002/health")?.expect(200)?["status"], "healthy");
    for unit in [
        "home-lab-services.target",
        "shutdown-service.socket",
        "inference-service.socket",
        "brain-experiment.target",
        "brain-experiment-coordinator.service",
    ] {
        ensure_eq!(
            s.ok(&format!("systemctl is-enabled {unit}"))?.trim(),
            "enabled",
            "{unit} after apt-get install"
        );
        ensure_eq!(
            s.active_state(unit)?,
            "active",
            "{unit} after apt-get install"
        );
    }
    ensure!(token(s)?.len() == 64, "the API token was not generated");
    ensure_eq!(
        s.ok("stat -c '%U %a' /etc/homelab/api-token")?.trim(),
        "root 600"
    );
    // Users from sysusers.d, folders from tmpfiles.d.
    s.ok("id abc && id brain && id homelab-model && test -d /etc/brain-in-jar/experiments")?;
    Ok(())
}

fn completions_man_pages_and_version(s: &Sandbox) -> Result<()> {
    let out = s.ok("bash -c 'source <(brainctl completions bash); complete -p brainctl'")?;
    ensure!(
        out.starts_with("complete ")
            && out.contains("-F _brainctl")
            && out.trim_end().ends_with(" brainctl"),
        "no bash completion for brainctl: {out}"
    );
    for (page, path) in [
        ("brainctl", "/usr/share/man/man1/brainctl.1.gz"),
        (
            "shutdown-service",
            "/usr/share/man/man8/shutdown-service.8.gz",
        ),
        (
            "inference-service",
            "/usr/share/man/man8/inference-service.8.gz",
        ),
    ] {
        ensure_eq!(s.ok(&format!("man -w {page}"))?.trim(), path);
    }
    // The page renders without groff warnings.
    let warnings = s.ok("MANWIDTH=80 man --warnings -E UTF-8 brainctl 2>&1 >/dev/null")?;
    ensure!(warnings.trim().is_empty(), "man warns: {warnings}");
    // Debian's shells find the other completions where they look.
    s.ok("test -s /usr/share/zsh/vendor-completions/_brainctl && test -s /usr/share/fish/vendor_completions.d/brainctl.fish")?;
    ensure_eq!(
        s.ok("brainctl --version")?.trim(),
        format!("brainctl {VERSION}")
    );
    Ok(())
}

/// Schedules a one-off power-off in 120 minutes; returns its unit.
fn schedule(s: &Sandbox) -> Result<String> {
    let auth = format!("Authorization: Bearer {}", token(s)?);
    let reply = s.curl(
        "POST",
        ":5001/shutdown/schedule",
        &["-H", &auth, "-d", r#"{"minutes": 120}"#],
    )?;
    let json = reply.expect(200)?;
    Ok(json["shutdown"]["unit"]
        .as_str()
        .context("no unit in the answer")?
        .to_string())
}

fn a_schedule_is_listed_by_list_timers(s: &Sandbox) -> Result<()> {
    let unit = schedule(s)?;
    let listed = s.ok("systemctl list-timers 'homelab-shutdown@*'")?;
    ensure!(
        listed.contains(&unit),
        "{unit} not in list-timers:\n{listed}"
    );
    Ok(())
}

/// Runs Debian's promtool (on the host) on `text`.
fn promtool_check(what: &str, text: &str) -> Result<()> {
    let out = Command::new(sandbox_script())
        .arg("promtool")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "no promtool: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let promtool = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    // promtool exits 1 for errors, 3 for lint problems only (names, help texts): both refuse.
    ensure!(
        out.status.success(),
        "promtool check metrics refused {what} ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn metrics_pass_promtool(s: &Sandbox) -> Result<()> {
    // A model, so that the per-model figures have a sample.
    s.ok("printf 'PORT=18081\\nMODEL_COMMAND=/bin/sleep infinity\\n' > /home/abc/models/configs/demo.env && chown abc:abc /home/abc/models/configs/demo.env")?;
    let auth = format!("Authorization: Bearer {}", token(s)?);
    s.curl("POST", ":5002/models/demo.env/start", &["-H", &auth])?
        .expect(200)?;
    s.get(":5001/health")?.expect(200)?;
    let shutdown = s.get(":5001/metrics")?;
    ensure_eq!(shutdown.status, 200);
    for line in [
        "homelab_shutdown_schedules{kind=\"one-off\",action=\"poweroff\"} 1\n",
        "homelab_http_requests_total{method=\"GET\",route=\"/health\",code=\"200\"}",
        "# TYPE homelab_shutdown_schedule_next_elapse_timestamp_seconds gauge\n",
        "# TYPE homelab_shutdown_last_power_action_timestamp_seconds gauge\n",
    ] {
        ensure!(
            shutdown.body.contains(line),
            "no {line:?} in\n{}",
            shutdown.body
        );
    }
    promtool_check("the shutdown service's /metrics", &shutdown.body)?;
    let inference = s.get(":5002/metrics")?;
    ensure_eq!(inference.status, 200);
    for line in [
        "homelab_model_up{model=\"demo.env\"} 1\n",
        "homelab_model_start_failures_total{model=\"demo.env\"} 0\n",
        "homelab_http_requests_total{method=\"POST\",route=\"/models/{}/start\",code=\"200\"} 1\n",
    ] {
        ensure!(
            inference.body.contains(line),
            "no {line:?} in\n{}",
            inference.body
        );
    }
    promtool_check("the inference service's /metrics", &inference.body)?;
    // The text format's content type, and GET needs no token, as the other reads.
    let head = s.ok("curl -sS -o /dev/null -D - 127.0.0.1:5001/metrics")?;
    ensure!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "content type: {head}"
    );
    s.curl("POST", ":5002/models/demo.env/stop", &["-H", &auth])?
        .expect(200)?;
    Ok(())
}

fn node_exporter_serves_the_admission_figures(s: &Sandbox) -> Result<()> {
    // Two experiments and a limit of one: one runs, one waits.
    s.ok("printf 'MAX_CONCURRENT_EXPERIMENTS=1\\n' > /etc/brain-in-jar/coordinator.env && systemctl reload brain-experiment-coordinator")?;
    for id in ["demo1", "demo2"] {
        s.ok(&format!(
            "printf 'EXPERIMENT_RAM_LIMIT=64M\\nEXPERIMENT_COMMAND=/bin/sleep infinity\\n' > /etc/brain-in-jar/experiments/{id}.env"
        ))?;
    }
    s.ok("systemctl daemon-reload")?;
    s.ok("brainctl start demo1 && brainctl start demo2")?;
    let file = "/var/lib/prometheus/node-exporter/homelab.prom";
    wait_for("the coordinator's figures", Duration::from_secs(30), || {
        let text = s.sh(&format!("cat {file}"))?;
        let text = String::from_utf8_lossy(&text.stdout);
        Ok(text.contains("homelab_experiments_running 1\n")
            && text.contains("homelab_experiments_queued 1\n"))
    })?;
    let text = s.ok(&format!("cat {file}"))?;
    for line in [
        "homelab_coordinator_thermal_state{state=\"normal\"} 1\n",
        "homelab_experiment_queued{id=\"demo2\",unit=\"brain-experiment@demo2.service\"} 1\n",
        "homelab_experiment_memory_max_bytes{id=\"demo1\",unit=\"brain-experiment@demo1.service\"} 67108864\n",
        "homelab_experiment_cpu_seconds_total{id=\"demo1\",unit=\"brain-experiment@demo1.service\"}",
        "homelab_experiments_refused_total 0\n",
    ] {
        ensure!(text.contains(line), "no {line:?} in\n{text}");
    }
    promtool_check("the coordinator's textfile", &text)?;
    // node_exporter's textfile collector serves them.
    wait_for("node_exporter to answer", Duration::from_secs(30), || {
        Ok(s.get(":9100/metrics").is_ok_and(|r| r.status == 200))
    })?;
    let served = s.get(":9100/metrics")?;
    for line in [
        "homelab_experiments_running 1\n",
        "homelab_experiments_queued 1\n",
    ] {
        ensure!(
            served.body.contains(line),
            "node_exporter does not serve {line:?}"
        );
    }
    let textfile: Vec<&str> = served
        .body
        .lines()
        .filter(|l| l.starts_with("node_textfile"))
        .collect();
    ensure!(
        textfile.contains(&"node_textfile_scrape_error 0"),
        "node_exporter could not read the textfile: {textfile:?}; {}",
        s.ok("ls -la /var/lib/prometheus/node-exporter; journalctl -u prometheus-node-exporter --no-pager | grep -i textfile | tail -n 5")?
    );
    Ok(())
}

fn invocation(s: &Sandbox, unit: &str) -> Result<String> {
    s.prop(unit, "InvocationID")
}

fn upgrade_keeps_schedule_and_token(s: &Sandbox) -> Result<()> {
    let token_before = token(s)?;
    let schedules_before = s.get(":5001/shutdown/schedules")?.expect(200)?.clone();
    ensure_eq!(schedules_before["count"], 1, "before the upgrade");
    let unit = schedules_before["schedules"][0]["unit"]
        .as_str()
        .context("no unit")?
        .to_string();
    // The service runs now (the request above started it).
    let service_before = invocation(s, "shutdown-service.service")?;
    let coordinator_before = invocation(s, "brain-experiment-coordinator.service")?;
    let experiment_before = invocation(s, "brain-experiment@demo1.service")?;
    let name = copy_in(s, &upgrade_version())?;
    apt(s, &format!("install -y ./{name}"))?;
    ensure_eq!(
        s.ok("dpkg-query -W -f '${Version}' homelab")?,
        upgrade_version()
    );
    ensure_eq!(token(s)?, token_before, "the token after the upgrade");
    let listed = s.ok("systemctl list-timers 'homelab-shutdown@*'")?;
    ensure!(
        listed.contains(&unit),
        "{unit} lost in the upgrade:\n{listed}"
    );
    let after = s.get(":5001/shutdown/schedules")?.expect(200)?.clone();
    ensure_eq!(after["schedules"][0]["unit"], unit.as_str());
    ensure_eq!(
        after["schedules"][0]["created_at"],
        schedules_before["schedules"][0]["created_at"],
        "the state file's entry after the upgrade"
    );
    // What ran was restarted on the new binaries; the experiment was left alone.
    ensure!(
        invocation(s, "shutdown-service.service")? != service_before,
        "shutdown-service was not restarted"
    );
    ensure!(
        invocation(s, "brain-experiment-coordinator.service")? != coordinator_before,
        "the coordinator was not restarted"
    );
    ensure_eq!(
        invocation(s, "brain-experiment@demo1.service")?,
        experiment_before,
        "the running experiment"
    );
    // The old token still works.
    let auth = format!("Authorization: Bearer {token_before}");
    s.curl(
        "POST",
        ":5001/shutdown/schedule",
        &["-H", &auth, "-d", r#"{"minutes": 90, "replace": true}"#],
    )?
    .expect(200)?;
    Ok(())
}

fn remove_stops_everything_and_keeps_state(s: &Sandbox) -> Result<()> {
    apt(s, "remove -y homelab")?;
    for unit in [
        "shutdown-service.socket",
        "inference-service.socket",
        "shutdown-service.service",
        "brain-experiment-coordinator.service",
        "brain-experiment-coordinator.socket",
        "brain-experiment@demo1.service",
        "brain-experiment@demo2.service",
    ] {
        let state = s.active_state(unit)?;
        ensure!(
            state == "inactive" || state.is_empty(),
            "{unit} is {state} after apt-get remove"
        );
    }
    let timers = s.ok("systemctl list-timers --all --no-legend 'homelab-*'")?;
    ensure!(timers.trim().is_empty(), "timers left running: {timers}");
    ensure!(
        s.get(":5001/health").is_err(),
        "port 5001 still answers after apt-get remove"
    );
    for kept in [
        "/var/lib/shutdown-service/schedules.json",
        "/etc/homelab/api-token",
        "/etc/brain-in-jar/experiments/demo1.env",
        "/etc/brain-in-jar/coordinator.env",
    ] {
        ensure!(exists(s, kept)?, "{kept} is gone after apt-get remove");
    }
    ensure_eq!(
        s.ok("dpkg-query -W -f '${db:Status-Abbrev}' homelab")?
            .trim(),
        "rc",
        "removed, configuration kept"
    );
    Ok(())
}

fn purge_deletes_state_and_token_not_env_files(s: &Sandbox) -> Result<()> {
    apt(s, "purge -y homelab")?;
    for gone in [
        "/var/lib/shutdown-service",
        "/var/lib/inference-service",
        "/etc/homelab/api-token",
        "/etc/logrotate.d/brain-in-jar",
    ] {
        ensure!(
            !exists(s, gone)?,
            "{gone} is still there after apt-get purge"
        );
    }
    for kept in [
        "/etc/brain-in-jar/experiments/demo1.env",
        "/etc/brain-in-jar/experiments/demo2.env",
        "/etc/brain-in-jar/coordinator.env",
    ] {
        ensure!(exists(s, kept)?, "{kept} (the administrator's) was deleted");
    }
    let status = s.sh("dpkg-query -W -f '${db:Status-Abbrev}' homelab")?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.trim().is_empty() || status.trim() == "un",
        "homelab is still known to dpkg: {status}"
    );
    Ok(())
}
