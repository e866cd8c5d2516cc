//! Which CPU each request thread runs on (`server.cpu_affinity`).
//!
//! A request thread owns its connections for their whole life (they come
//! from its own SO_REUSEPORT socket), so when the scheduler stacks two
//! request threads on one core, every connection of both waits for the
//! other's time slices while another core runs something else. Measured
//! here (benches/compare.sh's sticky scenario, wrk and two nginx backends
//! on the same 2 cores): the two threads shared a core for 4-8 ms
//! stretches and p99 was 2.5-3.7 ms; with one thread per core it was
//! 1.7-2.1 ms at the same throughput (HAProxy: 2.3-2.5 ms). So `auto`
//! pins thread i to the i-th CPU the process may use, but only in the
//! thread-per-core layout (as many threads as allowed CPUs): with fewer
//! threads, several instances on one machine would all crowd the first
//! CPUs, so the scheduler keeps placing them. `off` leaves every thread
//! to the scheduler, for hosts where other busy work shares the cores
//! (a pinned thread cannot move away from a neighbour hogging its core).

use crate::config::CpuAffinity;

/// The CPU each of `threads` request threads is pinned to, in thread
/// order, or `None` to leave them to the scheduler. `allowed` is the
/// process's CPU set in ascending order.
pub fn plan(mode: CpuAffinity, threads: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    match mode {
        CpuAffinity::Off => None,
        CpuAffinity::Auto => (threads > 1 && threads == allowed.len()).then(|| allowed.to_vec()),
    }
}

/// The CPUs this process may run on, ascending (empty if unknown).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit array, zeroed, of the size passed; the
    // kernel writes at most that many bytes; CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The CPUs this process may run on (unknown off Linux: no pinning).
#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pin the calling thread to `cpu`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: as in `allowed_cpus`; `cpu` is below CPU_SETSIZE, so
    // CPU_SET writes inside `set`; pid 0 is the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Pinning is Linux-only here.
#[cfg(not(target_os = "linux"))]
pub fn pin_current(_cpu: usize) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pins_one_thread_per_allowed_cpu_and_nothing_else() {
        let allowed = [2, 3, 5];
        assert_eq!(plan(CpuAffinity::Auto, 3, &allowed), Some(vec![2, 3, 5]));
        assert_eq!(plan(CpuAffinity::Auto, 2, &allowed), None, "fewer threads");
        assert_eq!(plan(CpuAffinity::Auto, 4, &allowed), None, "more threads");
        assert_eq!(
            plan(CpuAffinity::Auto, 1, &[0]),
            None,
            "one CPU: nothing to gain"
        );
        assert_eq!(plan(CpuAffinity::Auto, 2, &[]), None, "CPU set unknown");
        assert_eq!(plan(CpuAffinity::Off, 3, &allowed), None);
    }

    #[test]
    fn the_allowed_set_is_known_here_and_a_thread_can_be_pinned_to_it() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        assert!(allowed.windows(2).all(|w| w[0] < w[1]));
        let cpu = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current(cpu).unwrap();
            assert_eq!(allowed_cpus(), vec![cpu]);
        })
        .join()
        .unwrap();
        assert!(pin_current(usize::MAX).is_err());
    }
}
