//! Server-side CPU time and memory of the processes under test.
//!
//! Preferred: a cgroup v2 made for the server, so every process it ever starts (git
//! children included) is counted in its `cpu.stat`. Where cgroup v2 cannot be used, the
//! fallback reads /proc: user + system time of the server's live processes plus the
//! time of the children they have waited for (`cutime`/`cstime`), which covers git
//! processes reaped by gitgate or fcgiwrap. Which method was used is reported.

use std::path::{Path, PathBuf};

/// How CPU time is being measured.
pub enum Accounting {
    /// A cgroup v2 directory holding the server.
    Cgroup(PathBuf),
    /// /proc sums over these root processes and their descendants.
    Proc(Vec<u32>),
}

fn cgroup2_root() -> Option<PathBuf> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let root = Path::new(candidate);
        if root.join("cgroup.procs").exists() && root.join("cgroup.controllers").exists() {
            return Some(root.to_owned());
        }
    }
    None
}

/// All live descendants of `roots`, roots included.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) =
                stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut tree: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (pid, ppid) in &parent_of {
            if *ppid == parent && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    tree
}

/// Fields of /proc/PID/stat after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds `pid` itself has used so far (utime + stime, not its children's).
pub fn own_cpu(pid: u32) -> f64 {
    stat_fields(pid).map_or(0.0, |f| {
        f.iter()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>() as f64
            / 100.0
    })
}

impl Accounting {
    /// Start accounting for a server whose processes are `roots` (and their children).
    pub fn attach(name: &str, roots: &[u32]) -> Self {
        if let Some(root) = cgroup2_root() {
            let dir = root.join(format!("gitgate-load-{}-{name}", std::process::id()));
            let moved = std::fs::create_dir_all(&dir).is_ok()
                && process_tree(roots)
                    .iter()
                    .all(|pid| std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok())
                && dir.join("cpu.stat").exists();
            if moved {
                return Self::Cgroup(dir);
            }
            let _ = std::fs::remove_dir(&dir);
        }
        Self::Proc(roots.to_vec())
    }

    /// Which method is in use.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Cgroup(_) => "cgroup v2 cpu.stat",
            Self::Proc(_) => "/proc utime+stime+cutime+cstime (cgroup v2 unavailable)",
        }
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        match self {
            Self::Cgroup(dir) => std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("usage_usec ")
                            .and_then(|v| v.trim().parse::<f64>().ok())
                    })
                })
                .map_or(0.0, |usec| usec / 1e6),
            Self::Proc(roots) => {
                let ticks: u64 = process_tree(roots)
                    .iter()
                    .filter_map(|pid| stat_fields(*pid))
                    // utime, stime, cutime, cstime are fields 14-17 of stat: 11-14 here.
                    .map(|f| {
                        f.iter()
                            .skip(11)
                            .take(4)
                            .filter_map(|v| v.parse::<u64>().ok())
                            .sum::<u64>()
                    })
                    .sum();
                ticks as f64 / 100.0
            }
        }
    }

    /// Move the processes back out and remove the cgroup.
    pub fn detach(&self) {
        if let Self::Cgroup(dir) = self {
            if let (Some(root), Ok(procs)) = (
                dir.parent(),
                std::fs::read_to_string(dir.join("cgroup.procs")),
            ) {
                for pid in procs.lines() {
                    let _ = std::fs::write(root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Peak resident set (VmHWM) of one process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").map(|v| {
                    v.trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                })
            })
        })
        .map_or(0, |kib| kib * 1024)
}

/// The whole machine's busy and total CPU ticks so far (/proc/stat), for how busy it
/// was during a measurement: clients, servers and everything else.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// How busy the whole machine was since `before` (from [`machine_ticks`]), as a
/// percentage for a report line; "-" when /proc/stat cannot tell.
pub fn busy_since(before: Option<(u64, u64)>) -> String {
    match (before, machine_ticks()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            format!("{:.0}%", 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
        }
        _ => "-".to_owned(),
    }
}
