//! Command-line flags. The config file describes the pipeline; flags change how this process runs
//! it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The default config: the embedded pipeline (replay → profit.sql → Parquet), no servers needed.
pub const DEFAULT_CONFIG: &str = "coinstream.toml";

#[derive(Debug, Parser)]
#[command(
    name = "coinstream",
    version,
    about = "Live crypto trades -> Arrow -> DataFusion SQL -> Cassandra or Parquet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (as RUST_LOG), e.g. `info` or `coinstream=debug`.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the pipeline a config describes.
    Run {
        /// The pipeline config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// `available-now` or `interval:<n>ms|s|m`; overrides `engine.trigger`.
        #[arg(long)]
        trigger: Option<String>,
        /// How per-batch progress is printed (to stderr).
        #[arg(long, value_enum, default_value_t = ProgressFormat::Human)]
        progress: ProgressFormat,
        /// Overrides `engine.max_records_per_batch`.
        #[arg(long)]
        max_records_per_batch: Option<usize>,
    },
    /// Prints the logical and physical plans of the transforms.
    Explain {
        /// The pipeline config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Also runs the output transform on one batch from the source and shows per-operator metrics.
        #[arg(long)]
        analyze: bool,
        /// Only this transform (default: all).
        transform: Option<String>,
    },
    /// Runs SQL over the configured store (the output table is named after the output transform)
    /// and the reference tables.
    Query {
        /// The pipeline config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The query.
        sql: String,
    },
    /// Writes generated trades as Coinbase Exchange feed messages (for `replay`).
    Generate {
        /// How many trades.
        #[arg(long)]
        count: u64,
        /// Trades per second of exchange time (spacing of trade times).
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// The output file (JSON lines).
        #[arg(long)]
        out: PathBuf,
        /// The random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Start of trade times, RFC 3339 (default: now minus count/rate).
        #[arg(long)]
        start: Option<String>,
        /// The portfolio file.
        #[arg(long, default_value = "required_data/my_Portfolio.json")]
        portfolio: PathBuf,
        /// The coin map.
        #[arg(long, default_value = "required_data/coin_map.json")]
        coin_map: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProgressFormat {
    /// One short line per batch.
    Human,
    /// Spark-style progress records, one JSON line per batch.
    Json,
}
