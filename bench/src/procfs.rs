//! What `/proc` tells about a server under measurement: its memory and
//! the context switches of its threads.
//!
//! Linux keeps context switch counts per thread: `/proc/PID/status` shows
//! the main thread's only, and the counts of threads that have exited are
//! added to the process's totals, which only `getrusage` of the process
//! itself (or of a waited-for child) reports. So the counts are read from
//! every `/proc/PID/task/TID/status` while the measurement runs, often
//! enough that a thread that exits loses little (see [`CtxSampler`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the threads are read during a measurement: a thread that
/// exits loses at most this long of its switches. Reading a dozen small
/// files ten times a second costs the client next to nothing.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A field of `/proc/PID/status` given in kB (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&text, field)
}

fn status_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Voluntary plus involuntary context switches of every live thread of
/// `pid`, by thread id.
fn thread_switches(pid: u32) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let v = status_field(&text, "voluntary_ctxt_switches");
        let n = status_field(&text, "nonvoluntary_ctxt_switches");
        if let (Some(v), Some(n)) = (v, n) {
            out.insert(tid, v + n);
        }
    }
    out
}

/// What a [`CtxSampler`] counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    /// Context switches of the process's threads during the measurement.
    pub total: u64,
    /// Threads that exited during it (each may miss up to
    /// [`SAMPLE_EVERY`] of switches before its exit).
    pub threads_ended: usize,
}

/// One thread as the sampler saw it.
struct Seen {
    /// Its count when first seen (0 for a thread born after the start).
    base: u64,
    /// Its latest count.
    last: u64,
}

/// The sampler's bookkeeping, apart from `/proc` so it can be tested.
struct Tally {
    seen: HashMap<u32, Seen>,
    /// What threads that have exited counted.
    done: Switches,
}

impl Tally {
    /// Starts from the threads alive now: only what they do from here on
    /// counts.
    fn new(now: HashMap<u32, u64>) -> Tally {
        Tally {
            seen: now
                .into_iter()
                .map(|(tid, n)| (tid, Seen { base: n, last: n }))
                .collect(),
            done: Switches::default(),
        }
    }

    /// Takes a reading: threads born since count from 0, threads gone are
    /// settled at their last reading.
    fn update(&mut self, now: &HashMap<u32, u64>) {
        for (&tid, &n) in now {
            match self.seen.get_mut(&tid) {
                // A count that went down is a new thread that got the id
                // of one that exited: settle the old one.
                Some(s) if n < s.last => {
                    self.done.total += s.last - s.base;
                    self.done.threads_ended += 1;
                    *s = Seen { base: 0, last: n };
                }
                Some(s) => s.last = n,
                None => {
                    self.seen.insert(tid, Seen { base: 0, last: n });
                }
            }
        }
        let done = &mut self.done;
        self.seen.retain(|tid, s| {
            let alive = now.contains_key(tid);
            if !alive {
                done.total += s.last - s.base;
                done.threads_ended += 1;
            }
            alive
        });
    }

    /// Everything counted, the live threads at their last reading.
    fn total(&self) -> Switches {
        Switches {
            total: self.done.total + self.seen.values().map(|s| s.last - s.base).sum::<u64>(),
            threads_ended: self.done.threads_ended,
        }
    }
}

/// Counts the context switches of a process's threads from now until
/// [`CtxSampler::finish`], reading them every [`SAMPLE_EVERY`] in a thread
/// of its own.
pub struct CtxSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Switches>,
}

impl CtxSampler {
    /// Starts counting for `pid`.
    pub fn start(pid: u32) -> CtxSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut tally = Tally::new(thread_switches(pid));
        let handle = std::thread::spawn(move || loop {
            let last_round = flag.load(Ordering::Acquire);
            tally.update(&thread_switches(pid));
            if last_round {
                return tally.total();
            }
            std::thread::park_timeout(SAMPLE_EVERY);
        });
        CtxSampler { stop, handle }
    }

    /// Takes a last reading and returns what was counted.
    pub fn finish(self) -> Switches {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_name() {
        let text = "Name:\tcertd\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                    voluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(status_field(text, "VmRSS"), Some(10240));
        assert_eq!(status_field(text, "VmHWM"), Some(20480));
        assert_eq!(status_field(text, "voluntary_ctxt_switches"), Some(7));
        assert_eq!(status_field(text, "nonvoluntary_ctxt_switches"), Some(3));
        assert_eq!(status_field(text, "VmSwap"), None);
    }

    #[test]
    fn threads_born_and_gone_count_what_they_did_during_the_measurement() {
        let map = |v: &[(u32, u64)]| v.iter().copied().collect::<HashMap<_, _>>();
        // Threads 1 and 2 exist at the start, with 100 and 50 switches.
        let mut tally = Tally::new(map(&[(1, 100), (2, 50)]));
        // 1 goes on, 2 does 5 more, 3 is born.
        tally.update(&map(&[(1, 110), (2, 55), (3, 7)]));
        // 2 exits; 3 goes on.
        tally.update(&map(&[(1, 120), (3, 9)]));
        // 1's id is taken by a new thread (its count starts again).
        tally.update(&map(&[(1, 4), (3, 9)]));
        let counted = tally.total();
        // 1: 20 then 4 as the new thread; 2: 5; 3: 9.
        assert_eq!(counted.total, 20 + 4 + 5 + 9);
        assert_eq!(counted.threads_ended, 2);
    }

    #[test]
    fn the_sampler_counts_this_process() {
        let sampler = CtxSampler::start(std::process::id());
        // Each sleep switches the thread out: 30 of them over three
        // sampling periods, most of them seen before the thread exits.
        std::thread::spawn(|| {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .join()
        .ok();
        let counted = sampler.finish();
        assert!(counted.total >= 15, "{counted:?}");
    }
}
