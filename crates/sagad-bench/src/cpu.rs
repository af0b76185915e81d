//! CPU time spent during a measured window, machine-wide and by the processes the bench knows:
//! the figure to compare when the host's speed drifts (throughput on a shared VM moves by tens of
//! per cent between identical runs; the CPU a saga costs moves much less).

use std::time::Instant;

use serde::Serialize;

/// Clock ticks a second of `/proc` accounting (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy ticks of the whole machine: user, nice, system, irq and softirq time of every CPU
/// (`/proc/stat`), leaving out idle, iowait and time stolen by the hypervisor.
fn machine_busy() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    Some(fields.first()? + fields.get(1)? + fields.get(2)? + fields.get(5)? + fields.get(6)?)
}

/// User + system ticks of process `pid` (all its threads), or of this process.
fn process(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// What the counters read at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    machine: u64,
    sagad: u64,
    bench: u64,
    at: Instant,
}

impl Sample {
    /// Reads the counters now; `sagad` is the child's pid. `None` where `/proc` is not readable.
    pub fn now(sagad: u32) -> Option<Self> {
        Some(Self {
            machine: machine_busy()?,
            sagad: process(Some(sagad))?,
            bench: process(None)?,
            at: Instant::now(),
        })
    }
}

/// CPU milliseconds per saga over a window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerSaga {
    /// Every CPU of the machine.
    pub total_ms: f64,
    /// The `sagad serve` child.
    pub sagad_ms: f64,
    /// This process: the load driver, the Stripe double and the notification receiver.
    pub bench_ms: f64,
    /// The rest: PostgreSQL, the kernel's work not charged to a process, anything else running.
    pub rest_ms: f64,
    /// Share of the machine's CPUs that was busy.
    pub busy_share: f64,
}

impl PerSaga {
    /// From `before` to `after`, over `sagas` sagas finished in between.
    pub fn between(before: Sample, after: Sample, sagas: usize, cpus: usize) -> Option<Self> {
        if sagas == 0 {
            return None;
        }
        let ms = |ticks: u64| ticks as f64 / ticks_per_s() * 1000.0 / sagas as f64;
        let total = ms(after.machine.checked_sub(before.machine)?);
        let sagad = ms(after.sagad.checked_sub(before.sagad)?);
        let bench = ms(after.bench.checked_sub(before.bench)?);
        let window = after.at.duration_since(before.at).as_secs_f64();
        Some(Self {
            total_ms: total,
            sagad_ms: sagad,
            bench_ms: bench,
            rest_ms: (total - sagad - bench).max(0.0),
            busy_share: total * sagas as f64 / 1000.0 / (window * cpus.max(1) as f64),
        })
    }
}
