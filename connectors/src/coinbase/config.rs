//! `[source] type = "coinbase"` (also built from the flags of `coinstream ingest coinbase`): the raw
//! config serde reads, and [`Settings`], the validated form. Validation reads the coin map and the
//! portfolio and reports every problem at once, before any connection opens.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use engine::{Error, Result};
use serde::Deserialize;

use crate::common::reference_files::{read_coin_map, read_portfolio};

/// The Exchange feed's public URL.
pub const EXCHANGE_URL: &str = "wss://ws-feed.exchange.coinbase.com";
/// The Advanced Trade feed's public URL.
pub const ADVANCED_TRADE_URL: &str = "wss://advanced-trade-ws.coinbase.com";

/// Which Coinbase WebSocket API to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedKind {
    /// Coinbase Exchange, channels `matches` and `heartbeat` (the default).
    #[default]
    Exchange,
    /// Coinbase Advanced Trade, channels `market_trades` and `heartbeats`.
    Advanced,
}

impl FeedKind {
    /// The public URL of the feed.
    pub fn default_url(self) -> &'static str {
        match self {
            FeedKind::Exchange => EXCHANGE_URL,
            FeedKind::Advanced => ADVANCED_TRADE_URL,
        }
    }
}

/// `[source] type = "coinbase"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinbaseConfig {
    /// `exchange` or `advanced`. Default `exchange`.
    #[serde(default)]
    pub feed: FeedKind,
    /// The WebSocket URL (`ws://` or `wss://`). Default: the feed's public URL
    /// ([`EXCHANGE_URL`] or [`ADVANCED_TRADE_URL`]).
    pub url: Option<String>,
    /// The products to subscribe to (`BASE-QUOTE`). Default: every product of `portfolio`.
    pub product_ids: Option<Vec<String>>,
    /// The portfolio file whose products are subscribed when `product_ids` is not set.
    pub portfolio: Option<PathBuf>,
    /// The coin map (`product id → coin name`); trades of products missing from it are counted
    /// and dropped, never published without their coin.
    pub coin_map: PathBuf,
    /// A connection that delivers nothing (not even a heartbeat, which the feeds send every
    /// second) for this many milliseconds is dead and is replaced. Default 5000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Opening a connection (TCP, TLS and the WebSocket handshake) fails after this many
    /// milliseconds. Default 10000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The first pause before reconnecting, in milliseconds; it doubles (with jitter) on every
    /// failed attempt in a row. Default 500.
    #[serde(default = "default_reconnect_backoff_initial_ms")]
    pub reconnect_backoff_initial_ms: u64,
    /// The longest pause before reconnecting, in milliseconds. Default 30000.
    #[serde(default = "default_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
}

fn default_idle_timeout_ms() -> u64 {
    5_000
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

fn default_reconnect_backoff_initial_ms() -> u64 {
    500
}

fn default_reconnect_backoff_max_ms() -> u64 {
    30_000
}

impl CoinbaseConfig {
    /// A config with every default: the feed's URL, the portfolio's products.
    pub fn new(feed: FeedKind, coin_map: PathBuf, portfolio: PathBuf) -> Self {
        Self {
            feed,
            url: None,
            product_ids: None,
            portfolio: Some(portfolio),
            coin_map,
            idle_timeout_ms: default_idle_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            reconnect_backoff_initial_ms: default_reconnect_backoff_initial_ms(),
            reconnect_backoff_max_ms: default_reconnect_backoff_max_ms(),
        }
    }

    /// Checks the config and reads its files; every problem is reported in one [`Error::Config`].
    pub fn validate(&self) -> Result<Settings> {
        let mut problems = Vec::new();
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| self.feed.default_url().to_owned());
        if let Err(message) = check_ws_url(&url) {
            problems.push(format!("url: {message}"));
        }
        let coins = match read_coin_map(&self.coin_map) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("coin_map: {e}"));
                BTreeMap::new()
            }
        };
        let products = match (&self.product_ids, &self.portfolio) {
            (Some(ids), _) => ids.clone(),
            (None, Some(path)) => match read_portfolio(path) {
                Ok(p) => p.into_keys().collect(),
                Err(e) => {
                    problems.push(format!("portfolio: {e}"));
                    Vec::new()
                }
            },
            (None, None) => {
                problems.push("product_ids: set product_ids or portfolio".into());
                Vec::new()
            }
        };
        let mut unique = Vec::new();
        for p in products {
            if !is_product_id(&p) {
                problems.push(format!(
                    "product_ids: {p:?} is not a product id; expected BASE-QUOTE, e.g. BTC-USD"
                ));
            } else if !unique.contains(&p) {
                unique.push(p);
            }
        }
        if unique.is_empty() && !problems.iter().any(|p| p.starts_with("product")) {
            problems.push("product_ids: must name at least one product".into());
        }
        for (key, value) in [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            (
                "reconnect_backoff_initial_ms",
                self.reconnect_backoff_initial_ms,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_initial_ms {
            problems.push(format!(
                "reconnect_backoff_max_ms: {} is below reconnect_backoff_initial_ms ({})",
                self.reconnect_backoff_max_ms, self.reconnect_backoff_initial_ms
            ));
        }
        if !problems.is_empty() {
            return Err(Error::config("source (coinbase)", problems.join("; ")));
        }
        Ok(Settings {
            feed: self.feed,
            url,
            products: unique,
            coins,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            backoff_initial: Duration::from_millis(self.reconnect_backoff_initial_ms),
            backoff_max: Duration::from_millis(self.reconnect_backoff_max_ms),
        })
    }
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which feed.
    pub feed: FeedKind,
    /// A `ws://` or `wss://` URL.
    pub url: String,
    /// Distinct, well-formed product ids; at least one.
    pub products: Vec<String>,
    /// Product id → coin name.
    pub coins: BTreeMap<String, String>,
    /// Silence after which a connection is replaced.
    pub idle_timeout: Duration,
    /// Limit on opening a connection.
    pub connect_timeout: Duration,
    /// First reconnect pause.
    pub backoff_initial: Duration,
    /// Longest reconnect pause.
    pub backoff_max: Duration,
}

fn check_ws_url(url: &str) -> std::result::Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        other => {
            return Err(format!(
                "{url:?} has scheme {:?}; expected ws or wss",
                other.unwrap_or("")
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// `BASE-QUOTE` of upper-case letters and digits.
fn is_product_id(p: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    };
    matches!(p.split_once('-'), Some((base, quote)) if ok(base) && ok(quote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn defaults_to_the_exchange_feed_and_the_portfolios_products() {
        let config = CoinbaseConfig::new(
            FeedKind::Exchange,
            repo().join("required_data/coin_map.json"),
            repo().join("required_data/my_Portfolio.json"),
        );
        let settings = config.validate().unwrap();
        assert_eq!(settings.url, EXCHANGE_URL);
        assert!(settings.products.contains(&"BTC-USD".to_owned()));
        assert_eq!(settings.products.len(), 9);
        assert_eq!(settings.idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let config: CoinbaseConfig = toml::from_str(
            r#"
url = "http://example.com"
product_ids = ["btc-usd", "BTC-USD"]
coin_map = "/nonexistent/coin_map.json"
idle_timeout_ms = 0
reconnect_backoff_max_ms = 1
"#,
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        for expected in [
            "url: \"http://example.com\" has scheme \"http\"; expected ws or wss",
            "coin_map: io on /nonexistent/coin_map.json",
            "product_ids: \"btc-usd\" is not a product id",
            "idle_timeout_ms: must be at least 1",
            "reconnect_backoff_max_ms: 1 is below reconnect_backoff_initial_ms (500)",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = toml::from_str::<CoinbaseConfig>("coin_map = \"c.json\"\nproducts = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `products`"), "{err}");
    }
}
