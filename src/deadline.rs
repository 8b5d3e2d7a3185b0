//! Deadlines, and turning them into poll/epoll timeouts. Every wait in the
//! program sleeps in the kernel until an event or its deadline; this is the
//! one place that computes how long.

use std::time::{Duration, Instant};

use nix::poll::PollTimeout;
use nix::sys::epoll::EpollTimeout;

/// `from + wait`, saturating far in the future instead of panicking on
/// overflow (a huge `Duration` in a public option struct).
pub fn after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait)
        .or_else(|| from.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(from)
}

/// `now + wait`, saturating.
pub fn in_(wait: Duration) -> Instant {
    after(Instant::now(), wait)
}

/// Milliseconds left until `deadline`, rounded **up**: a sub-millisecond
/// remainder is 1 ms, never 0, since a 0 ms timeout returns at once and a
/// loop around it spins until the deadline. 0 only once it has passed.
pub fn remaining_ms(deadline: Instant) -> i32 {
    ms_ceil(deadline.saturating_duration_since(Instant::now()))
}

fn ms_ceil(left: Duration) -> i32 {
    left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
}

/// [`remaining_ms`] as a poll(2) timeout.
pub fn poll_timeout(deadline: Instant) -> PollTimeout {
    PollTimeout::try_from(remaining_ms(deadline)).unwrap_or(PollTimeout::MAX)
}

/// [`remaining_ms`] as an epoll_wait(2) timeout.
pub fn epoll_timeout(deadline: Instant) -> EpollTimeout {
    EpollTimeout::try_from(remaining_ms(deadline)).unwrap_or(EpollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_millisecond_remainder_rounds_up_not_to_zero() {
        assert_eq!(ms_ceil(Duration::from_micros(1)), 1);
        assert_eq!(ms_ceil(Duration::from_micros(999)), 1);
        assert_eq!(ms_ceil(Duration::from_micros(1001)), 2);
        assert_eq!(ms_ceil(Duration::ZERO), 0);
    }

    #[test]
    fn passed_deadline_is_zero_and_far_one_is_clamped() {
        let now = Instant::now();
        assert_eq!(remaining_ms(now - Duration::from_millis(5)), 0);
        assert_eq!(ms_ceil(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn huge_wait_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
    }
}
