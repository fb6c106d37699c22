//! Reading a running `coinstream`'s HTTP endpoints: `GET` over a plain socket, Prometheus' text
//! format as samples, and `/api/progress` with `/metrics` as of one moment.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A loopback address no one listens on now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET path` over HTTP/1.1; the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// `GET path`; the body, which must come with status 200.
pub fn get_ok(addr: SocketAddr, path: &str) -> String {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The samples of Prometheus' text format: `name{labels}` (as written) → value.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The metric names of Prometheus' text format (a histogram's `_bucket`, `_sum` and `_count`
/// each count as one, as PromQL names them).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    samples(text)
        .keys()
        .map(|series| series.split('{').next().unwrap().to_owned())
        .collect()
}

/// `/api/progress` and `/metrics` as of one moment: fetched until no batch ended between them
/// (the progress is read before and after the metrics and must not have changed).
pub fn snapshot(addr: SocketAddr) -> (Vec<Value>, String) {
    for _ in 0..50 {
        let before = get_ok(addr, "/api/progress");
        let metrics = get_ok(addr, "/metrics");
        let (_, after) = get(addr, "/api/progress");
        if before == after {
            return (serde_json::from_str(&before).unwrap(), metrics);
        }
    }
    panic!("a batch ended between every two reads of /api/progress");
}
