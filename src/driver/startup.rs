//! Start-up: who workers run as, the configuration as loaded, and taking over what an earlier
//! kechid left (its serial numbers, its workers file, its running worker scopes, its temp dirs).
//!
//! Adoption asks systemd for the app's scopes as an operation like any other (see
//! [`super::ops`]); until its answer (or its deadline) the loop makes no decision, so no second
//! set of workers starts beside the adopted ones, while control requests are answered.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Pid, Uid, User};

use super::ops::{Done, OpError, ScanPurpose, ScannedUnit};
use super::{Driver, Options, Proc};
use crate::config::{self, Config, Loaded, RealHost};
use crate::lifecycle::StopReason;
use crate::spawn;
use crate::systemd::Systemd;

/// How long the scan for an earlier kechid's worker scopes may take before kechid gives up on
/// adopting and starts its own workers.
pub(super) const ADOPT_DEADLINE: Duration = Duration::from_secs(15);

/// The identity workers run as.
#[derive(Debug, Clone)]
pub(super) struct Identity {
    pub name: String,
    pub home: PathBuf,
    pub uid: Uid,
    pub gid: Gid,
    /// Whether kechid must switch to it (it is not kechid's own).
    pub switch: bool,
}

/// Why workers cannot run as the configured user and group.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("looking up {what} {name}: {source}")]
    Lookup {
        what: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {name} does not exist")]
    Missing { what: &'static str, name: String },
    #[error(
        "kechid runs as uid {me} and cannot start workers as {name}; run it as root or drop `user`"
    )]
    NotRoot { me: Uid, name: String },
}

pub(super) fn resolve_identity(c: &Config) -> Result<Identity, IdentityError> {
    let me = Uid::effective();
    let name = match (&c.user, me.is_root()) {
        (Some(u), _) => u.clone(),
        (None, true) => config::DEFAULT_USER.to_owned(),
        (None, false) => User::from_uid(me)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| me.to_string()),
    };
    let user = User::from_name(&name)
        .map_err(|source| IdentityError::Lookup {
            what: "user",
            name: name.clone(),
            source,
        })?
        .ok_or_else(|| IdentityError::Missing {
            what: "user",
            name: name.clone(),
        })?;
    let gid = match &c.group {
        Some(g) => {
            nix::unistd::Group::from_name(g)
                .map_err(|source| IdentityError::Lookup {
                    what: "group",
                    name: g.clone(),
                    source,
                })?
                .ok_or_else(|| IdentityError::Missing {
                    what: "group",
                    name: g.clone(),
                })?
                .gid
        }
        None => user.gid,
    };
    if !me.is_root() && (user.uid != me || gid != Gid::effective()) {
        return Err(IdentityError::NotRoot { me, name });
    }
    Ok(Identity {
        name,
        home: user.dir,
        uid: user.uid,
        gid,
        switch: me.is_root(),
    })
}

/// The config as loaded from the file, kechid's environment and (on reload) the unit's.
pub(super) fn load_config(
    opts: &Options,
    unit_env: Option<&BTreeMap<String, String>>,
) -> Result<Loaded, config::ConfigErrors> {
    let mut env = opts.env.clone();
    if let Some(u) = unit_env {
        // The unit's current Environment= wins over what kechid was started with: that is how
        // `systemctl edit` + daemon-reload + reload changes policy without a restart.
        env.retain(|k, _| !k.starts_with("KECHI_") && !config::ALIASES.contains(&k.as_str()));
        env.extend(u.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    config::load(&opts.config_path, &env, &RealHost)
}

/// Loads the config for kechid's start, with kechid's own environment.
pub fn load_initial(opts: &Options) -> Result<Loaded, config::ConfigErrors> {
    load_config(opts, None)
}

/// A worker scope found running, matched with its main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub serial: u64,
    pub unit: String,
    /// `None`: no process in it is a worker's main process (the scope is stale).
    pub main: Option<i32>,
}

/// Matches the scopes found with the workers file: a scope's main process is the pid recorded
/// for its serial if that pid is in it, else the one of its pids that leads its own session
/// (`is_leader`; every worker leads one). Scopes that are not active are stale.
pub(super) fn match_scopes(
    app: &crate::app::AppName,
    units: &[ScannedUnit],
    recorded: &HashMap<u64, i32>,
    is_leader: impl Fn(i32) -> bool,
) -> Vec<Found> {
    units
        .iter()
        .filter_map(|s| {
            let serial = app.parse_scope_serial(&s.unit.name)?;
            let main = (s.unit.active_state == "active")
                .then(|| {
                    recorded
                        .get(&serial)
                        .copied()
                        .filter(|p| s.pids.contains(&(*p as u32)))
                        .or_else(|| s.pids.iter().map(|p| *p as i32).find(|p| is_leader(*p)))
                })
                .flatten();
            Some(Found {
                serial,
                unit: s.unit.name.clone(),
                main,
            })
        })
        .collect()
}

impl<S: Systemd + 'static> Driver<S> {
    pub(super) fn serial_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("last-serial")
    }

    pub(super) fn workers_file(&self) -> PathBuf {
        self.opts
            .runtime_dir
            .join(self.app().as_str())
            .join("workers")
    }

    /// Continues the serial numbers of an earlier kechid and starts looking for its workers.
    pub(super) fn start(&mut self) {
        self.last_serial = std::fs::read_to_string(self.serial_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        self.read_idle_marker();
        self.arm_idle();
        self.arm_pressure();
        let on_record = crate::workers_file::parse(
            &std::fs::read_to_string(self.workers_file()).unwrap_or_default(),
        )
        .iter()
        .any(|e| !e.steer.is_empty());
        self.setup_steering(on_record);
        if self.systemd.is_some() {
            self.adopting = true;
            self.scan_scopes(ScanPurpose::Adopt, ADOPT_DEADLINE);
        } else {
            self.started();
        }
    }

    /// After adoption: cleans what the earlier kechid left behind, says what is not enforced.
    fn started(&mut self) {
        self.adopting = false;
        for serial in self.tmpdirs.existing() {
            self.last_serial = self.last_serial.max(serial);
            if self.procs.contains_key(&serial) {
                continue;
            }
            if let Err(e) = self.tmpdirs.wipe(serial) {
                tracing::warn!(APP = %self.opts.app, "{e}");
            }
        }
        if self.systemd.is_none() {
            tracing::warn!(
                APP = %self.opts.app,
                "no systemd manager: workers run as plain children; memory.max is enforced by kechid's own monitor (sampled every {}), memory.high and memory.swap-max are not enforced",
                crate::quantity::format_duration(self.config().recycle.check_interval)
            );
        }
        if self.config().tmpdir.enabled && !self.tmpdirs.capped() {
            tracing::warn!(APP = %self.opts.app, "not root: temp dirs are not separate tmpfs mounts and tmpdir.size is not enforced");
        }
        self.save_workers();
    }

    /// Records `SERIAL PID` of every worker, so a restarted kechid knows each scope's main
    /// process (the one it started) among the processes in it.
    pub(super) fn save_workers(&self) {
        let entries: Vec<crate::workers_file::Entry> = self
            .procs
            .iter()
            .map(|(serial, p)| crate::workers_file::Entry {
                serial: *serial,
                pid: p.pid.as_raw(),
                // A draining worker must stay draining for the next kechid, not count as capacity.
                // One whose stop signal waits for its CPU cap (stop_cap) has had no signal: a
                // next kechid must take it for the serving worker it still is, not wait for it
                // to end.
                draining: self
                    .draining_reason(*serial)
                    .filter(|_| !self.stop_caps.contains_key(serial))
                    .cloned(),
                config: Some(p.config),
                steer: self.own_sockets(*serial),
            })
            .collect();
        let text = crate::workers_file::render(&entries);
        let path = self.workers_file();
        let tmp = path.with_extension("tmp");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::debug!("recording workers in {}: {e}", path.display());
        }
    }

    /// Takes over the workers an earlier kechid left running (restart, crash, upgrade):
    /// their scopes are found by name, their main process from the workers file (or as the
    /// session leader in the scope), and they are watched by pidfd. No second set is started.
    pub(super) fn on_adoption_scan(&mut self, result: Result<Vec<ScannedUnit>, OpError>) {
        let units = match result {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(APP = %self.opts.app, "listing earlier worker scopes: {e}");
                self.started();
                return;
            }
        };
        let entries = crate::workers_file::parse(
            &std::fs::read_to_string(self.workers_file()).unwrap_or_default(),
        );
        let mut draining: HashMap<u64, StopReason> = entries
            .iter()
            .filter_map(|e| Some((e.serial, e.draining.clone()?)))
            .collect();
        let recorded: HashMap<u64, i32> = entries.iter().map(|e| (e.serial, e.pid)).collect();
        let own: HashMap<u64, Vec<(usize, u32, u64)>> = entries
            .iter()
            .map(|e| (e.serial, e.steer.clone()))
            .collect();
        let configs: HashMap<u64, u64> = entries
            .iter()
            .filter_map(|e| Some((e.serial, e.config?)))
            .collect();
        let current = self.config_fingerprint();
        let found = match_scopes(&self.opts.app, &units, &recorded, |p| {
            nix::unistd::getsid(Some(Pid::from_raw(p))).ok() == Some(Pid::from_raw(p))
        });
        let now = Instant::now();
        for f in found {
            self.last_serial = self.last_serial.max(f.serial);
            let watched = f
                .main
                .map(Pid::from_raw)
                .and_then(|pid| Some((pid, spawn::pidfd_open(pid).ok()?)));
            let Some((pid, fd)) = watched else {
                tracing::warn!(APP = %self.opts.app, "stopping {}: no worker process to adopt in it", f.unit);
                self.stop_unit(
                    None,
                    f.unit,
                    self.policy.stop_timeout + Duration::from_secs(5),
                );
                continue;
            };
            tracing::info!(APP = %self.opts.app, WORKER = f.serial, PID = pid.as_raw(), "adopted running worker in {}", f.unit);
            let started = crate::memory::process_age(&self.proc_root, pid.as_raw() as u32)
                .map_or(now, |age| now.checked_sub(age).unwrap_or(now));
            let was_draining = draining.remove(&f.serial);
            let is_draining = was_draining.is_some();
            self.state.adopt(f.serial, started, was_draining, now);
            let config = configs.get(&f.serial).copied().unwrap_or(current);
            if config != current
                && let Some(w) = self.state.workers.get_mut(&f.serial)
            {
                // Started with another configuration (a reload roll cut short, or the file
                // edited before this start): replaced as the reload would have.
                w.generation = self.state.generation.saturating_sub(1);
                tracing::info!(APP = %self.opts.app, WORKER = f.serial, "worker {} runs an older configuration: it will be replaced", f.serial);
            }
            self.procs.insert(
                f.serial,
                Proc {
                    pid,
                    scope: Some(f.unit.clone()),
                    config,
                    jemalloc: None,
                    monitor_oom: false,
                },
            );
            self.adopted_idle(f.serial, &f.unit, is_draining);
            self.watch_exit(f.serial, fd);
            self.check_jemalloc(f.serial);
            if let Some(o) = own.get(&f.serial) {
                self.adopt_own(f.serial, o);
            }
        }
        if !self.procs.is_empty() {
            self.restore_socket_flags();
        }
        self.steer_adopted();
        self.started();
    }

    /// Handles a finished scan of this app's scopes.
    pub(super) fn on_scanned(
        &mut self,
        purpose: ScanPurpose,
        result: Result<Vec<ScannedUnit>, OpError>,
    ) -> Option<Done> {
        match purpose {
            ScanPurpose::Adopt => self.on_adoption_scan(result),
            ScanPurpose::Strays => self.on_stray_scan(result),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppName;
    use crate::systemd::UnitInfo;

    fn unit(name: &str, active: &str, pids: &[u32]) -> ScannedUnit {
        ScannedUnit {
            unit: UnitInfo {
                name: name.into(),
                active_state: active.into(),
                sub_state: "running".into(),
            },
            pids: pids.to_vec(),
        }
    }

    #[test]
    fn scopes_are_matched_by_the_workers_file_then_by_session_leader() {
        let app = AppName::new("demo").unwrap();
        let units = [
            unit("kechi-demo-3.scope", "active", &[30, 31]),
            unit("kechi-demo-4.scope", "active", &[40, 41]),
            unit("kechi-demo-5.scope", "active", &[50]),
            unit("kechi-demo-6.scope", "failed", &[60]),
            unit("kechi-other-7.scope", "active", &[70]),
        ];
        // 3 recorded as 31; 4 recorded with a pid no longer in it (41 leads a session);
        // 5 has no leader; 6 is not active.
        let recorded = HashMap::from([(3, 31), (4, 99)]);
        let found = match_scopes(&app, &units, &recorded, |p| p == 41 || p == 60);
        let got: Vec<(u64, Option<i32>)> = found.iter().map(|f| (f.serial, f.main)).collect();
        assert_eq!(
            got,
            vec![(3, Some(31)), (4, Some(41)), (5, None), (6, None)]
        );
    }
}
