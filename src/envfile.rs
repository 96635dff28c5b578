//! Environment files (`KEY=VALUE`), read the way systemd's `EnvironmentFile=` reads the simple
//! cases, so that what we validate is what the unit will see.

/// Parses an environment file as systemd's `EnvironmentFile=` reads the simple cases:
/// `KEY=VALUE` lines, `#`/`;` comments, an optional `export ` prefix, single or double quotes.
pub fn parse(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                return None;
            }
            let line = line.strip_prefix("export ").map_or(line, str::trim_start);
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
                .unwrap_or(value);
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_like_systemd_reads_them() {
        let text = "# a model\nPORT=8080\nexport MODEL_COMMAND=\"/usr/bin/llama-server --port 8080\"\n; note\nNAME='x y'\nbad line\n=nokey\nA-B=1\n";
        let env = parse(text);
        assert_eq!(
            env,
            vec![
                ("PORT".into(), "8080".into()),
                (
                    "MODEL_COMMAND".into(),
                    "/usr/bin/llama-server --port 8080".into()
                ),
                ("NAME".into(), "x y".into()),
            ]
        );
    }
}
