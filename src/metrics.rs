//! Metrics for Prometheus' node exporter textfile collector: one file per app,
//! `kechi-APP.prom`, rewritten atomically at every memory sample, so fleets watch kechi with
//! the monitoring they already run (docs/METRICS.md lists every series).
//!
//! The text is Prometheus' text exposition format, the one the textfile collector parses: each
//! family's `# HELP` and `# TYPE` name the samples exactly, a counter's `_total` included
//! (OpenMetrics would name the family without it, and the collector would then take the
//! samples for an untyped family of their own). The closing `# EOF` of OpenMetrics is a
//! comment to that parser; it tells a reader of the file that it is whole. node exporter
//! serves the series to Prometheus in either format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::config::{Limit, Memory};
use crate::control::Status;

/// The reasons of a recycle (a worker replaced, replacement first) as the journal's REASON=
/// names them. Each is shown from 0 on, so that Prometheus' `increase()` sees the first one
/// (a series that appears at 1 has no earlier point to count from).
pub const RECYCLE_REASONS: [&str; 8] = [
    "age",
    "memory",
    "app-budget",
    "min-shared",
    "manual",
    "reload",
    "box-budget",
    "pressure",
];

/// Recycles completed by this kechid (the replacement ready and the old worker stopped), by
/// reason. Restarts at 0 with kechid, as counters may: Prometheus sees the reset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recycles(BTreeMap<&'static str, u64>);

impl Recycles {
    pub fn note(&mut self, reason: &'static str) {
        *self.0.entry(reason).or_default() += 1;
    }

    /// Every known reason (0 when none yet), then any other reason counted.
    fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let known = RECYCLE_REASONS
            .iter()
            .map(|r| (*r, self.0.get(r).copied().unwrap_or(0)));
        let others = self
            .0
            .iter()
            .filter(|(r, _)| !RECYCLE_REASONS.contains(r))
            .map(|(r, n)| (*r, *n));
        known.chain(others)
    }
}

/// The app's memory limits as configured, by key: `max` and `high` (of each worker's scope,
/// held against its cgroup charge), `recycle-above` (each worker's `memory.metric`) and
/// `app-budget` (their sum). Limits that are off are left out.
fn limits(m: &Memory) -> Vec<(&'static str, u64)> {
    let bytes = |l: Limit| match l {
        Limit::Bytes(b) => Some(b.0),
        Limit::Infinity => None,
    };
    [
        ("max", bytes(m.max)),
        ("high", bytes(m.high)),
        ("recycle-above", m.recycle_above.map(|b| b.0)),
        ("app-budget", m.app_budget.map(|b| b.0)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

/// The runtime directory of the system's kechids (run as root by `kechi@.service`).
const SYSTEM_RUNTIME_DIR: &str = "/run/kechi";

/// Where the app's file goes: node exporter's textfile directory on Debian (package
/// prometheus-node-exporter) when it exists and kechid is one of the system's (its runtime
/// directory is /run/kechi); else kechid's runtime directory. A kechid given a runtime
/// directory of its own (`KECHI_RUNTIME_DIR`: the tests, a trial run) or run by a user manager
/// keeps its metrics there, out of the machine's monitoring.
pub fn textfile_dir(runtime_dir: &Path) -> PathBuf {
    let debian = Path::new("/var/lib/prometheus/node-exporter");
    if runtime_dir == Path::new(SYSTEM_RUNTIME_DIR) && debian.is_dir() {
        debian.to_owned()
    } else {
        runtime_dir.to_owned()
    }
}

/// The app's file in `dir`: `kechi-APP.prom`.
pub fn textfile_path(dir: &Path, app: &str) -> PathBuf {
    dir.join(format!("kechi-{app}.prom"))
}

/// Replaces `path` with `text` atomically: the text goes to a temp file beside it
/// (`.NAME.tmp`, in the same directory so the rename stays on one filesystem), which is then
/// renamed over `path`. A reader (node exporter) opens either the previous whole file or the new
/// whole file, never a half-written one; the collector reads only `*.prom`, so it never picks
/// the temp file up either. On failure `path` is left as it was.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().map_or_else(
        || std::ffi::OsString::from("metrics"),
        std::ffi::OsStr::to_owned,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
}

/// A per-worker memory series: name, help, and how to read it.
type Series = (
    &'static str,
    &'static str,
    fn(&crate::control::WorkerMemory) -> Option<u64>,
);

/// The metrics of one app: its status, its memory limits (`memory`, the running config's
/// section) and its recycles.
pub fn render(st: &Status, memory: &Memory, recycles: &Recycles) -> String {
    let mut out = String::new();
    let app = escape(&st.app);
    let gauge = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    gauge(
        &mut out,
        "kechi_workers_wanted",
        "Workers the app is configured to run.",
    );
    let _ = writeln!(
        out,
        "kechi_workers_wanted{{app=\"{app}\"}} {}",
        st.workers_wanted
    );
    gauge(&mut out, "kechi_workers", "Workers by state.");
    for state in ["starting", "ready", "draining"] {
        let n = st.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(out, "kechi_workers{{app=\"{app}\",state=\"{state}\"}} {n}");
    }
    let series: [Series; 6] = [
        (
            "kechi_worker_rss_bytes",
            "Resident set of the worker's processes (counts shared pages once per process).",
            |m| Some(m.rss),
        ),
        (
            "kechi_worker_pss_bytes",
            "Proportional set of the worker's processes.",
            |m| Some(m.pss),
        ),
        (
            "kechi_worker_uss_bytes",
            "Unique (private) memory of the worker's processes.",
            |m| Some(m.uss),
        ),
        (
            "kechi_worker_shared_bytes",
            "Copy-on-write shared part of the worker's RSS.",
            |m| Some(m.shared),
        ),
        (
            "kechi_worker_swap_bytes",
            "Swapped-out memory of the worker's processes.",
            |m| Some(m.swap),
        ),
        (
            "kechi_worker_cgroup_bytes",
            "Memory charged to the worker's scope cgroup.",
            |m| m.cgroup,
        ),
    ];
    for (name, help, get) in series {
        gauge(&mut out, name, help);
        for w in &st.workers {
            if let Some(v) = w.memory.as_ref().and_then(get) {
                let _ = writeln!(out, "{name}{{app=\"{app}\",worker=\"{}\"}} {v}", w.serial);
            }
        }
    }
    gauge(
        &mut out,
        "kechi_worker_age_seconds",
        "Seconds since the worker started.",
    );
    for w in &st.workers {
        let _ = writeln!(
            out,
            "kechi_worker_age_seconds{{app=\"{app}\",worker=\"{}\"}} {}",
            w.serial, w.age_secs
        );
    }
    gauge(
        &mut out,
        "kechi_worker_jemalloc",
        "1 if jemalloc is loaded in the worker.",
    );
    for w in &st.workers {
        if let Some(j) = w.jemalloc {
            let _ = writeln!(
                out,
                "kechi_worker_jemalloc{{app=\"{app}\",worker=\"{}\"}} {}",
                w.serial,
                u8::from(j)
            );
        }
    }
    gauge(
        &mut out,
        "kechi_memory_limit_bytes",
        "The app's memory limits as configured: max and high of each worker's scope (its cgroup charge), recycle-above (each worker's memory.metric), app-budget (their sum).",
    );
    for (limit, v) in limits(memory) {
        let _ = writeln!(
            out,
            "kechi_memory_limit_bytes{{app=\"{app}\",limit=\"{limit}\"}} {v}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kechi_recycles_total Workers recycled since kechid started (replacement ready, old worker stopped), by reason.\n# TYPE kechi_recycles_total counter"
    );
    for (reason, n) in recycles.counts() {
        let _ = writeln!(
            out,
            "kechi_recycles_total{{app=\"{app}\",reason=\"{}\"}} {n}",
            escape(reason)
        );
    }
    render_start(&mut out, &app, &st.start);
    let _ = writeln!(out, "# EOF");
    out
}

/// How the app's kechid started, and its idle state (scale to zero).
fn render_start(out: &mut String, app: &str, s: &crate::control::StartInfo) {
    let gauge = |out: &mut String, name: &str, help: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{app=\"{app}\"}} {v}"
        );
    };
    if let Some(secs) = s.ready_secs {
        gauge(
            out,
            "kechi_start_ready_seconds",
            "Seconds from kechid's start to its first ready worker (a cold start after an idle stop, or any start).",
            &secs,
        );
    }
    gauge(
        out,
        "kechi_start_after_idle",
        "1 if kechid was started again after an idle stop (a cold start).",
        &u8::from(s.after_idle_secs.is_some()),
    );
    gauge(
        out,
        "kechi_idle_stop_after_seconds",
        "idle.stop-after in seconds (0: the app is never stopped for idleness).",
        &s.idle_stop_after_secs,
    );
    if let Some(idle) = s.idle_secs {
        gauge(
            out,
            "kechi_idle_seconds",
            "Seconds since a connection was last open, waiting or arriving on the app's sockets.",
            &idle,
        );
    }
    gauge(
        out,
        "kechi_idle_stopped",
        "1 once kechid has stopped the app for idleness (until the next connection starts it).",
        &u8::from(s.idle_stopped),
    );
    let _ = writeln!(
        out,
        "# HELP kechi_idle_stops_total Times the app was stopped for idleness since the machine booted.\n# TYPE kechi_idle_stops_total counter\nkechi_idle_stops_total{{app=\"{app}\"}} {}",
        s.idle_stops
    );
}

/// Label values escape backslash, quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Metric;
    use crate::control::{WorkerMemory, WorkerStatus};
    use crate::quantity::Bytes;

    fn worker(serial: u64, state: &str) -> WorkerStatus {
        WorkerStatus {
            serial,
            pid: 10,
            scope: None,
            state: state.into(),
            age_secs: 5,
            generation: 1,
            jemalloc: Some(true),
            memory_bytes: Some(1),
            memory: Some(WorkerMemory {
                rss: 100,
                pss: 60,
                uss: 40,
                shared: 60,
                shared_percent: Some(60.0),
                swap: 0,
                cgroup: Some(70),
                processes: 2,
            }),
            tmpdir: None,
            tmpdir_bytes: None,
        }
    }

    fn status(app: &str) -> Status {
        Status {
            app: app.into(),
            kechid_pid: 1,
            generation: 1,
            workers_wanted: 2,
            workers: vec![worker(1, "ready"), worker(2, "starting")],
            summary: String::new(),
            events: vec![],
            listening: vec![],
            start: Default::default(),
        }
    }

    fn memory() -> Memory {
        Memory {
            max: Limit::Bytes(Bytes(64 << 20)),
            high: Limit::Infinity,
            swap_max: None,
            metric: Metric::Uss,
            recycle_above: Some(Bytes(40 << 20)),
            app_budget: None,
            min_shared: None,
            child_signal: None,
        }
    }

    /// The sample lines of `text`, as (family named by the sample, line).
    fn samples(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| (l.split(['{', ' ']).next().unwrap(), l))
            .collect()
    }

    #[test]
    fn renders_one_line_per_worker_and_ends_with_eof() {
        let text = render(&status("demo"), &memory(), &Recycles::default());
        assert!(
            text.contains("kechi_worker_uss_bytes{app=\"demo\",worker=\"2\"} 40\n"),
            "{text}"
        );
        assert!(text.contains("kechi_workers{app=\"demo\",state=\"ready\"} 1\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(escape("a\"b"), "a\\\"b");
    }

    /// What the textfile collector needs of every sample: a `# TYPE` and a `# HELP` line
    /// naming it exactly, before it and once (a counter typed under its OpenMetrics family
    /// name, without `_total`, came out untyped and without help).
    #[test]
    fn every_sample_is_typed_and_documented_under_its_own_name() {
        let mut st = status("demo");
        st.start.idle_stops = 3;
        st.start.idle_secs = Some(7);
        st.start.ready_secs = Some(0.25);
        let mut recycles = Recycles::default();
        recycles.note("memory");
        let text = render(&st, &memory(), &recycles);
        let mut typed: BTreeMap<&str, &str> = BTreeMap::new();
        let mut helped: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(typed.insert(name, kind).is_none(), "typed twice: {name}");
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!helped.contains(&name), "help twice: {name}");
                helped.push(name);
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains_key(name), "no TYPE before: {line}");
                assert!(helped.contains(&name), "no HELP before: {line}");
            }
        }
        assert_eq!(typed["kechi_idle_stops_total"], "counter");
        assert!(text.contains("kechi_idle_stops_total{app=\"demo\"} 3\n"));
    }

    #[test]
    fn recycles_by_reason_start_at_zero_for_every_known_reason() {
        let mut recycles = Recycles::default();
        recycles.note("memory");
        recycles.note("memory");
        recycles.note("manual");
        recycles.note("something-new");
        let text = render(&status("demo"), &memory(), &recycles);
        let lines: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|(n, _)| *n == "kechi_recycles_total")
            .map(|(_, l)| l)
            .collect();
        assert_eq!(lines.len(), RECYCLE_REASONS.len() + 1, "{lines:?}");
        assert!(lines.contains(&"kechi_recycles_total{app=\"demo\",reason=\"memory\"} 2"));
        assert!(lines.contains(&"kechi_recycles_total{app=\"demo\",reason=\"manual\"} 1"));
        assert!(lines.contains(&"kechi_recycles_total{app=\"demo\",reason=\"box-budget\"} 0"));
        assert!(lines.contains(&"kechi_recycles_total{app=\"demo\",reason=\"something-new\"} 1"));
    }

    #[test]
    fn memory_limits_that_are_set_and_only_those() {
        let text = render(&status("demo"), &memory(), &Recycles::default());
        let lines: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|(n, _)| *n == "kechi_memory_limit_bytes")
            .map(|(_, l)| l)
            .collect();
        assert_eq!(
            lines,
            [
                "kechi_memory_limit_bytes{app=\"demo\",limit=\"max\"} 67108864",
                "kechi_memory_limit_bytes{app=\"demo\",limit=\"recycle-above\"} 41943040",
            ]
        );
    }

    #[test]
    fn only_the_system_kechids_write_to_node_exporters_directory() {
        let own = Path::new("/tmp/kechi-test-run");
        assert_eq!(textfile_dir(own), own);
        let system = textfile_dir(Path::new("/run/kechi/"));
        if Path::new("/var/lib/prometheus/node-exporter").is_dir() {
            assert_eq!(system, Path::new("/var/lib/prometheus/node-exporter"));
        } else {
            assert_eq!(system, Path::new("/run/kechi"));
        }
    }

    #[test]
    fn textfile_name_and_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = textfile_path(dir.path(), "demo");
        assert_eq!(path, dir.path().join("kechi-demo.prom"));
        // a failed rename would leave the temp file: hidden, and not *.prom, so the textfile
        // collector never reads it
        std::fs::create_dir(dir.path().join(".kechi-demo.prom.tmp")).unwrap();
        assert!(write_atomically(&path, "x\n").is_err());
        assert!(!path.exists());
    }

    /// The file is replaced by a rename, never rewritten in place: at every moment the name
    /// leads to a whole file, and no temp file is left behind.
    #[test]
    fn textfile_is_replaced_whole_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = textfile_path(dir.path(), "demo");
        let first = "# first\n".repeat(1000) + "# EOF\n";
        write_atomically(&path, &first).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);

        // a reader that opened the file before the next write...
        let mut reader = std::fs::File::open(&path).unwrap();
        let ino_before = std::os::unix::fs::MetadataExt::ino(&reader.metadata().unwrap());
        let second = "# second\n".repeat(10) + "# EOF\n";
        write_atomically(&path, &second).unwrap();
        // ...still reads the previous file whole: it was not truncated or rewritten
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, first);
        // and the name now leads to another file, with all of the new text
        let ino_after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_ne!(ino_before, ino_after);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), second);

        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["kechi-demo.prom".to_owned()]);
    }

    #[test]
    fn a_stale_temp_file_is_overwritten_and_a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = textfile_path(dir.path(), "demo");
        // left by a kechid killed between write and rename
        let tmp = dir.path().join(".kechi-demo.prom.tmp");
        std::fs::write(&tmp, "partial garbage that is longer than the new text\n").unwrap();
        write_atomically(&path, "# EOF\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# EOF\n");
        assert!(!tmp.exists());
        // the temp file cannot be written (here a directory stands in its way): the previous
        // file stays as it was
        std::fs::create_dir(&tmp).unwrap();
        assert!(write_atomically(&path, "# new\n# EOF\n").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "# EOF\n");
    }
}
