//! kechid: runs one app's workers (see kechid(8)). Thin: argument parsing, then the library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kechi::app::AppName;
use kechi::driver::{self, Options};
use kechi::exitcode;
use kechi::systemd::{Bus, DbusSystemd};

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

#[derive(Debug, Parser)]
#[command(name = "kechid", version, about = "Runs an app's workers lean: systemd scopes with memory limits, jemalloc, tmpfs TMPDIR, recycling", after_help = AFTER_HELP)]
struct Args {
    /// The app name (reads /etc/kechi/APP.toml), or a path to an app file.
    app: String,
    /// Run without a systemd manager: workers are plain children and kechid's own monitor
    /// enforces memory.max.
    #[arg(long)]
    foreground: bool,
    /// Use the calling user's systemd manager (the default when not root).
    #[arg(long, conflicts_with = "foreground")]
    user: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exitcode::USAGE as u8
            } else {
                0
            });
        }
    };
    kechi::logging::init();
    ExitCode::from(run(args) as u8)
}

fn run(args: Args) -> i32 {
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
                tracing::error!(
                    "{}: {e} (the app name is the file name without .toml)",
                    path.display()
                );
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
                tracing::error!("{e}");
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
            for e in errors.errors() {
                tracing::error!(APP = %opts.app, "{e}");
            }
            tracing::error!(APP = %opts.app, "refusing to start: {} problem(s) in the configuration", errors.errors().len());
            return exitcode::CONFIG;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the event loop: {e}");
            return exitcode::FAILURE;
        }
    };
    rt.block_on(async move {
        if args.foreground {
            return driver::run::<DbusSystemd>(opts, None, loaded, inherited).await;
        }
        let bus = if args.user || !root { Bus::User } else { Bus::System };
        match DbusSystemd::connect(bus).await {
            Ok(sd) => driver::run(opts, Some(sd), loaded, inherited).await,
            Err(e) => {
                tracing::error!(APP = %opts.app, "{e}; without a systemd manager, run `kechid --foreground FILE`");
                exitcode::FAILURE
            }
        }
    })
}
