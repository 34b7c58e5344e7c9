//! Environment variables a container runs with, as users give them (`KEY=VALUE`). They
//! are stored with the container and carried to wherever it runs, so the server and the
//! agent check them alike: what ends up in an engine's run options is never taken on
//! trust from the other side.

use crate::ValidationError;

/// Most variables one container may have.
pub const MAX_ENV_VARS: usize = 128;
/// Most bytes of all `KEY=VALUE` strings together.
pub const MAX_ENV_BYTES: usize = 32 << 10;
/// Longest name.
pub const MAX_ENV_KEY: usize = 256;

/// Checks `vars`: each `KEY=VALUE` with a name of letters, digits, `_`, `.` or `-` that
/// does not start with a digit, no NUL anywhere, each name once, and within the caps.
pub fn check_env(vars: &[String]) -> Result<(), ValidationError> {
    if vars.len() > MAX_ENV_VARS {
        return Err(ValidationError::Env(format!(
            "{} variables; at most {MAX_ENV_VARS}",
            vars.len()
        )));
    }
    let total: usize = vars.iter().map(String::len).sum();
    if total > MAX_ENV_BYTES {
        return Err(ValidationError::Env(format!(
            "{total} bytes of variables; at most {MAX_ENV_BYTES}"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for var in vars {
        let Some((key, value)) = var.split_once('=') else {
            return Err(ValidationError::Env(format!(
                "{:?} is not KEY=VALUE",
                shorten(var)
            )));
        };
        check_key(key)?;
        if value.contains('\0') {
            return Err(ValidationError::Env(format!(
                "the value of {key} contains a NUL byte"
            )));
        }
        if !seen.insert(key) {
            return Err(ValidationError::Env(format!("{key} is given twice")));
        }
    }
    Ok(())
}

/// Checks a variable's name.
pub fn check_key(key: &str) -> Result<(), ValidationError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_ENV_KEY
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ValidationError::Env(format!(
            "{:?} is not a variable name: use letters, digits, '_', '.' or '-', not starting with a digit",
            shorten(key)
        )))
    }
}

/// The names of `vars`, in order.
pub fn env_names(vars: &[String]) -> Vec<String> {
    vars.iter()
        .map(|v| v.split_once('=').map_or(v.as_str(), |(k, _)| k).to_owned())
        .collect()
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn plain_variables_pass() {
        check_env(&vars(&["A=1", "_X=", "my.key-2=a=b c", "PATH=/bin"])).unwrap();
        check_env(&[]).unwrap();
        assert_eq!(env_names(&vars(&["A=1", "B=x=y"])), ["A", "B"]);
    }

    #[test]
    fn bad_variables_are_refused_with_the_reason() {
        for (bad, why) in [
            (vec!["NOVALUE"], "KEY=VALUE"),
            (vec!["=x"], "not a variable name"),
            (vec!["1A=x"], "not a variable name"),
            (vec!["A B=x"], "not a variable name"),
            (vec!["A;rm=x"], "not a variable name"),
            (vec!["A=x\0y"], "NUL"),
            (vec!["A=1", "A=2"], "twice"),
        ] {
            let err = check_env(&vars(&bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_ENV_VARS).map(|i| format!("K{i}=v")).collect();
        assert!(check_env(&many).is_err());
        let big = vec![format!("K={}", "x".repeat(MAX_ENV_BYTES))];
        assert!(check_env(&big).is_err());
        assert!(check_key(&"k".repeat(MAX_ENV_KEY + 1)).is_err());
    }
}
