//! `GET {base}/spot/candlesticks` with Gate.io's rules applied: HTTP 429 and an exhausted
//! `X-Gate-RateLimit-Requests-Remain` wait until `X-Gate-RateLimit-Reset-Timestamp` (or
//! `Retry-After`, or a jittered backoff); 5xx, timeouts and broken connections are retried with
//! backoff, up to `max_attempts` per request, the backoff growing (to its cap) across requests
//! until one succeeds, and only a success logs a recovery; any other error answer is permanent and reported with the body's `label` and
//! `message`, and says whether it refuses the pair itself (unknown or delisted: the other pairs
//! may still work) or the request as a whole.

use std::sync::Arc;
use std::time::Duration;

use engine::{Error, Result, Retry};
use hyper::StatusCode;
use serde::Deserialize;

use super::candles::{Candle, parse_rows};
use super::config::{Interval, Settings};
use super::poller::Counters;
use crate::common::backoff::Backoff;
use crate::common::counters::add;
use crate::common::excerpt::excerpt;
use crate::common::http::{HttpClient, Response};

/// 429s in a row that are waited out before the request fails.
const MAX_RATE_LIMITED_WAITS: u32 = 20;
/// The longest wait a rate-limit header can impose.
pub(crate) const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Gate.io's error body. `label` is the stable key; the text is in `message` or `detail`.
#[derive(Debug, Deserialize)]
struct ApiError {
    label: Option<String>,
    message: Option<String>,
    detail: Option<String>,
}

/// Labels that say the currency pair itself does not exist (any more).
const PAIR_LABELS: [&str; 2] = ["INVALID_CURRENCY_PAIR", "INVALID_CURRENCY"];

/// A failed request.
#[derive(Debug)]
pub struct Failure {
    /// What failed, with whether retrying may help.
    pub error: Error,
    /// The answer refuses the pair itself (permanent for this pair only).
    pub pair_refused: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            error,
            pair_refused: false,
        }
    }
}

/// One candlesticks request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The pair.
    pub pair: &'a str,
    /// The interval.
    pub interval: Interval,
    /// First window start (unix s).
    pub from: i64,
    /// Last window start (unix s); at most 999 intervals after `from`.
    pub to: i64,
}

/// The REST client and its view of the rate limit.
pub struct GateClient {
    http: HttpClient,
    base_url: String,
    max_attempts: u32,
    backoff: Backoff,
    /// Unix time (s) before which no request should go out: the limit is exhausted.
    blocked_until: Option<f64>,
    /// Transient failures since the last success, across requests: the backoff keeps growing
    /// (up to its cap) and the count keeps counting until a request succeeds.
    failures_since_success: u32,
    counters: Arc<Counters>,
}

impl GateClient {
    /// A client for `settings.base_url`.
    pub fn new(settings: &Settings, counters: Arc<Counters>) -> Self {
        Self {
            http: HttpClient::new(settings.request_timeout),
            base_url: settings.base_url.clone(),
            max_attempts: settings.max_attempts,
            backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
            blocked_until: None,
            failures_since_success: 0,
            counters,
        }
    }

    fn error(&self, message: String, retry: Retry) -> Error {
        Error::Source {
            name: format!("gateio {}", self.base_url),
            message,
            retry,
            source: None,
        }
    }

    /// The rows of one request (each row parsed on its own).
    pub async fn candlesticks(
        &mut self,
        r: Request<'_>,
    ) -> std::result::Result<Vec<Result<Candle, String>>, Failure> {
        let url = format!(
            "{}/spot/candlesticks?currency_pair={}&interval={}&from={}&to={}",
            self.base_url,
            r.pair,
            r.interval.name(),
            r.from,
            r.to
        );
        // A request after one that gave up waits first, as a retry would: back to back, the
        // requests of a live schedule would hammer an API that is down.
        if self.failures_since_success > 0 {
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        loop {
            if let Some(until) = self.blocked_until.take() {
                let wait = secs_until(until).min(MAX_RATE_LIMIT_WAIT);
                if !wait.is_zero() {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "Rate limit exhausted; waiting for its reset."
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            add(&self.counters.requests, 1);
            let transient = match self.http.get(&url).await {
                Err(e) if e.retry() == Retry::Permanent => {
                    return Err(self
                        .error(engine::report(&e).to_string(), Retry::Permanent)
                        .into());
                }
                Err(e) => engine::report(&e).to_string(),
                Ok(response) => {
                    self.note_rate_limit(&response);
                    let status = response.status;
                    if status.is_success() {
                        self.succeeded();
                        return parse_rows(&response.body).map_err(|e| {
                            self.error(
                                format!("GET {url}: {e}: {}", excerpt(&response.body)),
                                Retry::Transient,
                            )
                            .into()
                        });
                    }
                    let described = describe(&url, &response);
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        add(&self.counters.rate_limited, 1);
                        rate_limited += 1;
                        if rate_limited > MAX_RATE_LIMITED_WAITS {
                            return Err(self
                                .error(
                                    format!("{described} ({rate_limited} times in a row)"),
                                    Retry::Transient,
                                )
                                .into());
                        }
                        let wait = rate_limit_wait(&response).max(self.backoff.next_delay());
                        tracing::warn!(
                            error = %described,
                            wait_ms = wait.as_millis() as u64,
                            "Gate.io rate limit hit; waiting."
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    add(&self.counters.errors, 1);
                    if !(status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT) {
                        return Err(Failure {
                            error: self.error(described, Retry::Permanent),
                            pair_refused: refuses_pair(&response, r.pair),
                        });
                    }
                    described
                }
            };
            failures += 1;
            self.failures_since_success += 1;
            if failures >= self.max_attempts {
                tracing::warn!(
                    error = %transient,
                    attempt = failures,
                    max_attempts = self.max_attempts,
                    failures_since_success = self.failures_since_success,
                    "Gate.io request failed; giving up on it."
                );
                return Err(self
                    .error(
                        format!("{transient} (gave up after {failures} attempts)"),
                        Retry::Transient,
                    )
                    .into());
            }
            add(&self.counters.retries, 1);
            let wait = self.backoff.next_delay();
            tracing::warn!(
                error = %transient,
                attempt = failures,
                max_attempts = self.max_attempts,
                failures_since_success = self.failures_since_success,
                retry_in_ms = wait.as_millis() as u64,
                "Gate.io request failed; retrying."
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// A request succeeded: the backoff starts over. Only here is a recovery logged, never
    /// merely because a retry is due.
    fn succeeded(&mut self) {
        if self.failures_since_success > 0 {
            tracing::info!(
                failures = self.failures_since_success,
                "Gate.io request succeeded again after failed attempts."
            );
        }
        self.failures_since_success = 0;
        self.backoff.reset();
    }

    /// Remembers an exhausted limit, so the next request waits for its reset.
    fn note_rate_limit(&mut self, response: &Response) {
        let remaining = response
            .header("x-gate-ratelimit-requests-remain")
            .and_then(|v| v.trim().parse::<i64>().ok());
        if remaining.is_some_and(|r| r <= 0)
            && let Some(reset) = reset_timestamp(response)
        {
            self.blocked_until = Some(reset);
        }
    }
}

/// `"GET url: 400 Bad Request INVALID_CURRENCY_PAIR: <message>"`, or the body's excerpt when it
/// is not Gate.io's error object.
pub(crate) fn describe(url: &str, response: &Response) -> String {
    let status = response.status;
    match serde_json::from_slice::<ApiError>(&response.body) {
        Ok(ApiError {
            label: Some(label),
            message,
            detail,
        }) => format!(
            "GET {url}: {status} {label}: {}",
            message.or(detail).unwrap_or_default()
        ),
        _ => format!("GET {url}: {status}: {}", excerpt(&response.body)),
    }
}

/// Whether an error answer refuses `pair` itself: its label says the pair (or its currency) is
/// invalid, or it is `INVALID_PARAM_VALUE` and its text names the pair as the bad value. Other
/// refusals (a range too broad or too long ago, credentials) would fail every pair alike.
fn refuses_pair(response: &Response, pair: &str) -> bool {
    let Ok(ApiError {
        label: Some(label),
        message,
        detail,
    }) = serde_json::from_slice::<ApiError>(&response.body)
    else {
        return false;
    };
    if PAIR_LABELS.contains(&label.as_str()) {
        return true;
    }
    label == "INVALID_PARAM_VALUE"
        && [message, detail].into_iter().flatten().any(|text| {
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word.eq_ignore_ascii_case(pair))
        })
}

/// The reset time (unix seconds, fractional) from `X-Gate-RateLimit-Reset-Timestamp`, which is
/// documented loosely: values above 10^12 are taken as milliseconds.
fn reset_timestamp(response: &Response) -> Option<f64> {
    let value = response
        .header("x-gate-ratelimit-reset-timestamp")?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(if value > 1e12 { value / 1000.0 } else { value })
}

/// How long a 429 asks to wait: `Retry-After` seconds, else until the reset timestamp.
pub(crate) fn rate_limit_wait(response: &Response) -> Duration {
    let wait = match response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        // Capped before converting: `Duration::from_secs_f64` panics on a value past its range
        // (a `Retry-After` of 1e28 crashed the poller; found by the gateio_responses fuzz target).
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::from_secs_f64(secs.min(MAX_RATE_LIMIT_WAIT.as_secs_f64()))
        }
        _ => reset_timestamp(response).map_or(Duration::ZERO, secs_until),
    };
    wait.min(MAX_RATE_LIMIT_WAIT)
}

fn secs_until(unix_secs: f64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let left = unix_secs - now;
    if left.is_finite() && left > 0.0 {
        Duration::from_secs_f64(left.min(MAX_RATE_LIMIT_WAIT.as_secs_f64()))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::HeaderMap;

    fn response(status: u16, headers: &[(&'static str, &str)], body: &str) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: body.to_owned().into(),
        }
    }

    #[test]
    fn reports_the_label_and_message_of_an_error_body() {
        let r = response(
            400,
            &[],
            r#"{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair FOO_BAR"}"#,
        );
        assert_eq!(
            describe("u", &r),
            "GET u: 400 Bad Request INVALID_CURRENCY_PAIR: Invalid currency pair FOO_BAR"
        );
        let r = response(502, &[], "<html>bad gateway</html>");
        assert_eq!(
            describe("u", &r),
            "GET u: 502 Bad Gateway: <html>bad gateway</html>"
        );
    }

    #[test]
    fn tells_a_refused_pair_from_a_refused_request() {
        let refused = |body: &str| refuses_pair(&response(400, &[], body), "FOO_BAR");
        assert!(refused(
            r#"{"label":"INVALID_CURRENCY_PAIR","message":"Invalid currency pair FOO_BAR"}"#
        ));
        assert!(refused(
            r#"{"label":"INVALID_CURRENCY","message":"Invalid currency FOO"}"#
        ));
        assert!(refused(
            r#"{"label":"INVALID_PARAM_VALUE","message":"Invalid parameter currency_pair with value: FOO_BAR"}"#
        ));
        assert!(!refused(
            r#"{"label":"INVALID_PARAM_VALUE","message":"Candlestick too long ago. Maximum 10000 points ago are allowed"}"#
        ));
        assert!(!refused(
            r#"{"label":"INVALID_KEY","message":"Invalid key provided"}"#
        ));
        assert!(!refused("<html>bad request</html>"));
    }

    #[test]
    fn waits_as_long_as_the_rate_limit_headers_say() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let reset = format!("{}", (now + 3.0) as i64);
        let wait = rate_limit_wait(&response(
            429,
            &[("x-gate-ratelimit-reset-timestamp", &reset)],
            "",
        ));
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(3),
            "{wait:?}"
        );
        let reset_ms = format!("{}", ((now + 3.0) * 1000.0) as i64);
        let wait = rate_limit_wait(&response(
            429,
            &[("x-gate-ratelimit-reset-timestamp", &reset_ms)],
            "",
        ));
        assert!(
            wait > Duration::from_secs(1),
            "milliseconds are understood: {wait:?}"
        );
        assert_eq!(
            rate_limit_wait(&response(429, &[("retry-after", "2")], "")),
            Duration::from_secs(2)
        );
        assert_eq!(
            rate_limit_wait(&response(429, &[("retry-after", "100000")], "")),
            MAX_RATE_LIMIT_WAIT
        );
    }

    #[test]
    fn a_retry_after_past_durations_range_waits_the_cap_instead_of_panicking() {
        // Found by the gateio_responses fuzz target (fuzz/corpus/gateio_responses/regression-*).
        for huge in ["9999999999999999999999999999", "1e300", "1.7e308"] {
            assert_eq!(
                rate_limit_wait(&response(429, &[("retry-after", huge)], "")),
                MAX_RATE_LIMIT_WAIT,
                "{huge}"
            );
        }
        for nonsense in ["-5", "inf", "NaN", "soon"] {
            assert_eq!(
                rate_limit_wait(&response(429, &[("retry-after", nonsense)], "")),
                Duration::ZERO,
                "{nonsense}"
            );
        }
    }
}
