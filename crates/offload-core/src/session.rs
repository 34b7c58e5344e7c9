//! What a caller may pass to a command it runs in a container besides its input: the
//! environment variables a terminal session carries (an SSH client's `env` requests) and
//! the signals it may send. Both the CLI and the side that runs the command check them, so
//! nothing reaches an engine on the caller's word alone.

/// Most variables one exec may carry.
pub const MAX_SESSION_VARS: usize = 64;
/// Longest value of one.
pub const MAX_SESSION_VALUE: usize = 1024;

/// Variables a session may set: the locale (what OpenSSH's `SendEnv LANG LC_*`, Debian's
/// default, sends), the time zone and the terminal's colour hints. Anything else (`PATH`,
/// `LD_PRELOAD`, `TERM`, which the terminal request sets) stays the container's, as
/// sshd's default `AcceptEnv LANG LC_*` keeps it.
pub fn session_var_allowed(name: &str) -> bool {
    matches!(name, "LANG" | "LANGUAGE" | "TZ" | "COLORTERM" | "NO_COLOR")
        || name.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
}

/// Checks one session variable; the reason it is refused, for the caller.
pub fn check_session_var(name: &str, value: &str) -> Result<(), String> {
    let shown: String = name.chars().take(64).filter(|c| !c.is_control()).collect();
    if !session_var_allowed(name) {
        return Err(format!(
            "{shown} is not passed to the container (only LANG, LANGUAGE, LC_*, TZ, COLORTERM and NO_COLOR are)"
        ));
    }
    if value.len() > MAX_SESSION_VALUE {
        return Err(format!(
            "the value of {shown} is longer than {MAX_SESSION_VALUE} bytes"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("the value of {shown} contains control characters"));
    }
    Ok(())
}

/// Checks the `NAME=VALUE` variables of an exec request: each allowed, each once, and at
/// most [`MAX_SESSION_VARS`].
pub fn check_session_env(vars: &[String]) -> Result<(), String> {
    if vars.len() > MAX_SESSION_VARS {
        return Err(format!(
            "{} variables; a session carries at most {MAX_SESSION_VARS}",
            vars.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for var in vars {
        let Some((name, value)) = var.split_once('=') else {
            return Err("a session variable is not NAME=VALUE".to_owned());
        };
        check_session_var(name, value)?;
        if !seen.insert(name) {
            return Err(format!("{name} is given twice"));
        }
    }
    Ok(())
}

/// A signal a caller may send to the command it runs, by its name without `SIG` (as SSH's
/// `signal` and `exit-signal` name them), with its Linux number.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("SYS", 31),
];

/// The number of a signal name (`TERM`, also `SIGTERM`), if it is one of [`SIGNALS`].
pub fn signal_number(name: &str) -> Option<i32> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, number)| *number)
}

/// The signal that an exit code of 128 + N stands for. The engine reports a command
/// killed by signal N with that code (as a shell does), so this is how a caller tells
/// that the command was killed; a command that chose to exit with such a code reads the
/// same.
pub fn signal_of_exit(code: i64) -> Option<&'static str> {
    let number = i32::try_from(code.checked_sub(128)?).ok()?;
    SIGNALS
        .iter()
        .find(|(_, n)| *n == number)
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locale_and_terminal_hints_pass_and_nothing_else() {
        for ok in [
            "LANG",
            "LANGUAGE",
            "LC_ALL",
            "LC_CTYPE",
            "LC_MESSAGES",
            "TZ",
            "COLORTERM",
        ] {
            assert!(session_var_allowed(ok), "{ok}");
        }
        for bad in [
            "PATH",
            "LD_PRELOAD",
            "TERM",
            "HOME",
            "LC_",
            "LC_all",
            "lang",
            "",
            "LANG ",
        ] {
            assert!(!session_var_allowed(bad), "{bad}");
        }
        assert!(check_session_var("LANG", "C.UTF-8").is_ok());
        let refused = check_session_var("LD_PRELOAD", "/tmp/x.so").unwrap_err();
        assert!(refused.contains("not passed to the container"), "{refused}");
        assert!(check_session_var("LANG", "a\nb").is_err());
        assert!(check_session_var("LANG", &"x".repeat(2000)).is_err());
    }

    #[test]
    fn an_exec_requests_variables_are_checked_as_a_whole() {
        assert!(check_session_env(&["LANG=C.UTF-8".into(), "LC_ALL=C".into()]).is_ok());
        assert!(check_session_env(&[]).is_ok());
        assert!(check_session_env(&["LANG".into()]).is_err());
        assert!(check_session_env(&["LANG=C".into(), "LANG=C.UTF-8".into()]).is_err());
        assert!(check_session_env(&["PATH=/tmp".into()]).is_err());
        let many: Vec<String> = (0..65).map(|_| "LANG=C".to_owned()).collect();
        assert!(check_session_env(&many).unwrap_err().contains("at most 64"));
    }

    #[test]
    fn signals_have_their_linux_numbers_and_exit_codes_name_them() {
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("SIGKILL"), Some(9));
        assert_eq!(signal_number("INT"), Some(2));
        assert_eq!(signal_number("term"), None);
        assert_eq!(signal_number("BOGUS"), None);
        assert_eq!(signal_number(""), None);
        assert_eq!(signal_of_exit(143), Some("TERM"));
        assert_eq!(signal_of_exit(137), Some("KILL"));
        assert_eq!(signal_of_exit(130), Some("INT"));
        for plain in [0, 1, 2, 127, 128, 255, -1, i64::MIN, i64::MAX] {
            assert_eq!(signal_of_exit(plain), None, "{plain}");
        }
    }
}
