//! When micro-batches run, as Spark's triggers.

use std::time::Duration;

use crate::error::{Error, Result};

/// The default processing-time interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// The longest processing-time interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// When the next micro-batch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A batch every interval (a batch that takes longer is followed at once by the next).
    ProcessingTime(Duration),
    /// Process everything available at start in batches of at most the record cap, then stop.
    AvailableNow,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::ProcessingTime(DEFAULT_INTERVAL)
    }
}

impl std::str::FromStr for Trigger {
    type Err = Error;

    /// Parses `available-now` or `interval:<n>ms|s|m` (e.g. `interval:500ms`).
    fn from_str(text: &str) -> Result<Self> {
        if text == "available-now" {
            return Ok(Trigger::AvailableNow);
        }
        let bad = || {
            Error::config(
                "trigger",
                format!(
                    "{text:?} is not available-now or interval:<n>ms|s|m (e.g. interval:500ms)"
                ),
            )
        };
        let spec = text.strip_prefix("interval:").ok_or_else(bad)?;
        let (digits, unit) = spec.split_at(
            spec.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(spec.len()),
        );
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let interval = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            // Checked: `interval:999999999999999999m` overflowed (a panic in debug builds).
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        // The runtime adds the interval to the clock for each tick: one past the clock's range
        // would panic there, long after the config was accepted.
        if interval > MAX_INTERVAL {
            return Err(Error::config(
                "trigger",
                format!("{text:?} is longer than the longest interval, 24 hours"),
            ));
        }
        Ok(Trigger::ProcessingTime(interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triggers() {
        assert_eq!(
            "available-now".parse::<Trigger>().unwrap(),
            Trigger::AvailableNow
        );
        assert_eq!(
            "interval:500ms".parse::<Trigger>().unwrap(),
            Trigger::ProcessingTime(Duration::from_millis(500))
        );
        assert_eq!(
            "interval:2s".parse::<Trigger>().unwrap(),
            Trigger::ProcessingTime(Duration::from_secs(2))
        );
        assert!(
            "interval:fast"
                .parse::<Trigger>()
                .unwrap_err()
                .to_string()
                .contains("interval:500ms")
        );
        assert!("interval:5h".parse::<Trigger>().is_err());
    }

    #[test]
    fn refuses_intervals_past_a_day_instead_of_overflowing() {
        assert_eq!(
            "interval:1440m".parse::<Trigger>().unwrap(),
            Trigger::ProcessingTime(MAX_INTERVAL)
        );
        for text in [
            "interval:1441m",
            "interval:999999999999999999m",
            "interval:18446744073709551615s",
            "interval:18446744073709551615ms",
        ] {
            let err = text.parse::<Trigger>().unwrap_err().to_string();
            assert!(err.contains(text), "{err}");
        }
    }
}
