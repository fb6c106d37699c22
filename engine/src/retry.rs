//! The one retry policy: exponential backoff with jitter. The runtime applies it to every
//! operation of a source or sink that fails with [`Retry::Transient`](crate::Retry) (see
//! [`retry_transient`]); connectors only classify their failures, they do not sleep and retry
//! themselves. The one exception, the Coinbase feed client's reconnect loop (it keeps trade-id
//! state across connections), takes its delays from a [`Backoff`] too.
//!
//! Jitter spreads the retries of many clients (or many pairs) that failed together, so they do
//! not all hit the service again in the same instant.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::error::{Error, Result, report};

/// The runtime's first pause after a transient failure.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);

/// The runtime's longest pause between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Delays that double from `initial` up to `max`; each delay is drawn uniformly from the upper
/// half of its ceiling (`[d/2, d]`), so a retry never comes much sooner than the schedule says.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Default for Backoff {
    /// The runtime's policy: from [`INITIAL_DELAY`] up to [`MAX_DELAY`].
    fn default() -> Self {
        Self::new(INITIAL_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    /// A backoff starting at `initial` and capped at `max` (`max` below `initial` is raised to it).
    pub fn new(initial: Duration, max: Duration) -> Self {
        // Jitter needs no cryptographic randomness, only a different seed per process and
        // backoff: std's per-instance random hasher keys provide one without OS-RNG features.
        use std::hash::{BuildHasher, Hasher};
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling_ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
        if ceiling_ms < 2 {
            return ceiling;
        }
        Duration::from_millis(self.rng.random_range(ceiling_ms / 2..=ceiling_ms))
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over at `initial` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs `op` until it succeeds, fails permanently (that error is returned), or `shutdown` turns
/// true while it is failing transiently (then [`Error::Stopped`], whose source is the last
/// failure: the batch stays uncommitted and is replayed on restart). Between attempts it waits as
/// `backoff` says; `what` names the operation in logs.
///
/// `op` is called afresh for each attempt, so it may borrow the caller's fields mutably
/// (`async || self.sink.write(id, &rows).await`).
///
/// # Errors
/// The first error that is not [`Error::is_transient`], or [`Error::Stopped`].
pub async fn retry_transient<T>(
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    mut op: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    backoff.reset();
    loop {
        match op().await {
            Ok(value) => {
                let failures = backoff.attempts();
                if failures > 0 {
                    tracing::info!(what, failures, "Recovered after transient failures.");
                }
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(what, error = %report(&e), failures = backoff.attempts(),
                    retry_in_ms = delay.as_millis() as u64,
                    "Transient failure; nothing is committed until it succeeds.");
                tokio::select! {
                    _ = shutdown.changed() => {
                        return Err(Error::Stopped { what: what.to_owned(), source: Box::new(e) });
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::error::Retry;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for ceiling in [100u64, 200, 400, 800, 1000, 1000, 1000] {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&d),
                "{d} ms not in [{}, {ceiling}]",
                ceiling / 2
            );
        }
        assert_eq!(b.attempts(), 7);
        b.reset();
        assert_eq!(b.attempts(), 0);
        let first = b.next_delay();
        assert!(
            (Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first),
            "{first:?}"
        );
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn jitter_spreads_delays_over_the_upper_half() {
        let (mut low, mut high) = (u64::MAX, 0);
        for _ in 0..200 {
            let d = Backoff::new(Duration::from_millis(1000), Duration::from_secs(5))
                .next_delay()
                .as_millis() as u64;
            low = low.min(d);
            high = high.max(d);
        }
        // 200 uniform draws over [500, 1000] all landing in one 100 ms band is odds of 5^-199.
        assert!((500..=1000).contains(&low) && (500..=1000).contains(&high));
        assert!(
            high - low > 100,
            "no jitter: all delays in [{low}, {high}] ms"
        );
    }

    #[test]
    fn never_overflows_after_many_attempts() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
        let mut raised = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(
            raised.next_delay() <= Duration::from_secs(2),
            "max raised to initial"
        );
    }

    #[test]
    fn the_runtime_policy_starts_at_100_ms_and_caps_at_5_s() {
        let mut b = Backoff::default();
        assert!(b.next_delay() <= INITIAL_DELAY);
        for _ in 0..20 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!((MAX_DELAY / 2..=MAX_DELAY).contains(&capped), "{capped:?}");
    }

    fn failing(retry: Retry) -> Error {
        Error::sink_failed("memory", "scripted failure", retry)
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success() {
        let (_tx, mut rx) = watch::channel(false);
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(4));
        let mut calls = 0;
        let got = retry_transient(&mut backoff, &mut rx, "write", async || {
            calls += 1;
            if calls < 4 {
                Err(failing(Retry::Transient))
            } else {
                Ok(calls)
            }
        })
        .await
        .unwrap();
        assert_eq!((got, calls), (4, 4));
    }

    #[tokio::test]
    async fn a_permanent_failure_is_returned_at_once() {
        let (_tx, mut rx) = watch::channel(false);
        let mut backoff = Backoff::default();
        let mut calls = 0;
        let err = retry_transient(&mut backoff, &mut rx, "write", async || {
            calls += 1;
            Err::<(), _>(failing(Retry::Permanent))
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(
            !err.is_transient() && err.to_string().contains("scripted failure"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_the_retries_with_the_last_failure_as_source() {
        let (tx, mut rx) = watch::channel(false);
        let mut backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let started = Instant::now();
        let retrying = retry_transient(&mut backoff, &mut rx, "sink write", async || {
            Err::<(), _>(failing(Retry::Transient))
        });
        let stop = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(true).unwrap();
        };
        let (err, ()) = tokio::join!(retrying, stop);
        let err = err.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not wait out the backoff"
        );
        assert!(
            matches!(err, Error::Stopped { ref what, .. } if what == "sink write"),
            "{err:?}"
        );
        assert!(
            report(&err)
                .to_string()
                .ends_with(": sink memory: scripted failure"),
            "{}",
            report(&err)
        );
    }
}
