//! Command-line flags. The config file describes the pipeline; flags change how this process runs
//! it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use coinstream::config::{Config, Override};
use connectors::kafka::config::Compression;

/// The default config: the embedded pipeline (capture → profit.sql → Delta table), no servers
/// needed.
pub const DEFAULT_CONFIG: &str = "coinstream.toml";

/// The default `--log` filter.
pub const DEFAULT_LOG: &str =
    "info,deltalake_core=error,buoyant_kernel=error,buoyant_kernel_engine=error,scylla=warn";

#[derive(Debug, Parser)]
#[command(
    name = "coinstream",
    version,
    about = "Live crypto trades -> Arrow -> DataFusion SQL -> Delta Lake, Parquet or Cassandra"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (as RUST_LOG), e.g. `info` or `coinstream=debug`. The default keeps the Delta
    /// Lake client's per-commit lines and its notes on commit races it resolves by itself out
    /// (`--log info,deltalake_core=warn` brings them back); its errors reach ours as causes. It
    /// also keeps the Cassandra driver's (scylla) routine INFO lines out ("No sharding
    /// information received" from every Cassandra node, "Node added to cluster"), showing its
    /// warnings; our own "Connected to Cassandra" line says what matters.
    #[arg(long, global = true, default_value = DEFAULT_LOG)]
    pub log: String,
    /// How log lines (on stderr) are written: `text` (coloured only at a terminal, and never with
    /// `NO_COLOR` set) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target`.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the pipeline a config describes.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// `available-now` or `interval:<n>ms|s|m`; overrides `engine.trigger`.
        #[arg(long)]
        trigger: Option<String>,
        /// How per-batch progress is printed: `human`, a line per batch on stderr (the
        /// `[report]` table on stdout), or `json`, one record per batch and line on stdout
        /// and nothing else there (the report goes to stderr, with the logs), for
        /// `coinstream run --progress json | jq .numInputRows`.
        #[arg(long, value_enum, default_value_t = ProgressFormat::Human)]
        progress: ProgressFormat,
        /// Overrides `engine.max_records_per_batch`.
        #[arg(long)]
        max_records_per_batch: Option<usize>,
        #[command(flatten)]
        ui: UiArgs,
    },
    /// Prints the logical and physical plans of the transforms.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also runs the output transform on one batch from the source and shows per-operator metrics.
        #[arg(long)]
        analyze: bool,
        /// Only this transform (default: all).
        transform: Option<String>,
    },
    /// Runs SQL over the configured store (the output table is named after the output transform)
    /// and the reference tables.
    Query {
        #[command(flatten)]
        config: ConfigArgs,
        /// The query.
        sql: String,
        /// Reads the Delta table as an earlier commit left it: a version number (`12`) or an
        /// RFC 3339 instant (`2026-11-30T12:00:00Z`, the last commit at or before it).
        #[arg(long, value_name = "VERSION|TIMESTAMP")]
        as_of: Option<connectors::delta::AsOf>,
        /// How the result is printed (to stdout).
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
    },
    /// Compacts the Delta table a config writes (Delta's OPTIMIZE: merges small files, one commit
    /// per partition), then deletes files removed longer ago than the retention (VACUUM). Safe
    /// while a pipeline writes the table.
    Compact {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only partitions that received no file for this long (`"1h"`); default: every partition.
        #[arg(long, value_parser = humantime::parse_duration)]
        idle: Option<std::time::Duration>,
        /// Overrides `sink.compaction.retention` (`"7d"`, `"0s"`).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
    },
    /// Generates realistic trades: Coinbase Exchange feed messages into a file (for a
    /// `coinbase_capture` source), or bus records into a file or a Kafka topic (for `run` and
    /// benchmarks).
    Generate(GenerateArgs),
    /// Runs an ingest pipeline: exchange data into Kafka, until SIGINT/SIGTERM (or `--once`).
    #[command(subcommand)]
    Ingest(IngestCommand),
}

/// `coinstream ingest`: shortcuts that run a shipped pipeline (`pipelines/ingest-*.toml`), each
/// flag overriding one key of it; a flag left out keeps the file's value.
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Coinbase trades over WebSocket, normalised to bus records, into a Kafka topic keyed by
    /// product (`pipelines/ingest-coinbase.toml`).
    Coinbase(IngestArgs<CoinbaseArgs>),
    /// Gate.io closed candles over REST, into a Kafka topic keyed by currency pair
    /// (`pipelines/ingest-gateio.toml`).
    Gateio(IngestArgs<GateioArgs>),
}

/// The config file of `run`, `explain` and `query`, and the keys set over it.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The pipeline config.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Sets a key of the config file, e.g. `--set sink.keyspace=ks` or
    /// `--set 'source.topics=["a","b"]'` (the value is TOML; bare text is a string).
    /// Repeatable; applied in order before the config is checked.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<Override>,
}

impl ConfigArgs {
    /// The config file with the `--set` keys applied, checked.
    pub fn load(&self) -> anyhow::Result<Config> {
        Ok(Config::load_with(&self.config, &self.set)?)
    }
}

/// Where the UI endpoints are served: the flags of `run` and of the ingest shortcuts.
#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// Serves the UI endpoints (`/metrics` in Prometheus' text format, `/api/progress` with
    /// the last 100 progress records as JSON) at this address, e.g. `127.0.0.1:9090` or
    /// `0.0.0.0:4040`; failing to bind it is an error. Default: the first free port of
    /// 127.0.0.1:4040-4056 (loopback only; none free: a warning, and no server).
    #[arg(long, value_name = "ADDR", conflicts_with = "no_ui")]
    pub ui: Option<std::net::SocketAddr>,
    /// Serves no UI endpoints.
    #[arg(long)]
    pub no_ui: bool,
}

impl UiArgs {
    /// Where the flags say to listen.
    pub fn bind(&self) -> crate::ui::UiBind {
        match (self.ui, self.no_ui) {
            (_, true) => crate::ui::UiBind::Off,
            (Some(addr), false) => crate::ui::UiBind::At(addr),
            (None, false) => crate::ui::UiBind::Default,
        }
    }
}

/// The flags of an ingest shortcut: the pipeline it runs, the flags of its source `S`, and those
/// both shortcuts share.
#[derive(Debug, clap::Args)]
pub struct IngestArgs<S: IngestSource> {
    /// The pipeline this shortcut runs.
    #[arg(long, default_value = S::PIPELINE)]
    pub pipeline: PathBuf,
    #[command(flatten)]
    pub source: S,
    /// `source.portfolio`: the portfolio file, whose products are subscribed to when `--products`
    /// (coinbase) or `--pairs` (gateio) is left out (default required_data/my_Portfolio.json).
    #[arg(long)]
    pub portfolio: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: IngestKafkaArgs,
    #[command(flatten)]
    pub ui: UiArgs,
}

/// The source flags of one ingest shortcut.
pub trait IngestSource: clap::Args {
    /// The shipped pipeline the shortcut runs when `--pipeline` is left out.
    const PIPELINE: &'static str;
}

/// Where an ingest shortcut publishes.
#[derive(Debug, clap::Args)]
pub struct IngestKafkaArgs {
    /// `sink.brokers` and `dead_letter.brokers`: Kafka brokers (default: env KAFKA_BOOTSTRAP,
    /// else 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// `sink.topic` (default: the pipeline's, crypto_trades for coinbase and crypto_candles for
    /// gateio); dead letters go to `<topic>_dead_letters`.
    #[arg(long)]
    pub topic: Option<String>,
    /// `sink.compression`: the codec the producer compresses batches with: none, gzip, snappy,
    /// lz4 (the pipeline's default) or zstd.
    #[arg(long)]
    pub compression: Option<Compression>,
}

/// The source flags of `coinstream ingest coinbase`.
#[derive(Debug, clap::Args)]
pub struct CoinbaseArgs {
    /// `source.url`: the feed's WebSocket URL (default: wss://ws-feed.exchange.coinbase.com, or
    /// wss://advanced-trade-ws.coinbase.com with `--feed advanced`).
    #[arg(long)]
    pub url: Option<String>,
    /// `source.product_ids`: products to subscribe to, comma-separated (default: the
    /// portfolio's).
    #[arg(long, value_delimiter = ',')]
    pub products: Vec<String>,
    /// `source.feed`: which Coinbase API, `exchange` (matches + heartbeat; the pipeline's default)
    /// or `advanced` (market_trades + heartbeats).
    #[arg(long, value_parser = ["exchange", "advanced"])]
    pub feed: Option<String>,
    /// `source.idle_timeout_ms`: a connection silent for this long (no trade, no heartbeat) is
    /// replaced, in milliseconds (default 5000).
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// `source.coin_map`: the coin map (trades of products missing from it are counted and
    /// dropped; default required_data/coin_map.json).
    #[arg(long)]
    pub coin_map: Option<PathBuf>,
    /// `engine.checkpoint_dir`: a folder keeping the last trade id per product between runs, so a
    /// restart publishes no trade twice. A live feed cannot replay a batch that was planned but
    /// not committed before a crash: after one, the restart fails until the folder is removed.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

impl IngestSource for CoinbaseArgs {
    const PIPELINE: &'static str = "pipelines/ingest-coinbase.toml";
}

/// The source flags of `coinstream ingest gateio`.
#[derive(Debug, clap::Args)]
pub struct GateioArgs {
    /// `source.base_url`: the REST API's base URL (default: https://api.gateio.ws/api/v4).
    #[arg(long)]
    pub url: Option<String>,
    /// `source.currency_pairs`: currency pairs, comma-separated (default: each portfolio product
    /// `X-USD` as `X_USDT`).
    #[arg(long, value_delimiter = ',')]
    pub pairs: Vec<String>,
    /// `source.interval`: the candle interval: 1s, 10s, 1m (the pipeline's default), 5m, 15m,
    /// 30m, 1h, 4h, 8h, 1d or 7d.
    #[arg(long)]
    pub interval: Option<String>,
    /// `source.from_secs`: backfill windows starting at or after this time (RFC 3339, a date, or
    /// unix seconds).
    #[arg(long)]
    pub from: Option<String>,
    /// `source.to_secs`: end of the backfill (default: now, then keep polling unless `--once`).
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// `source.once`: one poll (or one backfill), then exit 0: for schedulers such as Airflow.
    #[arg(long)]
    pub once: bool,
    /// `engine.checkpoint_dir`: a folder (the engine's checkpoint) that keeps the last published
    /// window per pair and interval between runs, so separate runs (`--once` from a scheduler)
    /// publish each window once and resume where the last one ended; it moves only after Kafka
    /// acknowledged the candles. Windows at or before it are skipped, in a backfill too: delete
    /// the folder to publish them again.
    #[arg(long, visible_alias = "checkpoint")]
    pub state: Option<PathBuf>,
}

impl IngestSource for GateioArgs {
    const PIPELINE: &'static str = "pipelines/ingest-gateio.toml";
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
    /// Kafka brokers for `--topic` (default: env KAFKA_BOOTSTRAP, else 127.0.0.1:9092). With no
    /// broker answering within 10 s, `generate` fails.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Creates `--topic` with this many partitions (replication 1) when it does not exist; an
    /// existing topic must have as many. Several `run` instances of one group share a topic's
    /// partitions, so a 1-partition topic feeds only one of them.
    #[arg(long, requires = "topic", value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: Option<i32>,
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
    #[command(flatten)]
    pub references: ReferenceFileArgs,
}

/// Where `generate` takes products, prices and names from: the files, else the reference tables
/// of a config.
#[derive(Debug, clap::Args)]
pub struct ReferenceFileArgs {
    /// The portfolio file (default: the config's reference table `portfolio`).
    #[arg(long)]
    pub portfolio: Option<PathBuf>,
    /// The coin map (default: the config's reference table `coins`).
    #[arg(long)]
    pub coin_map: Option<PathBuf>,
    /// The config whose reference tables give the default `--portfolio` and `--coin-map`, their
    /// paths resolved against the config file as `run` resolves them (read only when one of the
    /// two flags is missing).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
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
    /// One short line per batch, on stderr.
    Human,
    /// Spark-style progress records, one JSON line per batch, on stdout.
    Json,
}

/// How `query` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    /// An aligned table with a header, for people.
    Table,
    /// CSV (RFC 4180) with a header line; decimals in full, timestamps in RFC 3339.
    Csv,
    /// One JSON object per row and line, every column present (`null` for nulls); decimals are
    /// exact JSON numbers in full (`-2874.95040000000000000000`): parse them with arbitrary
    /// precision (Python `json.loads(line, parse_float=decimal.Decimal)`, jq 1.7+) to keep every
    /// digit; timestamps are RFC 3339 strings.
    Json,
}
