//! The proxy's CPU time and memory, read from /proc.

/// Clock ticks per second of /proc's `utime`/`stime` (USER_HZ, fixed at 100
/// in Linux's user ABI on x86-64 whatever the kernel's HZ).
const USER_HZ: f64 = 100.0;

/// `(ppid, utime + stime + cutime + cstime)` of one /proc/PID/stat line.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised command name: state is [0], ppid
    // [1], utime [11], stime [12], cutime [13], cstime [14].
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f
        .get(11..15)?
        .iter()
        .map(|v| v.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

/// CPU seconds (user + system) that `root` and every process below it have
/// used so far: the live ones' own time, plus what reaped children left in
/// their parent's `cutime`/`cstime` (so a helper that came and went still
/// counts, and nothing counts twice).
pub fn tree_cpu_secs(root: u32) -> Option<f64> {
    let (_, own) = stat_of(root)?;
    let mut parent = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat_of(pid) {
            parent.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = own;
    let mut stack = parent.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = stack.pop() {
        if let Some((_, t)) = stat_of(pid) {
            total += t;
        }
        stack.extend(parent.get(&pid).cloned().unwrap_or_default());
    }
    Some(total as f64 / USER_HZ)
}

/// Resident memory of `root` and its descendants, bytes (VmRSS summed:
/// shared pages of forked helpers count once per process).
pub fn tree_rss(root: u32) -> Option<u64> {
    let rss = |pid: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    let mut total = rss(root)?;
    let mut kids = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((ppid, _)) = stat_of(pid) {
            kids.entry(ppid).or_default().push(pid);
        }
    }
    let mut stack = kids.get(&root).cloned().unwrap_or_default();
    while let Some(pid) = stack.pop() {
        total += rss(pid).unwrap_or(0);
        stack.extend(kids.get(&pid).cloned().unwrap_or_default());
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    /// The probe reads this very process: some CPU, and it never shrinks.
    #[test]
    fn reads_own_cpu_and_rss() {
        let me = std::process::id();
        let a = super::tree_cpu_secs(me).expect("own stat");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = super::tree_cpu_secs(me).expect("own stat");
        assert!(b >= a);
        assert!(super::tree_rss(me).expect("own status") > 0);
    }
}
