//! The portfolio profit oracle: what `sql/profit.sql` must store for a trade, computed from
//! `required_data/my_Portfolio.json` with no code of the engine (`(price − buy_price) × size`,
//! exact decimals).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use rust_decimal::Decimal;

/// One holding of the portfolio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// The price the holding was bought at (quote currency per base unit).
    pub buy_price: Decimal,
    /// The amount held (base units).
    pub size: Decimal,
}

/// The portfolio, by product id (`BTC-USD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portfolio {
    /// Holdings by product id.
    pub holdings: BTreeMap<String, Holding>,
}

impl Portfolio {
    /// Reads a portfolio file (`{"BTC-USD": {"buy_price": "…", "size": "…"}, …}`, decimals as
    /// strings); panics when it is not one.
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let object = json
            .as_object()
            .unwrap_or_else(|| panic!("{} is not a JSON object", path.display()));
        let holdings = object
            .iter()
            .map(|(symbol, h)| {
                let d = |key: &str| {
                    h[key]
                        .as_str()
                        .and_then(|s| Decimal::from_str(s).ok())
                        .unwrap_or_else(|| {
                            panic!("{}: {symbol}.{key} is not a decimal string", path.display())
                        })
                };
                (
                    symbol.clone(),
                    Holding {
                        buy_price: d("buy_price"),
                        size: d("size"),
                    },
                )
            })
            .collect();
        Self { holdings }
    }

    /// The shipped `required_data/my_Portfolio.json`.
    pub fn shipped() -> Self {
        Self::load(&crate::env::required_data("my_Portfolio.json"))
    }

    /// The profit of a trade of `symbol` at `price`: `(price − buy_price) × size`, or `None` when
    /// the portfolio does not hold `symbol` (profit.sql keeps no row for it).
    pub fn profit(&self, symbol: &str, price: Decimal) -> Option<Decimal> {
        self.holdings
            .get(symbol)
            .map(|h| (price - h.buy_price) * h.size)
    }

    /// [`Portfolio::profit`] of a price given as decimal text; `None` also when the text is not a
    /// decimal (such a trade is a dead letter, not a row).
    pub fn profit_of_text(&self, symbol: &str, price: &str) -> Option<Decimal> {
        self.profit(symbol, Decimal::from_str(price).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profit_is_price_minus_buy_price_times_size() {
        let portfolio = Portfolio {
            holdings: BTreeMap::from([(
                "BTC-USD".to_owned(),
                Holding {
                    buy_price: Decimal::from_str("100.5").unwrap(),
                    size: Decimal::from_str("0.2").unwrap(),
                },
            )]),
        };
        assert_eq!(
            portfolio.profit_of_text("BTC-USD", "90.25"),
            Some(Decimal::from_str("-2.05").unwrap())
        );
        assert_eq!(portfolio.profit_of_text("ETH-USD", "1"), None);
        assert_eq!(portfolio.profit_of_text("BTC-USD", "x"), None);
    }

    #[test]
    fn the_shipped_portfolio_loads() {
        assert!(!Portfolio::shipped().holdings.is_empty());
    }
}
