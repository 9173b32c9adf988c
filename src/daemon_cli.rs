//! kechid's command line, `kechid [--foreground | --user] APP`, parsed by hand.
//!
//! Three flags and one argument do not need an argument-parsing library, and kechid's own
//! memory is a goal (every page of code it carries stays mapped for the life of the daemon);
//! kechictl, with its subcommands, uses clap. The behaviour follows clap's conventions so the
//! two binaries feel the same: `-h`/`--help`, `-V`/`--version`, `--` ends the options, errors
//! name the offending argument, show the usage line and exit 2.
//!
//! Pure: [`parse`] takes the arguments (without the program name) and returns what to do.

use std::ffi::OsString;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the app.
    Run(DaemonArgs),
    /// Print [`help`] and exit 0.
    Help,
    /// Print [`version`] and exit 0.
    Version,
}

/// The arguments of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    /// An app name (reads /etc/kechi/APP.toml) or a path to an app file.
    pub app: String,
    /// Run without a systemd manager.
    pub foreground: bool,
    /// Use the calling user's systemd manager.
    pub user: bool,
}

/// A command line that cannot be run; its text is the whole message kechid prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error: {}\n\n{USAGE}\n\nFor more information, try '--help'.",
            self.0
        )
    }
}

const USAGE: &str = "Usage: kechid [OPTIONS] <APP>";

const ABOUT: &str = "Runs an app's workers lean: systemd scopes with memory limits, jemalloc, tmpfs TMPDIR, recycling";

const OPTIONS: &str = "\
Arguments:
  <APP>  The app name (reads /etc/kechi/APP.toml), or a path to an app file

Options:
      --foreground  Run without a systemd manager: workers are plain children and kechid's own
                    monitor enforces memory.max
      --user        Use the calling user's systemd manager (the default when not root)
  -h, --help        Print help
  -V, --version     Print version";

const AFTER_HELP: &str = "\
Normally started by systemd as kechi@APP.service (`systemctl start kechi@APP`), reading
/etc/kechi/APP.toml. KECHI_* variables in the unit's environment override the file
(see kechi.toml(5)); `kechictl config APP` shows the effective values.

Exit codes:
  0   stopped on request
  1   runtime failure (e.g. systemd's manager unreachable)
  2   bad command line
  69  workers kept crashing before getting ready (restart.burst exceeded)
  78  invalid configuration";

/// `kechid --help`.
pub fn help() -> String {
    format!("{ABOUT}\n\n{USAGE}\n\n{OPTIONS}\n\n{AFTER_HELP}")
}

/// `kechid --version`.
pub fn version() -> String {
    format!("kechid {}", env!("CARGO_PKG_VERSION"))
}

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut app: Option<String> = None;
    let (mut foreground, mut user, mut options_done) = (false, false, false);
    for raw in args {
        let Some(arg) = raw.to_str() else {
            return Err(UsageError(format!(
                "invalid UTF-8 in argument {}",
                raw.to_string_lossy()
            )));
        };
        let is_option = !options_done && arg.starts_with('-') && arg != "-";
        if is_option {
            match arg {
                "--" => options_done = true,
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--foreground" => foreground = true,
                "--user" => user = true,
                _ => {
                    let hint = if arg.starts_with("--") && arg.contains('=') {
                        " (these options take no value)"
                    } else {
                        ""
                    };
                    return Err(UsageError(format!("unexpected argument '{arg}'{hint}")));
                }
            }
        } else if let Some(first) = &app {
            return Err(UsageError(format!(
                "unexpected argument '{arg}' (one app only; it is '{first}')"
            )));
        } else {
            app = Some(arg.to_owned());
        }
    }
    if foreground && user {
        return Err(UsageError(
            "the argument '--user' cannot be used with '--foreground'".into(),
        ));
    }
    let Some(app) = app else {
        return Err(UsageError(
            "the following required arguments were not provided:\n  <APP>".into(),
        ));
    };
    Ok(Command::Run(DaemonArgs {
        app,
        foreground,
        user,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(app: &str, foreground: bool, user: bool) -> Result<Command, UsageError> {
        Ok(Command::Run(DaemonArgs {
            app: app.into(),
            foreground,
            user,
        }))
    }

    #[test]
    fn an_app_and_the_flags_in_any_order() {
        assert_eq!(p(&["demo"]), run("demo", false, false));
        assert_eq!(p(&["--user", "demo"]), run("demo", false, true));
        assert_eq!(
            p(&["/etc/kechi/x.toml", "--foreground"]),
            run("/etc/kechi/x.toml", true, false)
        );
    }

    #[test]
    fn help_and_version_end_the_parse_where_they_stand() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["demo", "-h"]), Ok(Command::Help));
        assert_eq!(
            p(&["--bogus", "-V"]).unwrap_err().0,
            "unexpected argument '--bogus'"
        );
        assert_eq!(p(&["-V"]), Ok(Command::Version));
        assert!(help().contains("Exit codes"));
        assert!(help().contains("--foreground"));
        assert!(version().starts_with("kechid "));
    }

    #[test]
    fn double_dash_ends_the_options() {
        assert_eq!(p(&["--", "-odd-name"]), run("-odd-name", false, false));
        assert_eq!(p(&["-"]), run("-", false, false));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let e = p(&[]).unwrap_err();
        assert!(e.0.contains("<APP>"), "{e}");
        let e = p(&["a", "b"]).unwrap_err();
        assert!(e.0.contains("'b'") && e.0.contains("'a'"), "{e}");
        let e = p(&["--foreground", "--user", "a"]).unwrap_err();
        assert!(e.0.contains("cannot be used with"), "{e}");
        let e = p(&["--foreground=yes", "a"]).unwrap_err();
        assert!(e.0.contains("take no value"), "{e}");
        let shown = e.to_string();
        assert!(shown.starts_with("error: "), "{shown}");
        assert!(shown.contains("Usage: kechid"), "{shown}");
    }

    #[test]
    fn non_utf8_arguments_are_refused() {
        use std::os::unix::ffi::OsStringExt;
        let e = parse([OsString::from_vec(vec![b'a', 0xff])]).unwrap_err();
        assert!(e.0.contains("UTF-8"), "{e}");
    }
}
