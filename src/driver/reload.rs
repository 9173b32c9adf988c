//! SIGHUP: re-read the file and the unit's environment (read from systemd as an operation, so
//! the loop goes on meanwhile); a bad config keeps the running one. Also the adjustments of a
//! policy to what this host and these sockets allow.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::unistd::Uid;

use super::Driver;
use super::ops::{Done, OpError};
use super::requests::group_id;
use super::startup::{load_config, resolve_identity};
use crate::app::AppName;
use crate::control;
use crate::memory::ProcRoot;
use crate::policy::Policy;
use crate::sockets::Listener;
use crate::systemd::Systemd;
use crate::tmpdir::TmpDirs;

/// How long reading the unit's environment may take before the reload goes on with kechid's
/// own.
const ENVIRONMENT_DEADLINE: Duration = Duration::from_secs(10);

/// Where a reload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReloadState {
    Idle,
    /// The unit's environment is being read; `again` if another SIGHUP came meanwhile.
    ReadingEnvironment {
        again: bool,
    },
}

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn begin_reload(&mut self) {
        if let ReloadState::ReadingEnvironment { again } = &mut self.reload {
            // The file may have changed after the read began: read everything once more.
            *again = true;
            return;
        }
        self.notifier.reloading();
        match (&self.systemd, self.opts.unit.clone()) {
            (Some(_), Some(unit)) => {
                self.reload = ReloadState::ReadingEnvironment { again: false };
                self.launch(
                    ENVIRONMENT_DEADLINE,
                    move |sd| async move { sd.service_environment(&unit).await },
                    Done::Environment,
                );
            }
            _ => self.finish_reload(None),
        }
    }

    pub(super) fn on_environment(&mut self, result: Result<Vec<String>, OpError>) {
        let again = matches!(self.reload, ReloadState::ReadingEnvironment { again: true });
        self.reload = ReloadState::Idle;
        let unit_env = match result {
            Ok(vars) => Some(
                vars.iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            Err(e) => {
                let unit = self.opts.unit.clone().unwrap_or_default();
                tracing::warn!(APP = %self.opts.app, "reading {unit}'s environment: {e}; using kechid's own");
                None
            }
        };
        self.finish_reload(unit_env.as_ref());
        if again {
            self.begin_reload();
        }
    }

    fn finish_reload(&mut self, unit_env: Option<&BTreeMap<String, String>>) {
        match load_config(&self.opts, unit_env) {
            Ok(loaded) => match resolve_identity(&loaded.config) {
                Ok(_) => {
                    tracing::info!(APP = %self.opts.app, REASON = "reload", "configuration reloaded from {}", self.opts.config_path.display());
                    self.policy = Policy {
                        seed: self.policy.seed,
                        ..effective(
                            Policy::from_config(&loaded.config),
                            &self.listeners,
                            &self.opts.app,
                            &self.proc_root,
                        )
                    };
                    self.tmpdirs = TmpDirs::new(
                        &self.opts.app,
                        loaded.config.tmpdir.size.0,
                        Uid::effective().is_root(),
                        &self.opts.runtime_dir,
                    );
                    self.loaded = loaded;
                    self.state.generation += 1;
                    self.arm_idle();
                    let gid = group_id(&self.loaded.config);
                    if let Ok(mut g) = self.control_group.lock() {
                        *g = gid;
                    }
                    let path = control::socket_path(&self.opts.runtime_dir, self.opts.app.as_str());
                    if let Err(e) = crate::control_server::set_access(&path, gid) {
                        tracing::warn!(APP = %self.opts.app, "control socket access for control.group: {e}");
                    }
                }
                Err(e) => {
                    tracing::error!(APP = %self.opts.app, REASON = "reload", "reload refused, keeping the running configuration: {e}");
                    self.record(format!("reload refused: {e}"));
                }
            },
            Err(errors) => {
                for e in errors.errors() {
                    tracing::error!(APP = %self.opts.app, REASON = "reload", "{e}");
                }
                tracing::error!(APP = %self.opts.app, REASON = "reload", "reload refused, keeping the running configuration");
                let first = errors
                    .errors()
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                self.record(format!("reload refused: {first}"));
            }
        }
        // READY=1 after RELOADING=1 ends the reload for systemd.
        let s = self.status_text();
        self.notifier.ready(&s);
    }
}

/// Readiness by accept needs a listening socket to watch; without one it falls back to delay.
pub(super) fn effective(
    mut p: Policy,
    listeners: &[Listener],
    app: &AppName,
    proc_root: &ProcRoot,
) -> Policy {
    if p.ready_mode == crate::config::ReadyMode::Accept && listeners.is_empty() {
        tracing::warn!(APP = %app, "ready.mode = \"accept\" without a listening socket (no kechi@{app}.socket, no listen = [...]): a worker counts as ready after ready.delay ({})", crate::quantity::format_duration(p.ready_delay));
        p.ready_mode = crate::config::ReadyMode::Delay;
    }
    // Kernels built without it (e.g. User-mode Linux) have no /proc/PID/syscall to watch.
    if p.ready_mode == crate::config::ReadyMode::Accept
        && !crate::memory::has_syscall_file(proc_root)
    {
        tracing::warn!(APP = %app, "ready.mode = \"accept\" needs /proc/PID/syscall, which this kernel lacks: a worker counts as ready after ready.delay ({})", crate::quantity::format_duration(p.ready_delay));
        p.ready_mode = crate::config::ReadyMode::Delay;
    }
    p
}

/// A per-process seed for the age jitter: workers of different kechids spread differently.
pub(super) fn seeded(mut p: Policy) -> Policy {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    p.seed = t ^ (u64::from(std::process::id()) << 32);
    p
}
