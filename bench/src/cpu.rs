//! CPU time by process class over a stretch of a scenario, read from `/proc/<pid>/stat`: where the
//! machine's cores go while the engine runs steps (PostgreSQL backends, worker processes, Redis,
//! this bench process with its producer).
//!
//! A thread samples every process every [`EVERY`]; a process's share is its last reading less its
//! first (0 for a process that started inside the stretch). What a process spent after the last
//! sample before it exited is not counted (at most one interval's worth).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// How often every process is read.
const EVERY: Duration = Duration::from_millis(50);

/// `utime` and `stime` in `/proc/<pid>/stat` count in USER_HZ, which Linux fixes at 100 per second.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds by class: `postgres`, `worker`, `redis`, `bench` (this process) and `other`.
pub type CpuSplit = BTreeMap<&'static str, f64>;

/// Samples until [`Sampler::stop`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<CpuSplit>,
}

impl Sampler {
    pub fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let me = std::process::id();
            // pid → (class, first reading, last reading)
            let mut seen: HashMap<u32, (&'static str, u64, u64)> = HashMap::new();
            let mut first = true;
            loop {
                let done = flag.load(Ordering::Relaxed);
                for (pid, comm, ticks) in read_all() {
                    let class = classify(pid, me, &comm);
                    let baseline = if first { ticks } else { 0 };
                    seen.entry(pid).or_insert((class, baseline, ticks)).2 = ticks;
                }
                first = false;
                if done {
                    break;
                }
                std::thread::sleep(EVERY);
            }
            let mut split = CpuSplit::new();
            for (class, from, to) in seen.into_values() {
                *split.entry(class).or_default() += to.saturating_sub(from) as f64 / TICKS_PER_SEC;
            }
            split
        });
        Sampler { stop, thread }
    }

    /// Takes a last reading and returns CPU seconds by class since [`Sampler::start`].
    pub fn stop(self) -> CpuSplit {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn classify(pid: u32, me: u32, comm: &str) -> &'static str {
    match comm {
        _ if pid == me => "bench",
        "postgres" => "postgres",
        "redis-server" => "redis",
        // `comm` is cut at 15 bytes.
        c if c.starts_with("syncfleet-work") => "worker",
        _ => "other",
    }
}

/// (pid, comm, utime + stime) of every process.
fn read_all() -> Vec<(u32, String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_owned();
        // After the comm: state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((pid, comm, ticks))
    })
    .collect()
}
