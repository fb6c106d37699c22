//! The live page `/`, in a real browser: headless Chromium (Debian's `chromium`; scripts/test.sh
//! installs it) opens the page of a running `coinstream run` and what it renders is checked
//! against what the run stored and reported.
//!
//! The run is the embedded job (`coinstream.toml`, Delta store) fed the sample capture by
//! testkit's Coinbase stand-in, which then holds the connection open: the run stays up (as a
//! capture file would not) and its output stops changing once the capture is through, so the page
//! and the store can be compared exactly.
//!
//! `COINSTREAM_UPDATE_SCREENSHOT=1` also writes the page's screenshot to docs/ui.png (the
//! README's).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;
use testkit::coinbase::{FeedServer, Step};

mod common;

use common::scrape::{free_addr, get_ok};
use common::{Running, embedded_config, ok, repo};

/// The browser: `$CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> String {
    let browser = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = Command::new(&browser)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{browser} is not installed (or not runnable): this test needs headless Chromium. Install \
         it with `apt-get install -y chromium` (Debian; scripts/test.sh does so when it is \
         missing) or point $CHROMIUM at a Chromium or Chrome binary"
    );
    browser
}

/// Runs headless Chromium on `url` with `args`; its stdout. Virtual time lets the page's scripts
/// run (the event stream stays open, so there is no load-finished moment to wait for).
fn headless(browser: &str, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} {url} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        status.success(),
        "chromium {args:?} {url}: {status}\n{stderr}"
    );
    reader.join().unwrap()
}

/// The progress records of `/api/progress` once the run has taken the whole capture: their
/// input has not grown for two seconds.
fn settled_progress(addr: SocketAddr, running: &mut Running) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    loop {
        assert!(running.is_running(), "{}", running.log().join("\n"));
        let records: Vec<Value> = serde_json::from_str(&get_ok(addr, "/api/progress")).unwrap();
        let input: u64 = records
            .iter()
            .map(|r| r["numInputRows"].as_u64().unwrap())
            .sum();
        if input != last.0 {
            last = (input, Instant::now());
        } else if input > 0 && last.1.elapsed() > Duration::from_secs(2) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not settle:\n{}",
            running.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Undoes the HTML escaping Chromium's serializer applies to text and attribute values.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in a tag's attribute text.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let start = attrs.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = attrs[start..].find('"')?;
    Some(unescape(&attrs[start..start + len]))
}

/// The elements `<tag ...>inner</tag>` of `html`: attributes and inner HTML, which is cut at the
/// first closing tag (whole only for elements without nested ones of their kind, as table cells).
fn elements<'a>(html: &'a str, tag: &str) -> Vec<(&'a str, &'a str)> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<tr` must not match `<track`.
        if !after.starts_with([' ', '>']) {
            rest = after;
            continue;
        }
        let gt = after.find('>').unwrap();
        let end = after.find(&close).unwrap();
        found.push((&after[..gt], &after[gt + 1..end]));
        rest = &after[gt + 1..];
    }
    found
}

/// The element whose `id` is `id`: its attributes and inner HTML.
fn by_id<'a>(html: &'a str, tag: &str, id: &str) -> (&'a str, &'a str) {
    elements(html, tag)
        .into_iter()
        .find(|(attrs, _)| attr(attrs, "id").as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no <{tag} id={id}> in\n{html}"))
}

/// The HTML from the element whose `id` is `id` to the next element with an id (what uPlot drew in
/// a chart's `div`: its nested elements end before the next id'd element).
fn up_to_next_id<'a>(html: &'a str, id: &str) -> &'a str {
    let from = html
        .find(&format!(" id=\"{id}\""))
        .unwrap_or_else(|| panic!("no id {id} in\n{html}"));
    let rest = &html[from + id.len() + 6..];
    &rest[..rest.find(" id=\"").unwrap_or(rest.len())]
}

/// A body row: its attributes and each cell's attributes and text.
type Cells = Vec<(String, String)>;

fn body_rows(table: &str) -> Vec<(&str, Cells)> {
    let (_, body) = elements(table, "tbody")[0];
    elements(body, "tr")
        .into_iter()
        .map(|(attrs, inner)| {
            let cells = elements(inner, "td")
                .into_iter()
                .map(|(a, text)| (a.to_owned(), unescape(text)))
                .collect();
            (attrs, cells)
        })
        .collect()
}

fn column_names(table: &str) -> Vec<String> {
    let (_, head) = elements(table, "thead")[0];
    elements(head, "th")
        .into_iter()
        .map(|(_, t)| unescape(t))
        .collect()
}

/// A match whose price is no number: the BTC-USD trade after the capture's last, which the run
/// sends to the dead letters.
const BAD_PRICE: &str = r#"{"type":"match","trade_id":545006052,"maker_order_id":"c71f8136-ff65-099b-121f-91f68d7fcf71","taker_order_id":"615a56c5-04b7-c448-6eca-c6ef11adc714","side":"sell","size":"0.001","price":"84928.17.5","product_id":"BTC-USD","sequence":19486847245,"time":"2026-11-20T14:08:17.000000Z"}"#;

/// The capture and [`BAD_PRICE`] as the stand-in's frames, then an open connection that sends
/// nothing more.
fn capture_script() -> Vec<Step> {
    let capture =
        std::fs::read_to_string(repo().join("required_data/sample_trades.jsonl")).unwrap();
    let mut steps: Vec<Step> = capture
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Step::Text(l.to_owned()))
        .collect();
    steps.push(Step::Text(BAD_PRICE.to_owned()));
    steps.push(Step::KeepAlive(Vec::new()));
    steps
}

#[test]
fn the_page_shows_the_stored_pnl_and_the_batches() {
    // First, so a machine without a browser fails at once and says how to get one.
    let browser = chromium();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime.block_on(FeedServer::scripted(vec![capture_script()], 1));
    let dir = tempfile::tempdir().unwrap();
    let feed_path = repo().join("required_data/sample_trades.jsonl");
    let config = embedded_config(dir.path(), &feed_path).set_flag(&format!(
        "source={{ type = \"coinbase\", url = \"{}\", portfolio = \"required_data/my_Portfolio.json\", \
         coin_map = \"required_data/coin_map.json\", idle_timeout_ms = \"10m\" }}",
        feed.url
    ));
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(["run", "--trigger", "interval:100ms", "--progress", "json"])
        .args(config.args())
        // Some twenty batches: a chart with a line, and more batches than the table shows.
        .args(["--max-records-per-batch", "500"])
        .args(["--ui", &addr.to_string()])
        .current_dir(repo());
    let mut running = Running::spawn(cmd);
    running.wait_for_batches(1, Duration::from_secs(60));
    let records = settled_progress(addr, &mut running);

    // `?once`: the page closes its event stream after the history, so virtual time can end.
    let url = format!("http://{addr}/?once");
    let dom = headless(&browser, &url, &["--dump-dom"]);
    let screenshot = dir.path().join("ui.png");
    headless(
        &browser,
        &url,
        &[&format!("--screenshot={}", screenshot.display())],
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    if std::env::var_os("COINSTREAM_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::write(repo().join("docs/ui.png"), &png).unwrap();
    }

    // The store, read by `coinstream query` while the run goes on (nothing more arrives); CSV
    // keeps the decimals' exact text (no value of this table holds a comma or a quote).
    let (stored, _) = ok(common::coinstream(&common::args(
        &["query", "--format", "csv"],
        &config,
        &["SELECT * FROM profit"],
    ))
    .output()
    .unwrap());
    let mut lines = stored.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let stored: Vec<BTreeMap<String, String>> = lines
        .map(|l| {
            let values: Vec<&str> = l.split(',').collect();
            assert_eq!(values.len(), header.len(), "{l}");
            header
                .iter()
                .zip(values)
                .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
                .collect()
        })
        .collect();
    running.terminate(Duration::from_secs(60));
    let output_rows: u64 = records
        .iter()
        .map(|r| r["sink"]["numOutputRows"].as_u64().unwrap())
        .sum();
    assert_eq!(stored.len() as u64, output_rows);
    assert!(output_rows > 0);

    // Each symbol's newest stored trade (trade ids increase per product).
    let id = |row: &BTreeMap<String, String>| row["trade_id"].parse::<i64>().unwrap();
    let mut newest: BTreeMap<String, &BTreeMap<String, String>> = BTreeMap::new();
    for row in &stored {
        let symbol = row["symbol"].clone();
        if newest.get(&symbol).is_none_or(|n| id(n) < id(row)) {
            newest.insert(symbol, row);
        }
    }
    assert!(newest.len() > 1, "{newest:?}");

    // The P&L table: one row per symbol, each the newest stored row, its profit exact in
    // data-exact and shown to the cent.
    let (_, table) = by_id(&dom, "table", "pnl-table");
    let columns = column_names(table);
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {columns:?}"))
    };
    let rows = body_rows(table);
    let shown: BTreeMap<String, &Cells> = rows
        .iter()
        .map(|(attrs, cells)| (attr(attrs, "data-key").unwrap(), cells))
        .collect();
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        newest.keys().collect::<Vec<_>>()
    );
    for (symbol, row) in &newest {
        let cells = shown[symbol];
        let exact = |name: &str| attr(&cells[col(name)].0, "data-exact").unwrap();
        assert_eq!(exact("symbol"), *symbol);
        assert_eq!(exact("trade_id"), row["trade_id"]);
        for column in ["profit", "price", "size"] {
            let stored = Decimal::from_str(&row[column]).unwrap();
            let on_page = Decimal::from_str(&exact(column)).unwrap();
            assert_eq!(on_page, stored, "{symbol} {column}");
            // The profit to the cent; the others exact, without trailing zeros.
            let shown = if column == "profit" {
                let cents =
                    stored.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
                format!("{cents:.2}")
            } else {
                stored.normalize().to_string()
            };
            assert_eq!(cells[col(column)].1, shown, "{symbol} {column}");
        }
        for column in ["side", "coin_name", "trade_date"] {
            assert_eq!(cells[col(column)].1, row[column], "{symbol} {column}");
        }
    }

    // The chart: a line per symbol with a point per batch from the symbol's first one.
    let (chart, _) = by_id(&dom, "div", "pnl-chart");
    let chart_html = up_to_next_id(&dom, "pnl-chart");
    let points: usize = attr(chart, "data-points").unwrap().parse().unwrap();
    let series: usize = attr(chart, "data-series").unwrap().parse().unwrap();
    assert_eq!(series, newest.len(), "{chart}");
    assert!(points >= series, "{chart}");
    assert!(chart_html.contains("<canvas"), "{chart_html}");
    for id in [
        "input-rate-chart",
        "processing-rate-chart",
        "duration-chart",
    ] {
        let (attrs, _) = by_id(&dom, "div", id);
        let points: usize = attr(attrs, "data-points").unwrap().parse().unwrap();
        assert!(points >= records.len(), "{id}: {attrs}");
        assert!(up_to_next_id(&dom, id).contains("<canvas"), "{id}");
    }

    // The batches table: the newest batches first, as /api/progress reports them.
    let (_, batches) = by_id(&dom, "table", "batches");
    let batch_rows = body_rows(batches);
    let expected: Vec<&Value> = records.iter().rev().take(20).collect();
    assert_eq!(batch_rows.len(), expected.len());
    for ((attrs, cells), record) in batch_rows.iter().zip(expected) {
        assert_eq!(
            attr(attrs, "data-batch-id").unwrap(),
            record["batchId"].to_string()
        );
        assert_eq!(cells[2].1, record["numInputRows"].to_string());
        assert_eq!(cells[5].1, record["sink"]["numOutputRows"].to_string());
        assert_eq!(cells[7].1, record["durationMs"]["total"].to_string());
    }
    // The dead letters: the one bad match, with the batch and the reason the run reported.
    let (_, letters) = by_id(&dom, "table", "dead-letters");
    let letters = body_rows(letters);
    let rejected: Vec<&Value> = records
        .iter()
        .filter(|r| r["numDeadLetters"].as_u64().unwrap() > 0)
        .collect();
    assert_eq!(rejected.len(), 1, "{records:#?}");
    assert_eq!(rejected[0]["numDeadLetters"], 1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let cells = &letters[0].1;
    assert_eq!(cells[0].1, rejected[0]["batchId"].to_string());
    assert_eq!(
        rejected[0]["deadLettersByReason"],
        serde_json::json!({"decode": 1})
    );
    // The letter the dead-letter output stored: the same reason, position and message.
    let stored_letters: Vec<Value> = std::fs::read_dir(dir.path().join("data/dead_letters"))
        .unwrap()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(stored_letters.len(), 1, "{stored_letters:#?}");
    let letter = &stored_letters[0];
    assert_eq!(cells[1].1, letter["reason"].as_str().unwrap());
    assert!(cells[1].1.contains("84928.17.5"), "{cells:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&cells[2].1).unwrap(),
        letter["position"]
    );
    assert_eq!(cells[3].1, BAD_PRICE);
    assert_eq!(letter["raw"], BAD_PRICE);

    let (body, _) = elements(&dom, "body")[0];
    assert_eq!(
        attr(body, "data-batches").unwrap(),
        records.len().to_string()
    );
    drop(feed);
}

#[test]
fn the_page_and_its_assets_are_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let feed = repo().join("required_data/sample_trades.jsonl");
    let config = embedded_config(dir.path(), &feed).set_flag(
        "source={ type = \"generate\", portfolio = \"required_data/my_Portfolio.json\", \
         coin_map = \"required_data/coin_map.json\", rate_per_sec = 50, seed = 14 }",
    );
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coinstream"));
    cmd.args(["run", "--trigger", "interval:100ms", "--progress", "json"])
        .args(config.args())
        .args(["--ui", &addr.to_string()])
        .current_dir(repo());
    let mut running = Running::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{}", running.log().join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let index = get_ok(addr, "/");
    // Only the binary's own assets: the page works offline.
    for src in ["/assets/uPlot.iife.min.js", "/assets/page.js"] {
        assert!(index.contains(&format!("src=\"{src}\"")), "{index}");
    }
    assert!(
        !index.contains("http://") && !index.contains("https://"),
        "{index}"
    );
    let shipped = |p: &str| std::fs::read_to_string(repo().join("src/ui/assets").join(p)).unwrap();
    assert_eq!(
        get_ok(addr, "/assets/uPlot.iife.min.js"),
        shipped("uplot/uPlot.iife.min.js")
    );
    assert_eq!(
        get_ok(addr, "/assets/uPlot.LICENSE"),
        shipped("uplot/LICENSE")
    );
    assert_eq!(get_ok(addr, "/assets/page.js"), shipped("page.js"));

    // The event stream: a reset, then each batch with its progress record and its rows.
    running.wait_for_batches(3, Duration::from_secs(60));
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tcp, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut stream = String::new();
    let mut buf = [0; 65536];
    while stream.matches("event: batch\n").count() < 3 || !stream.contains("event: latest\n") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "{stream}");
        stream.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    assert!(
        stream.contains("content-type: text/event-stream"),
        "{stream}"
    );
    let events: Vec<(&str, Value)> = stream
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(events[0].0, "reset");
    let batches: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| *name == "batch")
        .map(|(_, v)| v)
        .collect();
    let ids: Vec<u64> = batches
        .iter()
        .map(|b| b["progress"]["batchId"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let with_rows = batches
        .iter()
        .find(|b| !b["rows"].as_array().unwrap().is_empty())
        .expect("a batch with rows");
    assert_eq!(with_rows["chart"]["key_name"], "symbol");
    assert_eq!(with_rows["chart"]["value_name"], "profit");
    let names: Vec<&str> = with_rows["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let profit = names.iter().position(|n| *n == "profit").unwrap();
    assert_eq!(with_rows["columns"][profit]["decimal"], true);
    for row in with_rows["rows"].as_array().unwrap() {
        let exact = Decimal::from_str(row["exact"][profit].as_str().unwrap()).unwrap();
        let cents = exact.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        assert_eq!(row["shown"][profit], format!("{cents:.2}"));
    }
    running.terminate(Duration::from_secs(60));
}
