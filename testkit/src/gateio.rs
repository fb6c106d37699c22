//! The one Gate.io REST v4 stand-in, on hyper's HTTP/1.1 server (keep-alive, no hand-parsed
//! requests), speaking `GET /api/v4/spot/candlesticks` in its exact formats
//! (`../shared/exchange-formats.md` §3): rows of strings in `[t, quote volume, close, high, low,
//! open, base volume, closed]` order, rate-limit headers on every answer, errors as
//! `{"label": …, "message": …}`. What it answers is the test's [`Handler`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The path, e.g. `/api/v4/spot/candlesticks`.
    pub path: String,
    /// The query parameters, percent-decoded.
    pub query: BTreeMap<String, String>,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// Query parameter `key` as an integer (`from`, `to`, `limit`); panics when it is missing or
    /// not one, naming the request.
    pub fn query_i64(&self, key: &str) -> i64 {
        self.query
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("request {self:?} has no integer `{key}`"))
    }
}

/// An answer: status, extra headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// Headers besides `content-type: application/json` and `content-length`.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
}

impl Reply {
    /// A 200 with `body` and the rate-limit headers of a request well within the limit.
    pub fn json(body: String) -> Self {
        Reply {
            status: 200,
            headers: rate_limit_headers(199, now_secs()),
            body,
        }
    }

    /// An error answer in Gate.io's shape: `{"label": label, "message": message}`.
    pub fn error(status: u16, label: &str, message: &str) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: serde_json::json!({ "label": label, "message": message }).to_string(),
        }
    }

    /// A 429 whose rate-limit headers say the limit resets at unix second `reset`.
    pub fn too_many_requests(reset: i64) -> Self {
        Reply {
            status: 429,
            headers: rate_limit_headers(0, reset),
            ..Reply::error(429, "TOO_MANY_REQUESTS", "Request Rate limit Exceeded")
        }
    }
}

fn rate_limit_headers(remain: u32, reset: i64) -> Vec<(String, String)> {
    vec![
        (
            "X-Gate-RateLimit-Requests-Remain".into(),
            remain.to_string(),
        ),
        ("X-Gate-RateLimit-Limit".into(), "200".into()),
        ("X-Gate-RateLimit-Reset-Timestamp".into(), reset.to_string()),
    ]
}

/// Answers request number `n` (from 0, across connections).
pub type Handler = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

/// A running stand-in; it stops with the test's runtime.
pub struct RestServer {
    /// `http://127.0.0.1:<port>/api/v4`, the `base_url` of the Gate.io client.
    pub base: String,
    /// Every request so far, in arrival order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl RestServer {
    /// Serves `handler`'s answers on a fresh loopback port.
    pub async fn serve(handler: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!(
            "http://{}/api/v4",
            listener.local_addr().expect("a local address")
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (handler, log, count) = (handler.clone(), log.clone(), count.clone());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let reply = answer(&request, &*handler, &log, &count);
                    async move { Ok::<_, Infallible>(reply) }
                });
                tokio::spawn(async move {
                    // A client that goes away mid-request is not the server's failure.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { base, seen }
    }

    /// Serves every candlestick request with the closed windows of its `from..=to` range (see
    /// [`rows`]), `interval` being the window length in seconds.
    pub async fn candles(interval: i64) -> Self {
        Self::serve(move |_, seen| {
            Reply::json(rows(
                seen.query_i64("from"),
                seen.query_i64("to"),
                interval,
                &[],
            ))
        })
        .await
    }

    /// A copy of the requests so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    handler: &Handler,
    log: &Mutex<Vec<Seen>>,
    count: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let seen = Seen {
        path: request.uri().path().to_owned(),
        query: form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        at: Instant::now(),
    };
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(seen.clone());
    let reply = handler(count.fetch_add(1, Ordering::SeqCst), &seen);
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (k, v) in &reply.headers {
        response = response.header(k.as_str(), v.as_str());
    }
    response
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|e| panic!("a test reply with invalid headers {:?}: {e}", reply.headers))
}

/// The wall clock in unix seconds.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A candlestick row in the API's order for the window starting at unix second `start`; prices
/// derive from `start` so a test can check them: close `p.1`, high `(p+2).9`, low `p−3`, open
/// `(p−1).25` with `p = 60000 + start mod 997`, quote volume `(3p).5`, base volume
/// `0.<start mod 10000>`.
pub fn row(start: i64, closed: bool) -> String {
    let p = 60_000 + start % 997;
    format!(
        r#"["{start}","{}.5","{}.1","{}.9","{}","{}.25","0.{:04}","{closed}"]"#,
        p * 3,
        p,
        p + 2,
        p - 3,
        p - 1,
        start % 10_000
    )
}

/// A body of the closed windows of length `secs` that start within `from..=to` (newest first, as
/// a server may send them), with `extra` rows (e.g. an open window) appended.
pub fn rows(from: i64, to: i64, secs: i64, extra: &[String]) -> String {
    let mut starts: Vec<i64> = ((from + secs - 1).div_euclid(secs)..=to.div_euclid(secs))
        .map(|i| i * secs)
        .collect();
    starts.reverse();
    let mut rows: Vec<String> = starts.iter().map(|s| row(*s, true)).collect();
    rows.extend(extra.iter().cloned());
    format!("[{}]", rows.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_every_closed_window_in_range_newest_first() {
        let body: Vec<Vec<String>> = serde_json::from_str(&rows(61, 240, 60, &[])).unwrap();
        let starts: Vec<&str> = body.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(starts, ["240", "180", "120"]);
        assert!(body.iter().all(|r| r.len() == 8 && r[7] == "true"));
    }

    #[tokio::test]
    async fn answers_over_http_with_decoded_query_and_headers() {
        let server = RestServer::serve(|n, seen| {
            if n == 0 {
                Reply::too_many_requests(42)
            } else {
                Reply::json(rows(seen.query_i64("from"), seen.query_i64("to"), 60, &[]))
            }
        })
        .await;
        let authority = server
            .base
            .trim_start_matches("http://")
            .trim_end_matches("/api/v4");
        let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let request = Request::get(
                "/api/v4/spot/candlesticks?currency_pair=BTC_USDT&interval=1m&from=60&to=120",
            )
            .header("host", authority)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status().as_u16();
            let remain = response.headers()["X-Gate-RateLimit-Requests-Remain"]
                .to_str()
                .unwrap()
                .to_owned();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            answers.push((status, remain, String::from_utf8(body.to_vec()).unwrap()));
        }
        assert_eq!(answers[0].0, 429);
        assert_eq!(answers[0].1, "0");
        assert!(answers[0].2.contains("TOO_MANY_REQUESTS"), "{answers:?}");
        assert_eq!(
            (answers[1].0, answers[1].2.clone()),
            (200, rows(60, 120, 60, &[]))
        );
        let seen = server.requests();
        assert_eq!(seen.len(), 2, "both on one keep-alive connection");
        assert_eq!(seen[1].path, "/api/v4/spot/candlesticks");
        assert_eq!(seen[1].query["currency_pair"], "BTC_USDT");
    }
}
