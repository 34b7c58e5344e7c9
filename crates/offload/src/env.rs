//! `offload start -e KEY=VALUE` and `--env-file FILE`, read as `docker run` reads them.

use std::path::Path;

use anyhow::{Context, bail};

/// The variables for a new container: those of `files` in order, then those of `-e`, a
/// later one replacing an earlier one of the same name. `KEY` alone takes its value from
/// this process's environment and is left out when it is not set there, as docker does.
pub fn collect(files: &[impl AsRef<Path>], flags: &[String]) -> anyhow::Result<Vec<String>> {
    let mut vars: Vec<String> = Vec::new();
    for file in files {
        let file = file.as_ref();
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the env file {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let var = resolve(line).with_context(|| format!("{}:{}", file.display(), n + 1))?;
            push(&mut vars, var);
        }
    }
    for flag in flags {
        push(&mut vars, resolve(flag)?);
    }
    offload_core::check_env(&vars)?;
    Ok(vars)
}

/// `KEY=VALUE` as given, or `KEY` with its value from this process's environment.
fn resolve(item: &str) -> anyhow::Result<Option<String>> {
    if item.contains('=') {
        let key = item.split('=').next().unwrap_or_default();
        offload_core::env::check_key(key)?;
        return Ok(Some(item.to_owned()));
    }
    let key = item.trim_end();
    offload_core::env::check_key(key)?;
    match std::env::var_os(key) {
        Some(value) => match value.into_string() {
            Ok(value) => Ok(Some(format!("{key}={value}"))),
            Err(_) => bail!("the value of {key} in this environment is not UTF-8"),
        },
        None => Ok(None),
    }
}

fn push(vars: &mut Vec<String>, var: Option<String>) {
    let Some(var) = var else {
        return;
    };
    let key = var.split('=').next().unwrap_or_default().to_owned();
    vars.retain(|v| v.split('=').next() != Some(key.as_str()));
    vars.push(var);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_then_flags_later_wins_and_bare_names_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("course.env");
        std::fs::write(
            &file,
            "# the course\n\nCOURSE=os101\n  TERM_NAME=fall\nHOME\nUNSET_FOR_OFFLOAD_TEST\nURL=http://x/?a=b\n",
        )
        .unwrap();
        let home = std::env::var("HOME").unwrap();
        let vars = collect(&[&file], &["COURSE=os102".to_owned()]).unwrap();
        assert_eq!(
            vars,
            [
                "TERM_NAME=fall".to_owned(),
                format!("HOME={home}"),
                "URL=http://x/?a=b".to_owned(),
                "COURSE=os102".to_owned(),
            ]
        );
    }

    #[test]
    fn bad_input_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.env");
        std::fs::write(&file, "GOOD=1\n1BAD=2\n").unwrap();
        let err = format!("{:#}", collect(&[&file], &[]).unwrap_err());
        assert!(err.contains("bad.env:2"), "{err}");
        assert!(collect(&[dir.path().join("missing.env")], &[]).is_err());
        assert!(collect(&[] as &[&Path], &["A B=1".to_owned()]).is_err());
    }
}
