//! CPU time per thread name, from `/proc/self/task`: where the line's CPU goes (the camera
//! library's receive threads, the stage threads, the sinks, and the engine's pool under the
//! process's own name).

use std::collections::BTreeMap;

/// CPU seconds (user + system) of this process's live threads, summed per thread name, most
/// first. A thread inherits the name of the one that started it: ONNX Runtime's pool, made
/// when the model loads, counts under the process's own name.
/// Empty where `/proc` is not there.
pub(super) fn threads() -> Vec<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tick = if tick > 0 { tick as f64 } else { 100.0 };
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, ticks)) = parse_stat(&stat) {
            *by_name.entry(name).or_default() += ticks as f64 / tick;
        }
    }
    let mut v: Vec<(String, f64)> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// (name, utime + stime ticks) from a `stat` line; the name may hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After the name: state is field 3, utime and stime fields 14 and 15.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let line = "4242 (arv (gv) stream) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 9 0";
        assert_eq!(parse_stat(line), Some(("arv (gv) stream".into(), 280)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_thread_is_counted() {
        let t = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(|| {
                // Spin until the kernel has charged this thread a tick (on a busy machine
                // that can take longer than the spin itself).
                let start = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..1_000_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let v = threads();
                    let charged = v.iter().any(|(n, s)| n == "cpu-probe" && *s > 0.0);
                    if charged || start.elapsed() > std::time::Duration::from_secs(10) {
                        return v;
                    }
                }
            })
            .unwrap();
        let v = t.join().unwrap();
        let (_, s) = v.iter().find(|(n, _)| n == "cpu-probe").expect("listed");
        assert!(*s > 0.0 && *s < 5.0, "{s}");
    }
}
