//! Command lines kept in environment files (`MODEL_COMMAND=`, `EXPERIMENT_COMMAND=`): split into
//! words the way a shell would for simple quoting, with no shell, no expansion, no globbing.

/// The program a command names, as `execvp` would find it: a name without `/` is looked up in
/// `path` (a `PATH` value). It must be an executable regular file; the error says what to fix.
pub fn resolve_program(
    program: &str,
    path: Option<&std::ffi::OsStr>,
) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        if !p.is_absolute() {
            anyhow::bail!("{program:?} is relative: give an absolute path");
        }
        if !executable(&p) {
            anyhow::bail!("{program:?} is not an executable file");
        }
        return Ok(p);
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| anyhow::anyhow!("{program:?} is not found in PATH: give its absolute path"))
}

/// Splits `line` into words: whitespace separates; `'…'` is literal; `"…"` and bare words take
/// `\` as an escape. An unterminated quote or a trailing `\` is an error.
pub fn split_words(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => anyhow::bail!("unterminated ' quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.push(
                            chars
                                .next()
                                .ok_or_else(|| anyhow::anyhow!("unterminated \" quote"))?,
                        ),
                        Some(c) => word.push(c),
                        None => anyhow::bail!("unterminated \" quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(
                    chars
                        .next()
                        .ok_or_else(|| anyhow::anyhow!("trailing backslash"))?,
                );
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_expansion() {
        assert_eq!(split_words("  a  b\tc ").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_words(r#"run --name "x y" 'a $HOME' b\ c "q\"q""#).unwrap(),
            ["run", "--name", "x y", "a $HOME", "b c", "q\"q"]
        );
        assert_eq!(split_words(r#"a "" ''"#).unwrap(), ["a", "", ""]);
        assert_eq!(
            split_words("rm *; echo $(id)").unwrap(),
            ["rm", "*;", "echo", "$(id)"]
        );
        assert!(split_words("").unwrap().is_empty());
        for bad in ["'x", "\"x", "x\\"] {
            assert!(split_words(bad).is_err(), "{bad}");
        }
    }
}
