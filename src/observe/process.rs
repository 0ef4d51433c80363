//! The process's own figures, read from `/proc` when a scrape asks: CPU
//! time, resident and virtual memory, open and allowed file descriptors,
//! threads. Nothing here is counted on the request path.

use std::time::SystemTime;

/// What a scrape reports about the process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessInfo {
    /// Seconds since the Unix epoch when the gateway started.
    pub start_time: f64,
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
}

/// Seconds since the Unix epoch.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads the figures now; `started` is when the gateway started.
pub fn read(started: SystemTime) -> ProcessInfo {
    let mut p = ProcessInfo {
        start_time: epoch_seconds(started),
        ..ProcessInfo::default()
    };
    // SAFETY: sysconf only reads system configuration.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name (field 2) may hold spaces: count from its ')'.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state): field N is f[N - 3].
            let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(u), Some(s)) = (num(14), num(15)) {
                if ticks > 0 {
                    p.cpu_seconds = Some((u + s) as f64 / ticks as f64);
                }
            }
            p.threads = num(20);
            p.virtual_bytes = num(23);
            if page > 0 {
                p.resident_bytes = num(24).map(|pages| pages * page as u64);
            }
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0
        && rl.rlim_cur != libc::RLIM_INFINITY
    {
        p.max_fds = Some(rl.rlim_cur);
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_memory_and_descriptors() {
        let p = super::read(std::time::SystemTime::now());
        assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        assert!(p.threads.is_some_and(|n| n >= 1), "{p:?}");
        assert!(p.start_time > 1e9);
    }
}
