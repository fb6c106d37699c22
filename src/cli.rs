//! Command-line flags. The config file describes the pipeline; flags change how this process runs
//! it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use connectors::kafka::config::Compression;

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
    /// Generates realistic trades: Coinbase Exchange feed messages into a file (for `replay`), or
    /// bus records into a file or a Kafka topic (for `run` and benchmarks).
    Generate(GenerateArgs),
    /// Runs an ingester: exchange data into Kafka, until SIGINT/SIGTERM (or `--once`).
    #[command(subcommand)]
    Ingest(IngestCommand),
}

/// `coinstream ingest`.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Coinbase trades over WebSocket, normalised to bus records, into a Kafka topic keyed by
    /// product.
    Coinbase(IngestCoinbaseArgs),
    /// Gate.io closed candles over REST, into a Kafka topic keyed by currency pair.
    Gateio(IngestGateioArgs),
}

/// `coinstream ingest coinbase`.
#[derive(Debug, clap::Args)]
pub struct IngestCoinbaseArgs {
    /// The feed's WebSocket URL (default: wss://ws-feed.exchange.coinbase.com, or
    /// wss://advanced-trade-ws.coinbase.com with `--feed advanced`).
    #[arg(long)]
    pub url: Option<String>,
    /// Products to subscribe to, comma-separated (default: the portfolio's).
    #[arg(long, value_delimiter = ',')]
    pub products: Vec<String>,
    /// Which Coinbase API: `exchange` (matches + heartbeat) or `advanced` (market_trades +
    /// heartbeats).
    #[arg(long, value_enum, default_value_t = CoinbaseFeed::Exchange)]
    pub feed: CoinbaseFeed,
    /// Kafka brokers (default: env KAFKA_BOOTSTRAP, else 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The Kafka topic.
    #[arg(long, default_value = "crypto_trades")]
    pub topic: String,
    /// The codec the producer compresses batches with: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    pub compression: Compression,
    /// A connection silent for this long (no trade, no heartbeat) is replaced, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub idle_timeout_ms: u64,
    /// The portfolio file (its products are the default `--products`).
    #[arg(long, default_value = "required_data/my_Portfolio.json")]
    pub portfolio: PathBuf,
    /// The coin map (trades of products missing from it are counted and dropped).
    #[arg(long, default_value = "required_data/coin_map.json")]
    pub coin_map: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CoinbaseFeed {
    /// Coinbase Exchange: channels matches and heartbeat.
    Exchange,
    /// Coinbase Advanced Trade: channels market_trades and heartbeats.
    Advanced,
}

/// `coinstream ingest gateio`.
#[derive(Debug, clap::Args)]
pub struct IngestGateioArgs {
    /// The REST API's base URL (default: https://api.gateio.ws/api/v4).
    #[arg(long)]
    pub url: Option<String>,
    /// Currency pairs, comma-separated (default: each portfolio product `X-USD` as `X_USDT`).
    #[arg(long, value_delimiter = ',')]
    pub pairs: Vec<String>,
    /// The candle interval: 1s, 10s, 1m, 5m, 15m, 30m, 1h, 4h, 8h, 1d or 7d.
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// Backfill windows starting at or after this time (RFC 3339, a date, or unix seconds).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the backfill (default: now, then keep polling unless `--once`).
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// One poll (or one backfill), then exit 0: for schedulers such as Airflow.
    #[arg(long)]
    pub once: bool,
    /// A file that keeps the last published window per pair between runs, so separate runs
    /// (`--once` from a scheduler) publish each window once and resume where the last one ended;
    /// written after Kafka acknowledged the run's candles. Windows at or before it are skipped,
    /// in a backfill too: delete the file to publish them again.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Kafka brokers (default: env KAFKA_BOOTSTRAP, else 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The Kafka topic.
    #[arg(long, default_value = "crypto_candles")]
    pub topic: String,
    /// The codec the producer compresses batches with: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    pub compression: Compression,
    /// The portfolio file (its products give the default `--pairs`).
    #[arg(long, default_value = "required_data/my_Portfolio.json")]
    pub portfolio: PathBuf,
}

/// `coinstream generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// How many trades.
    #[arg(long)]
    pub count: u64,
    /// Trades per second of exchange time (spacing of trade times).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The output file (JSON lines).
    #[arg(long, required_unless_present = "topic", conflicts_with = "topic")]
    pub out: Option<PathBuf>,
    /// Publish bus records to this Kafka topic instead (keyed by product).
    #[arg(long)]
    pub topic: Option<String>,
    /// Kafka brokers for `--topic` (default: env KAFKA_BOOTSTRAP, else 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The codec for `--topic`: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "lz4", requires = "topic")]
    pub compression: Compression,
    /// `feed` (Coinbase Exchange messages; the default for files) or `record` (bus records;
    /// always used for `--topic`).
    #[arg(long, value_enum, default_value_t = GenerateFormat::Feed)]
    pub format: GenerateFormat,
    /// The random seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start of trade times, RFC 3339 (default: now minus count/rate).
    #[arg(long)]
    pub start: Option<String>,
    /// The portfolio file.
    #[arg(long, default_value = "required_data/my_Portfolio.json")]
    pub portfolio: PathBuf,
    /// The coin map.
    #[arg(long, default_value = "required_data/coin_map.json")]
    pub coin_map: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateFormat {
    /// Coinbase Exchange feed messages.
    Feed,
    /// Bus records.
    Record,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProgressFormat {
    /// One short line per batch.
    Human,
    /// Spark-style progress records, one JSON line per batch.
    Json,
}
