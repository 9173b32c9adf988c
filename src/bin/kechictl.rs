//! `kechictl`: inspect and steer kechi apps. A thin shell over the library: argument parsing,
//! choosing which environment to overlay, printing, exit codes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use kechi::app::AppName;
use kechi::config::{self, ConfigErrors, Loaded, RealHost};

const EXIT_CODES: &str = "\
Exit status:
  0  success (for check: the configuration is valid)
  1  the configuration is invalid (every problem is printed to stderr)
  2  usage error (unknown command or option, malformed argument)
  3  cannot read a file, or another runtime error

FILE|APP: an argument containing '/' or ending in .toml is a file; anything else is an app
name and means /etc/kechi/APP.toml.";

#[derive(Debug, Parser)]
#[command(
    name = "kechictl",
    version,
    about = "Inspect and steer kechi apps (web-app workers kept lean under systemd)",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// `list`, `status APP`, `mem PID...|APP` and `recycle APP` join this enum once the control
// protocol they speak to kechid exists; until then they are deliberately absent rather than
// stubs that pretend to work.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check an app's configuration (file, KECHI_* overrides of this shell, users, jemalloc)
    /// and print every problem with file, line and key.
    Check {
        /// A config file, or an app name for /etc/kechi/APP.toml.
        #[arg(value_name = "FILE|APP")]
        target: String,
    },
    /// Print the effective value of every key and where it came from (default, file line,
    /// KECHI_* variable, or Server::Starter alias). For an app name, the overrides are read
    /// from the environment of kechi@APP.service.
    Config {
        /// An app name (overrides from its unit), or a config file (overrides from this shell).
        #[arg(value_name = "APP|FILE")]
        target: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What a FILE|APP argument names.
struct Target {
    path: PathBuf,
    app: Option<AppName>,
}

enum Failure {
    Invalid(ConfigErrors),
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Check { target } => check(&target),
        Cmd::Config { target, json } => show_config(&target, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(if errors.is_read_error() { 3 } else { 1 })
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("kechictl: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("kechictl: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn resolve(target: &str) -> Result<Target, Failure> {
    if target.contains('/') || target.ends_with(".toml") {
        return Ok(Target {
            path: PathBuf::from(target),
            app: None,
        });
    }
    match AppName::new(target) {
        Ok(app) => Ok(Target {
            path: app.config_path(),
            app: Some(app),
        }),
        Err(e) => Err(Failure::Usage(format!(
            "{target:?} is neither a file (a path with '/' or ending in .toml) nor an app name: {e}"
        ))),
    }
}

/// This process's environment; variables that are not UTF-8 cannot be kechi settings.
fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `Environment=` of the app's service unit, as systemd has it loaded.
fn unit_env(app: &AppName) -> anyhow::Result<BTreeMap<String, String>> {
    let unit = app.service_unit();
    let out = Command::new("systemctl")
        .args(["show", "-p", "Environment", "--value", &unit])
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        bail!("systemctl show {unit} failed: {}", err.join("; "));
    }
    Ok(config::parse_unit_environment(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

fn load(target: &Target, env: &BTreeMap<String, String>) -> Result<Loaded, Failure> {
    config::load(&target.path, env, &RealHost).map_err(Failure::Invalid)
}

fn check(target: &str) -> Result<(), Failure> {
    let target = resolve(target)?;
    load(&target, &process_env())?;
    println!("{}: ok", target.path.display());
    Ok(())
}

fn show_config(target: &str, json: bool) -> Result<(), Failure> {
    let target = resolve(target)?;
    let env = match &target.app {
        Some(app) => match unit_env(app) {
            Ok(env) => {
                eprintln!(
                    "kechictl: overrides from the environment of {} (its Environment= settings; \
                     EnvironmentFile= is not read)",
                    app.service_unit()
                );
                env
            }
            Err(e) => {
                eprintln!("kechictl: {e:#}; overrides from this shell's environment instead");
                process_env()
            }
        },
        None => {
            eprintln!("kechictl: overrides from this shell's environment");
            process_env()
        }
    };
    let loaded = load(&target, &env)?;
    if json {
        let text = serde_json::to_string_pretty(&config::render_json(&loaded))
            .context("cannot encode JSON")?;
        println!("{text}");
    } else {
        print!("{}", config::render_text(&loaded));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn targets() {
        let t = resolve("demo").ok().unwrap();
        assert_eq!(t.path, PathBuf::from("/etc/kechi/demo.toml"));
        assert!(t.app.is_some());
        let t = resolve("./demo.toml").ok().unwrap();
        assert_eq!(t.path, PathBuf::from("./demo.toml"));
        assert!(t.app.is_none());
        assert!(resolve("x.toml").ok().unwrap().app.is_none());
        assert!(matches!(resolve("Bad App"), Err(Failure::Usage(_))));
    }
}
