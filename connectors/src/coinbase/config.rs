//! `[source] type = "coinbase"` (also built from the flags of `coinstream ingest coinbase`): the raw
//! config serde reads, and [`Settings`], the validated form. Validation reads the coin map and the
//! portfolio and reports every problem at once, before any connection opens.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use engine::Result;
use serde::Deserialize;

use crate::common::config::{self, Problem, millis, positive_millis};
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
#[serde(default, deny_unknown_fields)]
pub struct CoinbaseConfig {
    /// `exchange` or `advanced`. Default `exchange`.
    pub feed: FeedKind,
    /// The WebSocket URL (`ws://` or `wss://`). Default: the feed's public URL
    /// ([`EXCHANGE_URL`] or [`ADVANCED_TRADE_URL`]).
    pub url: Option<String>,
    /// The products to subscribe to (`BASE-QUOTE`). Default: every product of `portfolio`.
    pub product_ids: Option<Vec<String>>,
    /// The portfolio file whose products are subscribed when `product_ids` is not set, relative
    /// to the config file.
    #[serde(deserialize_with = "config::optional_path")]
    pub portfolio: Option<PathBuf>,
    /// The coin map (`product id → coin name`), relative to the config file; trades of products
    /// missing from it are counted and dropped, never published without their coin. Required.
    #[serde(deserialize_with = "config::path")]
    pub coin_map: PathBuf,
    /// A connection that delivers nothing (not even a heartbeat, which the feeds send every
    /// second) for this long is dead and is replaced: milliseconds or text such as `"5s"`.
    /// Default 5 s.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "positive_millis")]
    pub idle_timeout: Duration,
    /// Opening a connection (TCP, TLS and the WebSocket handshake) fails after this long:
    /// milliseconds or text. Default 10 s.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "positive_millis")]
    pub connect_timeout: Duration,
    /// The first pause before reconnecting (milliseconds or text); it doubles (with jitter) on
    /// every failed attempt in a row. Default 500 ms.
    #[serde(
        rename = "reconnect_backoff_initial_ms",
        deserialize_with = "positive_millis"
    )]
    pub reconnect_backoff_initial: Duration,
    /// The longest pause before reconnecting (milliseconds or text). Default 30 s.
    #[serde(rename = "reconnect_backoff_max_ms", deserialize_with = "millis")]
    pub reconnect_backoff_max: Duration,
}

impl Default for CoinbaseConfig {
    /// The Exchange feed with no coin map and no products (which [`CoinbaseConfig::settings`]
    /// reports).
    fn default() -> Self {
        Self {
            feed: FeedKind::Exchange,
            url: None,
            product_ids: None,
            portfolio: None,
            coin_map: PathBuf::new(),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            reconnect_backoff_initial: Duration::from_millis(500),
            reconnect_backoff_max: Duration::from_secs(30),
        }
    }
}

impl CoinbaseConfig {
    /// A config with every default: the feed's URL, the portfolio's products.
    pub fn new(feed: FeedKind, coin_map: PathBuf, portfolio: PathBuf) -> Self {
        Self {
            feed,
            portfolio: Some(portfolio),
            coin_map,
            ..Self::default()
        }
    }

    /// Checks the config and reads its files; every problem is reported in one [`Error::Config`]
    /// naming the `source` section.
    pub fn validate(&self) -> Result<Settings> {
        self.settings()
            .map_err(|problems| Problem::into_error("source", problems))
    }

    /// Checks the config and reads its files: the settings, or every problem (keys relative to
    /// the section).
    pub fn settings(&self) -> std::result::Result<Settings, Vec<Problem>> {
        let mut problems = Vec::new();
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| self.feed.default_url().to_owned());
        if let Err(message) = check_ws_url(&url) {
            problems.push(Problem::new("url", message));
        }
        let coins = if self.coin_map.as_os_str().is_empty() {
            problems.push(Problem::new("coin_map", "is missing"));
            BTreeMap::new()
        } else {
            read_coin_map(&self.coin_map).unwrap_or_else(|e| {
                problems.push(Problem::new("coin_map", e.to_string()));
                BTreeMap::new()
            })
        };
        let mut product_problem = false;
        let products = match (&self.product_ids, &self.portfolio) {
            (Some(ids), _) => ids.clone(),
            (None, Some(path)) => match read_portfolio(path) {
                Ok(p) => p.into_keys().collect(),
                Err(e) => {
                    problems.push(Problem::new("portfolio", e.to_string()));
                    product_problem = true;
                    Vec::new()
                }
            },
            (None, None) => {
                problems.push(Problem::new("product_ids", "set product_ids or portfolio"));
                product_problem = true;
                Vec::new()
            }
        };
        let mut unique = Vec::new();
        for p in products {
            if !is_product_id(&p) {
                problems.push(Problem::new(
                    "product_ids",
                    format!("{p:?} is not a product id; expected BASE-QUOTE, e.g. BTC-USD"),
                ));
                product_problem = true;
            } else if !unique.contains(&p) {
                unique.push(p);
            }
        }
        if unique.is_empty() && !product_problem {
            problems.push(Problem::new(
                "product_ids",
                "must name at least one product",
            ));
        }
        problems.extend(config::backoff_order(
            (
                "reconnect_backoff_initial_ms",
                self.reconnect_backoff_initial,
            ),
            ("reconnect_backoff_max_ms", self.reconnect_backoff_max),
        ));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Settings {
            feed: self.feed,
            url,
            products: unique,
            coins,
            idle_timeout: self.idle_timeout,
            connect_timeout: self.connect_timeout,
            backoff_initial: self.reconnect_backoff_initial,
            backoff_max: self.reconnect_backoff_max,
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

    fn parse(text: &str) -> std::result::Result<CoinbaseConfig, Problem> {
        config::from_toml("source", toml::from_str(text).unwrap())
    }

    #[test]
    fn reports_every_problem_at_once() {
        let config = parse(
            r#"
url = "http://example.com"
product_ids = ["btc-usd", "BTC-USD"]
coin_map = "/nonexistent/coin_map.json"
reconnect_backoff_max_ms = 1
"#,
        )
        .unwrap();
        let problems: Vec<String> = config
            .settings()
            .unwrap_err()
            .iter()
            .map(Problem::to_string)
            .collect();
        for expected in [
            "url: \"http://example.com\" has scheme \"http\"; expected ws or wss",
            "coin_map: io on /nonexistent/coin_map.json",
            "product_ids: \"btc-usd\" is not a product id",
            "reconnect_backoff_max_ms: 1ms is below reconnect_backoff_initial_ms (500ms)",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected:?} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn durations_are_milliseconds_or_text_and_zero_is_refused() {
        let config =
            parse("coin_map = \"c.json\"\nidle_timeout_ms = \"2s\"\nconnect_timeout_ms = 750")
                .unwrap();
        assert_eq!(
            (config.idle_timeout, config.connect_timeout),
            (Duration::from_secs(2), Duration::from_millis(750))
        );
        assert_eq!(
            parse("coin_map = \"c.json\"\nidle_timeout_ms = 0")
                .unwrap_err()
                .to_string(),
            "source.idle_timeout_ms: must be at least 1"
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = parse("coin_map = \"c.json\"\nproducts = []\n").unwrap_err();
        assert_eq!(err.key, "source.products");
        assert!(err.message.contains("unknown field `products`"), "{err}");
    }
}
