//! Thread priorities for work off the part's path: what does not decide a part runs nicer
//! than the stages, so that on a small CPU it takes what the engine leaves.

/// How much nicer than the stages the threads off the part's path run (the network runtime,
/// the archive writer). At the stages' own priority, fifty OPC UA clients of ten
/// subscriptions took a fifth of the line's CPU and a tenth of its in-time parts at 0.8 x the
/// engine's rate (`scripts/bench-opcua`); 10 nicer, the scheduler gives them about a tenth of a
/// busy CPU, the parts keep their time, and work beyond that waits in bounded, counted queues.
/// At 19 the OPC UA server starved: connections timed out.
pub const NICER_BY: libc::c_int = 10;

/// The calling thread's nice value (Linux's nice is per thread).
pub fn nice_of_this_thread() -> libc::c_int {
    // SAFETY: no pointers; errno is reset first, as -1 is also a valid priority.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    }
}

/// Lower the calling thread's priority by [`NICER_BY`] (a new thread starts at its
/// creator's); `who` names it in the warning if the kernel refuses.
pub fn lower_this_thread(who: &str) {
    let nice = (nice_of_this_thread() + NICER_BY).min(19);
    // SAFETY: no pointers; failure only leaves the priority as it was.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        log::warn!(
            "{who}: could not lower its threads' priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_nicer_by_ten() {
        let before = nice_of_this_thread();
        let after = std::thread::spawn(|| {
            lower_this_thread("test");
            nice_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + NICER_BY).min(19));
        assert_eq!(
            nice_of_this_thread(),
            before,
            "the caller's own priority is untouched"
        );
    }
}
