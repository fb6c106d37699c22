//! Synthetic but realistic trades, for demos, tests and benchmarks: the portfolio's products (90%
//! of trades) plus a few others, prices on a random walk starting near real levels, increasing
//! trade ids and sequences per product. Deterministic for a given seed and start time.
//!
//! It writes Coinbase Exchange feed messages (`coinstream generate`, read back by `replay`) or
//! acts as a source of bus records (`[source] type = "generate"`).

pub mod source;

use std::borrow::Cow;
use std::path::Path;

use engine::{Error, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::common::reference_files::{read_coin_map, read_portfolio};
use crate::common::trade::{TradeRecord, rfc3339_micros};

/// Products outside the portfolio that the generator mixes in, with a realistic price level.
const OTHER_PRODUCTS: [(&str, f64); 4] = [
    ("LINK-USD", 18.42),
    ("SHIB-USD", 0.00002231),
    ("UNI-USD", 9.87),
    ("XLM-USD", 0.4123),
];

/// The share of trades on portfolio products.
const PORTFOLIO_SHARE: f64 = 0.9;

#[derive(Debug, Clone)]
struct Product {
    symbol: String,
    coin_name: Option<String>,
    price: f64,
    decimals: usize,
    trade_id: i64,
    sequence: i64,
}

/// One generated trade.
#[derive(Debug, Clone)]
pub struct Trade {
    product: usize,
    /// The trade id.
    pub trade_id: i64,
    sequence: i64,
    time_us: i64,
    price: String,
    size: String,
    maker_side: &'static str,
}

/// The trade generator.
#[derive(Debug, Clone)]
pub struct Generator {
    products: Vec<Product>,
    portfolio_count: usize,
    rng: SmallRng,
    clock_us: i64,
    spacing_us: i64,
}

impl Generator {
    /// A generator over the portfolio's products and the built-in others, named from the coin map.
    /// Trade times start at `start_us` (µs since the epoch) and advance `spacing_us` per trade on
    /// average.
    pub fn from_files(
        portfolio: &Path,
        coin_map: &Path,
        seed: u64,
        start_us: i64,
        spacing_us: i64,
    ) -> Result<Self> {
        let holdings = read_portfolio(portfolio)?;
        let coins = read_coin_map(coin_map)?;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut products = Vec::new();
        for (symbol, holding) in &holdings {
            let buy: f64 = holding.buy_price.parse().map_err(|_| {
                Error::config(
                    portfolio.display().to_string(),
                    format!("{symbol}.buy_price {:?} is not a number", holding.buy_price),
                )
            })?;
            // Start within ±10% of the buy price, so profits come out both ways.
            let start = buy * rng.random_range(0.9..1.1);
            products.push(product(
                symbol,
                coins
                    .get(symbol)
                    .cloned()
                    .or(Some(holding.coin_name.clone())),
                start,
                &mut rng,
            ));
        }
        let portfolio_count = products.len();
        for (symbol, level) in OTHER_PRODUCTS {
            if !holdings.contains_key(symbol) {
                products.push(product(symbol, coins.get(symbol).cloned(), level, &mut rng));
            }
        }
        if products.is_empty() {
            return Err(Error::config(
                portfolio.display().to_string(),
                "the portfolio lists no products",
            ));
        }
        Ok(Self {
            products,
            portfolio_count,
            rng,
            clock_us: start_us,
            spacing_us: spacing_us.max(1),
        })
    }

    /// The products' symbols, portfolio first.
    pub fn symbols(&self) -> Vec<&str> {
        self.products.iter().map(|p| p.symbol.as_str()).collect()
    }

    /// The next trade.
    pub fn next_trade(&mut self) -> Trade {
        let in_portfolio = self.portfolio_count == self.products.len()
            || (self.portfolio_count > 0 && self.rng.random_bool(PORTFOLIO_SHARE));
        let index = if in_portfolio {
            self.rng.random_range(0..self.portfolio_count)
        } else {
            self.rng
                .random_range(self.portfolio_count..self.products.len())
        };
        self.clock_us += self.rng.random_range(0..=2 * self.spacing_us);
        let step: f64 = self.rng.random_range(-0.0008..0.0008);
        let size_exp: f64 = self.rng.random_range(-4.0..1.0);
        let maker_side = if self.rng.random_bool(0.5) {
            "buy"
        } else {
            "sell"
        };
        let sequence_gap = self.rng.random_range(1..40);
        let p = &mut self.products[index];
        p.price *= 1.0 + step;
        p.trade_id += 1;
        p.sequence += sequence_gap;
        // Sizes scale inversely with price so every product trades a similar notional.
        let size = 10f64.powf(size_exp) * (1000.0 / p.price).clamp(0.001, 1e9);
        Trade {
            product: index,
            trade_id: p.trade_id,
            sequence: p.sequence,
            time_us: self.clock_us,
            price: format!("{:.*}", p.decimals, p.price),
            size: format!("{size:.8}"),
            maker_side,
        }
    }

    /// The trade as an Exchange `match` message.
    pub fn match_line(&mut self, trade: &Trade, kind: &str) -> String {
        let p = &self.products[trade.product];
        json!({
            "type": kind,
            "trade_id": trade.trade_id,
            "maker_order_id": uuid(&mut self.rng),
            "taker_order_id": uuid(&mut self.rng),
            "side": trade.maker_side,
            "size": trade.size,
            "price": trade.price,
            "product_id": p.symbol,
            "sequence": trade.sequence,
            "time": time_text(trade.time_us),
        })
        .to_string()
    }

    /// A heartbeat for one product, as the Exchange sends each second.
    pub fn heartbeat_line(&self, index: usize) -> String {
        let p = &self.products[index % self.products.len()];
        json!({
            "type": "heartbeat",
            "last_trade_id": p.trade_id,
            "product_id": p.symbol,
            "sequence": p.sequence,
            "time": time_text(self.clock_us),
        })
        .to_string()
    }

    /// The subscriptions acknowledgement for every product.
    pub fn subscriptions_line(&self) -> String {
        let ids = self.symbols();
        json!({"type": "subscriptions", "channels": [
            {"name": "matches", "product_ids": ids},
            {"name": "heartbeat", "product_ids": ids},
        ]})
        .to_string()
    }

    /// The trade as a bus record (the taker's side: the maker's inverted).
    pub fn record<'a>(&'a self, trade: &'a Trade, ingest_time: &'a str) -> TradeRecord<'a> {
        let p = &self.products[trade.product];
        TradeRecord {
            symbol: p.symbol.as_str().into(),
            coin_name: p.coin_name.as_deref().map(Cow::Borrowed),
            trade_id: trade.trade_id,
            sequence: Some(trade.sequence),
            trade_time: time_text(trade.time_us).into(),
            price: trade.price.as_str().into(),
            size: trade.size.as_str().into(),
            side: if trade.maker_side == "sell" {
                "buy"
            } else {
                "sell"
            }
            .into(),
            ingest_time: ingest_time.into(),
        }
    }

    /// The number of products.
    pub fn product_count(&self) -> usize {
        self.products.len()
    }
}

fn product(symbol: &str, coin_name: Option<String>, price: f64, rng: &mut SmallRng) -> Product {
    let decimals = if price >= 1000.0 {
        2
    } else if price >= 1.0 {
        4
    } else {
        8
    };
    Product {
        symbol: symbol.to_owned(),
        coin_name,
        price,
        decimals,
        trade_id: rng.random_range(1_000_000..900_000_000),
        sequence: rng.random_range(1_000_000_000..90_000_000_000),
    }
}

fn time_text(us: i64) -> String {
    rfc3339_micros(chrono::DateTime::from_timestamp_micros(us).unwrap_or_default())
}

fn uuid(rng: &mut SmallRng) -> String {
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Writes `count` trades as an Exchange feed capture: the subscriptions ack, a `last_match` per
/// product, then `match` messages with a heartbeat for some product after every few trades.
pub fn write_feed(
    generator: &mut Generator,
    count: u64,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    writeln!(out, "{}", generator.subscriptions_line())?;
    let mut written = 0;
    for _ in 0..generator.product_count().min(count as usize) {
        let trade = generator.next_trade();
        let line = generator.match_line(&trade, "last_match");
        writeln!(out, "{line}")?;
        written += 1;
    }
    let mut hearts = 0usize;
    while written < count {
        let trade = generator.next_trade();
        let line = generator.match_line(&trade, "match");
        writeln!(out, "{line}")?;
        written += 1;
        if written % 8 == 0 {
            writeln!(out, "{}", generator.heartbeat_line(hearts))?;
            hearts += 1;
        }
    }
    Ok(())
}
