//! What memory sampling costs: CPU time spent reading `/proc/PID/smaps_rollup` (and, for
//! comparison, `/proc/PID/status` and `/proc/PID/statm`) of N processes once per second, as a percentage of one core.
//!
//! The target (DESIGN): under 1% of one core for 200 processes at 1 Hz. The cost is kernel time
//! almost entirely (smaps_rollup walks every mapping's page tables), so it is measured as the
//! sampling thread's user + system CPU time from `getrusage(RUSAGE_THREAD)`, never wall clock:
//! wall time would include waiting for the CPU, not only using it.
//!
//! Run (see docs/MEMORY-SAMPLING.md for results):
//!   cargo test --release --test memory_sampling_cost -- --ignored --nocapture
//! Environment: `KECHI_BENCH_N` (default `50,200,800`), `KECHI_BENCH_SAMPLES` (default 10),
//! `KECHI_BENCH_WORKLOADS` (default `sleep,python`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kechi::memory::{ProcRoot, read_proc_counters, read_proc_mem, read_proc_statm};

/// The processes sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `sleep`: about 1 MiB resident, a couple of dozen mappings.
    Sleep,
    /// A Python interpreter that touched 8 MiB: closer to a real worker's mapping count.
    Python,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        match s {
            "sleep" => Some(Workload::Sleep),
            "python" => Some(Workload::Python),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Sleep => "sleep 3600",
            Workload::Python => "python3, 8 MiB touched",
        }
    }

    fn command(self) -> Command {
        match self {
            Workload::Sleep => {
                let mut c = Command::new("sleep");
                c.arg("3600");
                c
            }
            Workload::Python => {
                let mut c = Command::new("python3");
                c.args([
                    "-c",
                    "import time\nb = bytearray(b'x') * (8 << 20)\ntime.sleep(3600)",
                ]);
                c
            }
        }
    }
}

/// What is read per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `smaps_rollup`: RSS, PSS, USS, shared; walks the page tables.
    SmapsRollup,
    /// `status`: RSS and its anon/file/shmem split from the kernel's counters.
    Status,
    /// `statm`: RSS and its file+shmem part from the same counters, in seven numbers.
    Statm,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::SmapsRollup => "smaps_rollup",
            Method::Status => "status",
            Method::Statm => "statm",
        }
    }

    /// Reads one process and returns its RSS.
    fn read(self, proc: &ProcRoot, pid: u32) -> u64 {
        match self {
            Method::SmapsRollup => read_proc_mem(proc, pid).map(|m| m.rss),
            Method::Status => read_proc_counters(proc, pid).map(|c| c.rss),
            Method::Statm => read_proc_statm(proc, pid).map(|c| c.resident),
        }
        .expect("a benchmark child vanished")
    }
}

/// The processes, killed and reaped when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// This thread's user and system CPU time from `getrusage(RUSAGE_THREAD)`.
///
/// The kernel brings a running thread's runtime total up to date only at a scheduler tick or a
/// context switch, so a getrusage delta around a 1 ms piece of work usually reads 0 (and one
/// around a longer piece misses its tail after the last tick). Over the whole run, framed by
/// sleeps, the total is exact; the user/system split is the kernel's tick-sampled estimate.
fn thread_rusage() -> (Duration, Duration) {
    // SAFETY: getrusage only writes the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// This thread's CPU time (user + system) to the nanosecond: `CLOCK_THREAD_CPUTIME_ID` makes the
/// kernel account the running slice first, so it is exact for each sample.
fn thread_clock() -> Duration {
    // SAFETY: clock_gettime only writes the struct we hand it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One row of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: Workload,
    pub method: Method,
    pub n: usize,
    pub samples: usize,
    /// From getrusage over the whole run (the sleeps between samples included, which cost a
    /// few microseconds).
    pub user_per_sample: Duration,
    pub sys_per_sample: Duration,
    /// From the thread CPU clock around each sample.
    pub cpu_per_sample: Duration,
    pub cpu_max: Duration,
    pub wall_per_sample: Duration,
    pub mean_rss: u64,
}

impl Row {
    /// CPU per sample at one sample a second, in percent of one core.
    pub fn percent_of_core(&self) -> f64 {
        self.cpu_per_sample.as_secs_f64() * 100.0
    }
}

/// Starts `n` processes of `workload`, samples them `samples` times at 1 Hz with each method and
/// measures.
pub fn measure(workload: Workload, n: usize, samples: usize, methods: &[Method]) -> Vec<Row> {
    let mut kids = Children(Vec::with_capacity(n));
    for _ in 0..n {
        let child = workload
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", workload.name()));
        kids.0.push(child);
    }
    let pids: Vec<u32> = kids.0.iter().map(Child::id).collect();
    let proc = ProcRoot::default();
    wait_settled(&proc, &pids, workload);
    methods
        .iter()
        .map(|&method| sample_with(&proc, &pids, workload, method, samples))
        .collect()
}

/// Waits until every child has exec'd and touched its memory, so that no start-up work (800
/// Python interpreters take tens of seconds of CPU to start on two cores) overlaps sampling.
fn wait_settled(proc: &ProcRoot, pids: &[u32], workload: Workload) {
    let (comm, min_rss) = match workload {
        Workload::Sleep => ("sleep", 0),
        Workload::Python => ("python3", 8 << 20),
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let settled = |&pid: &u32| {
        let c = std::fs::read_to_string(proc.pid_file(pid, "comm")).unwrap_or_default();
        c.trim() == comm && read_proc_counters(proc, pid).is_ok_and(|c| c.rss >= min_rss)
    };
    while !pids.iter().all(settled) {
        assert!(
            Instant::now() < deadline,
            "children did not settle in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the run queue drain of whatever the last ones still do on their way to sleep.
    std::thread::sleep(Duration::from_secs(2));
}

fn sample_with(
    proc: &ProcRoot,
    pids: &[u32],
    workload: Workload,
    method: Method,
    samples: usize,
) -> Row {
    let n = pids.len();
    let sample = || -> u64 { pids.iter().map(|&pid| method.read(proc, pid)).sum() };
    let _warm = sample();

    let (mut cpu, mut cpu_max, mut wall) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut rss = 0u64;
    // Both ends of the getrusage interval follow a sleep, so the thread has just been switched
    // in and the kernel's runtime total is current (see thread_rusage).
    std::thread::sleep(Duration::from_millis(1));
    let (u0, s0) = thread_rusage();
    let start = Instant::now();
    for i in 0..samples {
        // 1 Hz, as kechid's check-interval would have it at its most eager.
        let tick = start + Duration::from_secs(i as u64 + 1);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let c0 = thread_clock();
        let w0 = Instant::now();
        let total = std::hint::black_box(sample());
        wall += w0.elapsed();
        let c = thread_clock() - c0;
        cpu += c;
        cpu_max = cpu_max.max(c);
        rss += total / n.max(1) as u64;
    }
    std::thread::sleep(Duration::from_millis(1));
    let (u1, s1) = thread_rusage();
    let k = samples as u32;
    Row {
        workload,
        method,
        n,
        samples,
        user_per_sample: (u1 - u0) / k,
        sys_per_sample: (s1 - s0) / k,
        cpu_per_sample: cpu / k,
        cpu_max,
        wall_per_sample: wall / k,
        mean_rss: rss / samples as u64,
    }
}

/// Prints the table in Markdown.
pub fn print_table(rows: &[Row]) {
    println!(
        "| processes | file read | N | samples | CPU ms/sample (mean) | CPU ms (max) | % of one core at 1 Hz | getrusage user+sys ms/sample | wall ms/sample | RSS each |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | **{:.2}** | {:.3} + {:.3} | {:.3} | {:.1} MiB |",
            r.workload.name(),
            r.method.name(),
            r.n,
            r.samples,
            ms(r.cpu_per_sample),
            ms(r.cpu_max),
            r.percent_of_core(),
            ms(r.user_per_sample),
            ms(r.sys_per_sample),
            ms(r.wall_per_sample),
            r.mean_rss as f64 / (1 << 20) as f64,
        );
    }
}

/// Runs the configured matrix and prints it.
pub fn run() -> Vec<Row> {
    let ns: Vec<usize> = std::env::var("KECHI_BENCH_N")
        .unwrap_or_else(|_| "50,200,800".into())
        .split(',')
        .map(|s| s.trim().parse().expect("KECHI_BENCH_N: numbers"))
        .collect();
    let samples: usize = std::env::var("KECHI_BENCH_SAMPLES")
        .map(|s| s.parse().expect("KECHI_BENCH_SAMPLES: a number"))
        .unwrap_or(10)
        .max(1);
    let workloads: Vec<Workload> = std::env::var("KECHI_BENCH_WORKLOADS")
        .unwrap_or_else(|_| "sleep,python".into())
        .split(',')
        .map(|s| Workload::parse(s.trim()).expect("KECHI_BENCH_WORKLOADS: sleep, python"))
        .collect();
    let mut rows = Vec::new();
    for &w in &workloads {
        for &n in &ns {
            for row in measure(
                w,
                n,
                samples,
                &[Method::SmapsRollup, Method::Status, Method::Statm],
            ) {
                eprintln!(
                    "{} x{n}, {}: {:.3}% of one core",
                    w.name(),
                    row.method.name(),
                    row.percent_of_core()
                );
                rows.push(row);
            }
        }
    }
    print_table(&rows);
    rows
}
