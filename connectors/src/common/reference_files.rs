//! Readers of the reference files the connectors need themselves (the engine loads the same files
//! as SQL tables): the coin map (`product id → name`) and the portfolio (`product id → holding`).

use std::collections::BTreeMap;
use std::path::Path;

use engine::Error;
use serde::Deserialize;

/// One holding of the portfolio file.
#[derive(Debug, Clone, Deserialize)]
pub struct Holding {
    /// The coin's name.
    pub coin_name: String,
    /// The price paid, as a decimal string.
    pub buy_price: String,
    /// The quantity held, as a decimal string.
    pub size: String,
    /// When it was bought, in ms since the epoch.
    pub buy_time: i64,
}

/// Reads the coin map: a JSON object of product id → coin name.
pub fn read_coin_map(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    read_json(path, "coin map")
}

/// Reads the portfolio: a JSON object of product id → holding.
pub fn read_portfolio(path: &Path) -> Result<BTreeMap<String, Holding>, Error> {
    read_json(path, "portfolio")
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::config(
            path.display().to_string(),
            format!("not a valid {what}: {e}"),
        )
    })
}
