//! Race-free start of one worker process.
//!
//! The worker must be inside its scope (and so under its memory limit) before it runs a single
//! instruction of the app. So [`spawn_held`] forks a child that blocks on a pipe; the caller
//! puts the child's pid into a new scope and then calls [`Held::release`], after which the child
//! drops privileges, changes directory, places the listening sockets at fds 3.. and execs.
//!
//! Everything the child needs is prepared before `fork` ([`Prepared`]): after `fork` in a
//! process that may have other threads, only async-signal-safe calls are allowed, so the child
//! never allocates. `LISTEN_PID` (the child's own pid, unknown before `fork`) is written into a
//! pre-sized slot of the prepared environment.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Pid, Uid};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub directory: PathBuf,
    /// Switch to these ids before exec (`None`: keep kechid's).
    pub ids: Option<(Uid, Gid)>,
    /// Listening sockets to hand over as fds 3.. (with `LISTEN_FDS`/`LISTEN_PID` set).
    pub listen_fds: Vec<RawFd>,
}

/// Where in the child a start failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Fds,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Stage {
    fn from_u8(b: u8) -> Stage {
        match b {
            0 => Stage::Fds,
            1 => Stage::Groups,
            2 => Stage::Gid,
            3 => Stage::Uid,
            4 => Stage::Chdir,
            _ => Stage::Exec,
        }
    }
    fn what(self) -> &'static str {
        match self {
            Stage::Fds => "placing the listening sockets",
            Stage::Groups => "dropping supplementary groups",
            Stage::Gid => "setting the group id",
            Stage::Uid => "setting the user id",
            Stage::Chdir => "changing to the working directory",
            Stage::Exec => "executing the command",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command {0:?} not found in PATH")]
    NotFound(String),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("{op} failed: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("worker failed {} ({}): {}", stage.what(), path.display(), nix::Error::from_raw(*errno))]
    Child {
        stage: Stage,
        errno: i32,
        path: PathBuf,
    },
}

/// argv, envp and paths as C strings, with their pointer arrays, ready for `execve`.
#[derive(Debug)]
pub struct Prepared {
    exe: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// Index into `envp` of `LISTEN_PID=` followed by room for the digits.
    listen_pid_slot: Option<usize>,
    dir: CString,
    dir_path: PathBuf,
    exe_path: PathBuf,
    ids: Option<(Uid, Gid)>,
    listen_fds: Vec<RawFd>,
    /// Scratch space for the child, so it never allocates.
    scratch_fds: Vec<RawFd>,
}

const LISTEN_PID_PREFIX: &str = "LISTEN_PID=";
const PID_DIGITS: usize = 20;

/// Looks `name` up like execvp would, in `path_var` (or a default PATH).
pub fn resolve_command(name: &str, path_var: Option<&str>) -> Result<PathBuf, SpawnError> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = path_var.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(SpawnError::NotFound(name.to_owned()))
}

fn cstr(bytes: &[u8], what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

impl Prepared {
    pub fn new(cmd: &WorkerCommand) -> Result<Prepared, SpawnError> {
        let first = cmd
            .argv
            .first()
            .ok_or(SpawnError::NotFound(String::new()))?;
        let path_var = cmd
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let exe_path = resolve_command(first, path_var)?;
        let exe = cstr(exe_path.as_os_str().as_bytes(), "the command path")?;
        let argv: Vec<CString> = cmd
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()?;
        let mut envp: Vec<CString> = Vec::with_capacity(cmd.env.len() + 1);
        for (k, v) in &cmd.env {
            envp.push(cstr(format!("{k}={v}").as_bytes(), "the environment")?);
        }
        let listen_pid_slot = if cmd.listen_fds.is_empty() {
            None
        } else {
            // Room for any pid; the child writes its digits and a NUL over the zeros.
            envp.push(cstr(
                format!("{LISTEN_PID_PREFIX}{}", "0".repeat(PID_DIGITS)).as_bytes(),
                "LISTEN_PID",
            )?);
            Some(envp.len() - 1)
        };
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Ok(Prepared {
            exe,
            _argv: argv,
            argv_ptrs,
            envp,
            envp_ptrs,
            listen_pid_slot,
            dir: cstr(OsStr::as_bytes(cmd.directory.as_os_str()), "the directory")?,
            dir_path: cmd.directory.clone(),
            exe_path,
            ids: cmd.ids,
            scratch_fds: vec![-1; cmd.listen_fds.len()],
            listen_fds: cmd.listen_fds.clone(),
        })
    }
}

/// A forked child waiting for [`Held::release`]. Dropping it without release makes the child
/// exit without running anything.
#[derive(Debug)]
pub struct Held {
    pub pid: Pid,
    go: OwnedFd,
    report: OwnedFd,
    exe_path: PathBuf,
    dir_path: PathBuf,
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| SpawnError::Sys {
        op: "pipe2",
        source,
    })
}

/// What the child reported on its report pipe before it closed (at exec, or at its exit after a
/// failed step): up to 5 bytes, read as they come, without blocking the event loop.
async fn read_report(report: OwnedFd) -> Result<(usize, [u8; 5]), nix::Error> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&report, FcntlArg::F_GETFL)?);
    fcntl(&report, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the AsyncFd owns the pipe's read end; nothing else closes or replaces it.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(report, tokio::io::Interest::READABLE)
    }
    .map_err(|e| nix::Error::from_raw(e.into_parts().1.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut buf = [0u8; 5];
    let mut n = 0;
    while n < buf.len() {
        let Ok(mut ready) = fd.readable().await else {
            break;
        };
        match ready
            .try_io(|f| nix::unistd::read(f.get_ref(), &mut buf[n..]).map_err(std::io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    Ok((n, buf))
}

/// Forks the worker; the child waits, blocked, until [`Held::release`].
pub fn spawn_held(prep: &mut Prepared) -> Result<Held, SpawnError> {
    let (go_r, go_w) = pipe_cloexec()?;
    let (rep_r, rep_w) = pipe_cloexec()?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|source| SpawnError::Sys {
        op: "open /dev/null",
        source,
    })?;
    // SAFETY: the child runs only async-signal-safe code (`child_main`) and never returns.
    match unsafe { nix::unistd::fork() }.map_err(|source| SpawnError::Sys { op: "fork", source })? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: we are the freshly forked child; `child_main` never returns.
            unsafe {
                // Our copies of the parent's pipe ends: the write end would keep the read in
                // `child_main` from ever seeing EOF if the parent drops the hold.
                libc::close(go_w.as_raw_fd());
                libc::close(rep_r.as_raw_fd());
                child_main(
                    prep,
                    go_r.as_raw_fd(),
                    rep_w.as_raw_fd(),
                    devnull.as_raw_fd(),
                )
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(go_r);
            drop(rep_w);
            drop(devnull);
            Ok(Held {
                pid: child,
                go: go_w,
                report: rep_r,
                exe_path: prep.exe_path.clone(),
                dir_path: prep.dir_path.clone(),
            })
        }
    }
}

impl Held {
    /// Lets the child go on to exec, and waits until it has (or has failed to).
    ///
    /// The wait ends as soon as `execve` closes the child's report pipe (close-on-exec), so it
    /// is short; the pipe is watched by the event loop like any other fd, not read by a thread
    /// (a thread per start costs a stack and a malloc arena that stay with kechid for good).
    pub async fn release(self) -> Result<Pid, SpawnError> {
        let Held {
            pid,
            go,
            report,
            exe_path,
            dir_path,
        } = self;
        nix::unistd::write(&go, &[1u8]).map_err(|source| SpawnError::Sys {
            op: "write to start pipe",
            source,
        })?;
        drop(go);
        let got = read_report(report)
            .await
            .map_err(|source| SpawnError::Sys {
                op: "wait for exec",
                source,
            })?;
        match got {
            (5, buf) => {
                let stage = Stage::from_u8(buf[0]);
                let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
                let path = if stage == Stage::Chdir {
                    dir_path
                } else {
                    exe_path
                };
                Err(SpawnError::Child { stage, errno, path })
            }
            _ => Ok(pid),
        }
    }
}

/// The child's side. Only async-signal-safe libc calls from here on; no allocation.
///
/// # Safety
/// Must be called only in a freshly forked child; never returns.
unsafe fn child_main(prep: &mut Prepared, go: RawFd, report: RawFd, devnull: RawFd) -> ! {
    // SAFETY (whole body): raw libc calls on fds and buffers we own in this child.
    unsafe {
        let mut b = 0u8;
        loop {
            let r = libc::read(go, (&raw mut b).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // The parent gave up on this worker (or died): run nothing.
            libc::_exit(127);
        }
        // A new session: the worker's processes form their own group, signalled together in
        // foreground mode, and no terminal signals from kechid's side reach them.
        libc::setsid();
        // Signal dispositions and mask inherited from kechid's runtime must not leak into the app.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::dup2(devnull, 0);

        let n = prep.listen_fds.len() as RawFd;
        // Keep the report pipe above the fds we are about to place, then move the sockets out
        // of the way before placing them at 3.., so no dup2 clobbers a source.
        let report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 3 + n);
        if report < 0 {
            libc::_exit(126);
        }
        for i in 0..prep.listen_fds.len() {
            let t = libc::fcntl(prep.listen_fds[i], libc::F_DUPFD_CLOEXEC, 3 + n);
            if t < 0 {
                fail(report, Stage::Fds);
            }
            prep.scratch_fds[i] = t;
        }
        for i in 0..prep.listen_fds.len() {
            // dup2 clears close-on-exec on the target: exactly what the worker inherits.
            if libc::dup2(prep.scratch_fds[i], 3 + i as RawFd) < 0 {
                fail(report, Stage::Fds);
            }
            libc::close(prep.scratch_fds[i]);
        }
        if let Some(slot) = prep.listen_pid_slot {
            write_pid(prep.envp[slot].as_ptr().cast_mut(), libc::getpid());
        }
        if let Some((uid, gid)) = prep.ids {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                fail(report, Stage::Groups);
            }
            if libc::setresgid(gid.as_raw(), gid.as_raw(), gid.as_raw()) != 0 {
                fail(report, Stage::Gid);
            }
            if libc::setresuid(uid.as_raw(), uid.as_raw(), uid.as_raw()) != 0 {
                fail(report, Stage::Uid);
            }
        }
        if libc::chdir(prep.dir.as_ptr()) != 0 {
            fail(report, Stage::Chdir);
        }
        libc::execve(
            prep.exe.as_ptr(),
            prep.argv_ptrs.as_ptr(),
            prep.envp_ptrs.as_ptr(),
        );
        fail(report, Stage::Exec)
    }
}

/// Reports `stage` and errno to the parent and exits. Async-signal-safe.
unsafe fn fail(report: RawFd, stage: Stage) -> ! {
    // SAFETY: plain writes of a stack buffer, then _exit.
    unsafe {
        let e = (*libc::__errno_location()).to_ne_bytes();
        let msg = [stage as u8, e[0], e[1], e[2], e[3]];
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Writes `pid` as decimal digits plus NUL after `LISTEN_PID=` in a pre-sized C string.
unsafe fn write_pid(entry: *mut libc::c_char, pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut v = pid as u64;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // SAFETY: the entry has LISTEN_PID_PREFIX + PID_DIGITS bytes + NUL; we write at most that.
    unsafe {
        let base = entry.add(LISTEN_PID_PREFIX.len());
        for i in 0..len {
            *base.add(i) = digits[len - 1 - i] as libc::c_char;
        }
        *base.add(len) = 0;
    }
}

/// Opens a pidfd for `pid`: readable once the process has exited, whoever its parent is.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, SpawnError> {
    // SAFETY: a plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(SpawnError::Sys {
            op: "pidfd_open",
            source: nix::Error::last(),
        });
    }
    // SAFETY: the fd was just returned by the kernel and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str]) -> WorkerCommand {
        WorkerCommand {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("X".into(), "1".into()),
            ],
            directory: PathBuf::from("/"),
            ids: None,
            listen_fds: vec![],
        }
    }

    fn wait(pid: Pid) -> nix::sys::wait::WaitStatus {
        nix::sys::wait::waitpid(pid, None).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_after_release_with_env_and_dir() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!("echo \"$X $(pwd)\" > {}", out.display());
        let mut c = cmd(&["sh", "-c", &script]);
        c.directory = dir.path().to_path_buf();
        let mut p = Prepared::new(&c).unwrap();
        let held = spawn_held(&mut p).unwrap();
        // Held: it must not have run yet.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!out.exists());
        let pid = held.release().await.unwrap();
        assert!(matches!(
            wait(pid),
            nix::sys::wait::WaitStatus::Exited(_, 0)
        ));
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got.trim(),
            format!("1 {}", dir.path().canonicalize().unwrap().display())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_hold_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut p =
            Prepared::new(&cmd(&["sh", "-c", &format!("touch {}", out.display())])).unwrap();
        let held = spawn_held(&mut p).unwrap();
        let pid = held.pid;
        drop(held);
        assert!(matches!(
            wait(pid),
            nix::sys::wait::WaitStatus::Exited(_, 127)
        ));
        assert!(!out.exists());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exec_and_chdir_failures_are_reported() {
        let mut p = Prepared::new(&cmd(&["/nonexistent/bin"])).unwrap();
        let e = spawn_held(&mut p).unwrap().release().await.unwrap_err();
        assert!(
            matches!(
                e,
                SpawnError::Child {
                    stage: Stage::Exec,
                    errno: libc::ENOENT,
                    ..
                }
            ),
            "{e}"
        );
        let mut c = cmd(&["true"]);
        c.directory = PathBuf::from("/nonexistent-dir");
        let e = spawn_held(&mut Prepared::new(&c).unwrap())
            .unwrap()
            .release()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
        assert!(matches!(
            Prepared::new(&cmd(&["no-such-command-xyz"])),
            Err(SpawnError::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn listen_fds_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        // fd 3 must be the socket: ask the kernel what fd 3 is bound to via /proc/self/fd.
        let script = format!(
            "echo \"$LISTEN_PID $$ $(readlink /proc/self/fd/3 | cut -c1-7)\" > {}",
            out.display()
        );
        let mut c = cmd(&["sh", "-c", &script]);
        c.listen_fds = vec![sock.as_raw_fd()];
        let mut p = Prepared::new(&c).unwrap();
        let pid = spawn_held(&mut p).unwrap().release().await.unwrap();
        wait(pid);
        let got = std::fs::read_to_string(&out).unwrap();
        let parts: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(parts[0], pid.to_string());
        assert_eq!(parts[1], pid.to_string());
        assert_eq!(parts[2], "socket:");
        let _ = port;
    }

    #[test]
    fn pid_slot_formatting() {
        let mut s = CString::new(format!("{LISTEN_PID_PREFIX}{}", "0".repeat(PID_DIGITS)))
            .unwrap()
            .into_bytes_with_nul();
        unsafe { write_pid(s.as_mut_ptr().cast(), 40213) };
        let c = std::ffi::CStr::from_bytes_until_nul(&s).unwrap();
        assert_eq!(c.to_str().unwrap(), "LISTEN_PID=40213");
    }
}
