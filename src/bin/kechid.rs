//! kechid: runs one app's workers (see kechid(8)). Thin: the command line (daemon_cli), then the
//! library.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kechi::app::AppName;
use kechi::daemon_cli::{self, Command, DaemonArgs};
use kechi::driver::{self, Options};
use kechi::exitcode;
use kechi::logging::{Severity, last_words};
use kechi::systemd::{Bus, DbusSystemd};

fn main() -> ExitCode {
    // Before anything else: what the program's file is while it is surely the one started
    // (its pages are given back only while it stays so; see kechi::trim).
    kechi::trim::note_program();
    let args = match daemon_cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(a)) => a,
        // Written without println!: a reader that leaves early (`kechid --help | head -1`)
        // must not turn into a failed write and an abort.
        Ok(Command::Help) => {
            let _ = writeln!(std::io::stdout(), "{}", daemon_cli::help());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let _ = writeln!(std::io::stdout(), "{}", daemon_cli::version());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::from(exitcode::USAGE as u8);
        }
    };
    kechi::logging::init();
    ExitCode::from(run(args) as u8)
}

fn run(args: DaemonArgs) -> i32 {
    let (app, config_path) = if args.app.contains('/') || args.app.ends_with(".toml") {
        let path = PathBuf::from(&args.app);
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        match AppName::new(&stem) {
            Ok(a) => (a, path),
            Err(e) => {
                // The checker words this problem like every other one (FILE: app name: ...),
                // alongside whatever else is wrong in the file.
                let env: BTreeMap<String, String> = std::env::vars().collect();
                match kechi::config::load(&path, &env, &kechi::config::RealHost) {
                    Err(errors) => refuse(&stem, &errors),
                    Ok(_) => last_words(
                        "",
                        Severity::Error,
                        &format!(
                            "{}: {e} (the app name is the file name without .toml)",
                            path.display()
                        ),
                    ),
                }
                return exitcode::CONFIG;
            }
        }
    } else {
        match AppName::new(&args.app) {
            Ok(a) => {
                let p = a.config_path();
                (a, p)
            }
            Err(e) => {
                last_words("", Severity::Error, &e.to_string());
                return exitcode::USAGE;
            }
        }
    };
    // Before any thread exists: this takes LISTEN_* out of kechid's environment.
    let inherited = kechi::sockets::take_inherited();
    let root = nix::unistd::Uid::effective().is_root();
    let runtime_dir = kechi::control::runtime_dir();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let opts = Options {
        unit: (!args.foreground).then(|| app.service_unit()),
        app,
        config_path,
        env,
        runtime_dir,
    };
    let loaded = match driver::load_initial(&opts) {
        Ok(l) => l,
        Err(errors) => {
            refuse(opts.app.as_str(), &errors);
            return exitcode::CONFIG;
        }
    };
    if let Err(errors) = advise(&opts, &loaded, &inherited) {
        refuse(opts.app.as_str(), &errors);
        return exitcode::CONFIG;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            last_words(
                "",
                Severity::Error,
                &format!("starting the event loop: {e}"),
            );
            return exitcode::FAILURE;
        }
    };
    // Boxed, like the driver's own future (see driver::run_in): block_on would otherwise keep
    // the whole state of the daemon's future on the main thread's stack, copied there by value.
    rt.block_on(Box::pin(async move {
        if args.foreground {
            return driver::run::<DbusSystemd>(opts, None, loaded, inherited).await;
        }
        let bus = if args.user || !root {
            Bus::User
        } else {
            Bus::System
        };
        match DbusSystemd::connect(bus).await {
            Ok(sd) => driver::run(opts, Some(sd), loaded, inherited).await,
            Err(e) => {
                last_words(
                    opts.app.as_str(),
                    Severity::Error,
                    &format!("{e}; without a systemd manager, run `kechid --foreground FILE`"),
                );
                exitcode::FAILURE
            }
        }
    }))
}

/// Logs the warnings of the config and of how its app server is run (see `kechi::servers`),
/// judged against the sockets the workers will really get: socket activation plus `listen`.
/// `Err` when one of them is certain to make every worker fail.
fn advise(
    opts: &Options,
    loaded: &kechi::config::Loaded,
    inherited: &[kechi::sockets::Listener],
) -> Result<(), kechi::config::ConfigErrors> {
    use std::os::fd::AsFd;
    // (the steering maps kept in the fd store come in beside the sockets: not sockets)
    let passed: Vec<&kechi::sockets::Listener> = inherited
        .iter()
        .filter(|l| !kechi::steer::is_stored(&l.name))
        .collect();
    let mut sockets = kechi::servers::Sockets {
        addresses: passed.iter().map(|l| l.address.clone()).collect(),
        complete: true,
        shared_tcp: passed
            .iter()
            .filter(|l| {
                kechi::sockets::is_tcp(l.fd.as_fd()) && !kechi::steer::steerable(l.fd.as_fd())
            })
            .map(|l| l.address.clone())
            .collect(),
    };
    sockets.add_listen(&loaded.config.listen);
    let (server, problems) = kechi::servers::review(loaded, &opts.config_path, &sockets);
    if problems.iter().any(|p| !p.is_warning()) {
        return Err(kechi::config::ConfigErrors::new(problems));
    }
    if let Some(s) = &server {
        tracing::info!(APP = %opts.app, "app server: {}", s.name());
    }
    for p in &problems {
        tracing::warn!(APP = %opts.app, "{p}");
    }
    Ok(())
}

/// Logs every problem of a refused configuration, one record each, then the verdict.
fn refuse(app: &str, errors: &kechi::config::ConfigErrors) {
    for e in errors.errors() {
        let severity = if e.is_warning() {
            Severity::Warning
        } else {
            Severity::Error
        };
        last_words(app, severity, &e.to_string());
    }
    last_words(
        app,
        Severity::Error,
        &format!(
            "refusing to start: {} problem(s) in the configuration",
            errors.error_count()
        ),
    );
}
