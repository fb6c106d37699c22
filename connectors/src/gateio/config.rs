//! `[source] type = "gateio"` (`pipelines/ingest-gateio.toml`, whose keys the flags of
//! `coinstream ingest gateio` override): the raw struct and [`Settings`], the validated form, with
//! every problem reported at once. Validation reads the portfolio when the pairs come from it.

use std::path::PathBuf;
use std::time::Duration;

use engine::Result;
use serde::Deserialize;

use crate::common::config::{self, Problem};

/// The public REST API's base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.gateio.ws/api/v4";

/// The API's limit on points per request (`limit`, or the span of `from`..`to`).
pub const MAX_POINTS_PER_REQUEST: i64 = 1000;

/// A candle interval the REST API accepts. `30d` (calendar months, uneven windows) is not
/// supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    name: &'static str,
    secs: i64,
}

const INTERVALS: &[(&str, i64)] = &[
    ("1s", 1),
    ("10s", 10),
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("30m", 1_800),
    ("1h", 3_600),
    ("4h", 14_400),
    ("8h", 28_800),
    ("1d", 86_400),
    ("7d", 604_800),
];

impl Interval {
    /// The interval named `name` (`1m`, `1h`, …).
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        INTERVALS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(name, secs)| Interval { name, secs: *secs })
            .ok_or_else(|| {
                let valid: Vec<&str> = INTERVALS.iter().map(|(n, _)| *n).collect();
                format!(
                    "{name:?} is not an interval; valid intervals are {}",
                    valid.join(", ")
                )
            })
    }

    /// The API's name of the interval.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its length in seconds.
    pub fn secs(&self) -> i64 {
        self.secs
    }
}

/// `[source] type = "gateio"`: the poller's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateioConfig {
    /// The REST API's base URL. Default [`DEFAULT_BASE_URL`].
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Currency pairs, `BASE_QUOTE` (e.g. `BTC_USDT`). Default: each product `X-USD` of
    /// `portfolio` as `X_USDT` (other quotes as they are).
    #[serde(default)]
    pub currency_pairs: Vec<String>,
    /// The portfolio file whose products give the pairs when `currency_pairs` is empty, relative
    /// to the config file.
    #[serde(default, deserialize_with = "config::optional_path")]
    pub portfolio: Option<PathBuf>,
    /// The candle interval. Default `1m`.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Backfill windows starting at or after this time (unix seconds). Default: none (poll live).
    pub from_secs: Option<i64>,
    /// Backfill windows starting at or before this time (unix seconds); needs `from_secs`.
    /// Default: now, then keep polling live (unless `once`).
    pub to_secs: Option<i64>,
    /// Poll once (or backfill once) and stop. Default false.
    #[serde(default)]
    pub once: bool,
    /// The first live poll fetches this many windows before the current one. Default 100 (the
    /// API's default).
    #[serde(default = "default_lookback_windows")]
    pub lookback_windows: u32,
    /// How long after a window closes it is fetched, in milliseconds (the API marks it closed a
    /// moment after the boundary). Default 2000.
    #[serde(default = "default_poll_delay_ms")]
    pub poll_delay_ms: u64,
    /// A request without a complete response after this many milliseconds fails (and is
    /// retried). Default 10000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Attempts per request on transient failures (5xx, timeouts, broken connections) before the
    /// poll fails: a bounded run (`once`, `to_secs`, available-now) then ends with an error naming
    /// the URL and the reason; a live schedule logs it and keeps trying, the pause growing to
    /// `retry_backoff_max_ms` until a request succeeds. HTTP 429 is waited out and does not use
    /// up attempts. Default 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first pause before a retry, in milliseconds; it doubles (with jitter). Default 500.
    #[serde(default = "default_retry_backoff_initial_ms")]
    pub retry_backoff_initial_ms: u64,
    /// The longest pause before a retry, in milliseconds. Default 30000.
    #[serde(default = "default_retry_backoff_max_ms")]
    pub retry_backoff_max_ms: u64,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}

fn default_interval() -> String {
    "1m".into()
}

fn default_lookback_windows() -> u32 {
    100
}

fn default_poll_delay_ms() -> u64 {
    2_000
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_max_attempts() -> u32 {
    5
}

fn default_retry_backoff_initial_ms() -> u64 {
    500
}

fn default_retry_backoff_max_ms() -> u64 {
    30_000
}

impl GateioConfig {
    /// A config for `currency_pairs` with every default.
    pub fn new(currency_pairs: Vec<String>) -> Self {
        Self {
            base_url: default_base_url(),
            currency_pairs,
            portfolio: None,
            interval: default_interval(),
            from_secs: None,
            to_secs: None,
            once: false,
            lookback_windows: default_lookback_windows(),
            poll_delay_ms: default_poll_delay_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_attempts: default_max_attempts(),
            retry_backoff_initial_ms: default_retry_backoff_initial_ms(),
            retry_backoff_max_ms: default_retry_backoff_max_ms(),
        }
    }

    /// Checks the config; every problem is reported in one [`Error::Config`] naming `source`.
    pub fn validate(&self) -> Result<Settings> {
        self.settings()
            .map_err(|problems| Problem::into_error("source", problems))
    }

    /// Checks the config and reads the portfolio when the pairs come from it: the settings, or
    /// every problem (keys relative to the section).
    pub fn settings(&self) -> std::result::Result<Settings, Vec<Problem>> {
        let mut problems: Vec<Problem> = Vec::new();
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        match base_url.parse::<hyper::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => problems.push(Problem::new(
                "base_url",
                format!("{:?} is not an http:// or https:// URL", self.base_url),
            )),
        }
        let mut pairs = Vec::new();
        let configured = match (self.currency_pairs.is_empty(), &self.portfolio) {
            (true, Some(path)) => pairs_of_portfolio(path).unwrap_or_else(|e| {
                problems.push(Problem::new("portfolio", e));
                Vec::new()
            }),
            _ => self.currency_pairs.clone(),
        };
        for pair in &configured {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            };
            match pair.split_once('_') {
                Some((base, quote)) if ok(base) && ok(quote) => {
                    if !pairs.contains(pair) {
                        pairs.push(pair.clone());
                    }
                }
                _ => problems.push(Problem::new(
                    "currency_pairs",
                    format!("{pair:?} is not a currency pair; expected BASE_QUOTE, e.g. BTC_USDT"),
                )),
            }
        }
        if configured.is_empty() && problems.is_empty() {
            problems.push(Problem::new(
                "currency_pairs",
                "must name at least one pair (or set portfolio to a file with products)",
            ));
        }
        let interval = Interval::parse(&self.interval).unwrap_or_else(|e| {
            problems.push(Problem::new("interval", e));
            Interval::parse("1m").expect("1m is in the interval table")
        });
        match (self.from_secs, self.to_secs) {
            (None, Some(_)) => problems.push(Problem::new(
                "to_secs",
                "a backfill end needs a start (from_secs)",
            )),
            (Some(from), Some(to)) if from > to => problems.push(Problem::new(
                "from_secs",
                format!("{from} is after to_secs ({to})"),
            )),
            (Some(from), _) if from < 0 => {
                problems.push(Problem::new("from_secs", format!("{from} is before 1970")))
            }
            _ => {}
        }
        if self.lookback_windows == 0 {
            problems.push(Problem::new("lookback_windows", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            problems.push(Problem::new("max_attempts", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            problems.push(Problem::new("request_timeout_ms", "must be at least 1"));
        }
        problems.extend(config::backoff_order(
            ("retry_backoff_initial_ms", self.retry_backoff_initial_ms),
            ("retry_backoff_max_ms", self.retry_backoff_max_ms),
        ));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Settings {
            base_url,
            pairs,
            interval,
            from: self.from_secs,
            to: self.to_secs,
            once: self.once,
            lookback_windows: i64::from(self.lookback_windows),
            poll_delay: Duration::from_millis(self.poll_delay_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_attempts: self.max_attempts,
            backoff_initial: Duration::from_millis(self.retry_backoff_initial_ms),
            backoff_max: Duration::from_millis(self.retry_backoff_max_ms),
        })
    }
}

/// Gate.io pairs for the portfolio's products: `X-USD` is traded there as `X_USDT`.
fn pairs_of_portfolio(path: &std::path::Path) -> std::result::Result<Vec<String>, String> {
    let portfolio =
        crate::common::reference_files::read_portfolio(path).map_err(|e| e.to_string())?;
    let pairs: Vec<String> = portfolio
        .keys()
        .filter_map(|product| {
            let (base, quote) = product.split_once('-')?;
            let quote = if quote == "USD" { "USDT" } else { quote };
            Some(format!("{base}_{quote}"))
        })
        .collect();
    if pairs.is_empty() {
        return Err(format!(
            "{} has no products; set currency_pairs",
            path.display()
        ));
    }
    Ok(pairs)
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing `/`.
    pub base_url: String,
    /// Distinct, well-formed pairs; at least one.
    pub pairs: Vec<String>,
    /// The interval.
    pub interval: Interval,
    /// Backfill start (unix s), if any.
    pub from: Option<i64>,
    /// Backfill end (unix s), if any; only with `from`, and not before it.
    pub to: Option<i64>,
    /// One poll or backfill, then stop.
    pub once: bool,
    /// Windows the first live poll reaches back; at least 1.
    pub lookback_windows: i64,
    /// Pause after a window boundary before polling.
    pub poll_delay: Duration,
    /// Limit per request.
    pub request_timeout: Duration,
    /// Attempts per request on transient failures; at least 1.
    pub max_attempts: u32,
    /// First retry pause.
    pub backoff_initial: Duration,
    /// Longest retry pause.
    pub backoff_max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_defaults() {
        let s = GateioConfig::new(vec!["BTC_USDT".into(), "BTC_USDT".into()])
            .validate()
            .unwrap();
        assert_eq!(s.base_url, DEFAULT_BASE_URL);
        assert_eq!(s.pairs, ["BTC_USDT"]);
        assert_eq!((s.interval.name(), s.interval.secs()), ("1m", 60));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut c = GateioConfig::new(vec!["btc-usdt".into()]);
        c.base_url = "ftp://x".into();
        c.interval = "30d".into();
        c.from_secs = Some(100);
        c.to_secs = Some(50);
        c.max_attempts = 0;
        let err = c.validate().unwrap_err().to_string();
        for expected in [
            "base_url: \"ftp://x\" is not an http:// or https:// URL",
            "currency_pairs: \"btc-usdt\" is not a currency pair",
            "interval: \"30d\" is not an interval; valid intervals are 1s, 10s, 1m",
            "from_secs: 100 is after to_secs (50)",
            "max_attempts: must be at least 1",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }
}
