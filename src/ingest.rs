//! `coinstream ingest coinbase|gateio`: builds a venue client from the flags and a Kafka producer,
//! and connects the two. Shutdown order on SIGINT/SIGTERM: the client stops reading, the producer
//! publishes what was already read and is flushed, the process exits 0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, bail};
use connectors::coinbase::config::{CoinbaseConfig, FeedKind};
use connectors::coinbase::gaps::TradeTracker;
use connectors::common::counters::{CounterSet, add};
use connectors::gateio::config::GateioConfig;
use connectors::gateio::state::PublishedState;
use connectors::kafka::config::Compression;
use connectors::kafka::producer::TopicProducer;
use tokio::sync::{mpsc, watch};

use crate::cli::{CoinbaseFeed, IngestCoinbaseArgs, IngestCommand, IngestGateioArgs};

/// Records buffered between a venue client and the producer.
const CHANNEL_CAPACITY: usize = 50_000;
/// Records per producer batch at most.
const MAX_BATCH: usize = 10_000;
/// How often the counters are logged.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How long the brokers may take to answer the startup check.
const KAFKA_CHECK_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn dispatch(command: IngestCommand) -> anyhow::Result<()> {
    match command {
        IngestCommand::Coinbase(args) => coinbase(args).await,
        IngestCommand::Gateio(args) => gateio(args).await,
    }
}

async fn producer(
    brokers: Option<String>,
    topic: &str,
    compression: Compression,
) -> anyhow::Result<TopicProducer> {
    let brokers = brokers.unwrap_or_else(connectors::kafka::default_brokers);
    let producer = TopicProducer::new(&brokers, topic, compression, &BTreeMap::new())?;
    producer
        .check(KAFKA_CHECK_TIMEOUT)
        .await
        .with_context(|| format!("Kafka at {brokers}"))?;
    Ok(producer)
}

/// A stop signal that turns true on the first SIGINT or SIGTERM; a second one exits at once.
fn stop_on_signal() -> (Arc<watch::Sender<bool>>, watch::Receiver<bool>) {
    let (stop, shutdown) = watch::channel(false);
    let stop = Arc::new(stop);
    let signalled = stop.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("Stopping: no more reads; publishing what was read, then flushing.");
        let _ = signalled.send(true);
        signal().await;
        tracing::warn!("Second signal: exiting without flushing.");
        std::process::exit(130);
    });
    (stop, shutdown)
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn every(period: Duration, mut tick: impl FnMut() + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.tick().await;
        loop {
            interval.tick().await;
            tick();
        }
    })
}

/// Publishes what `rx` yields until it closes, counting deliveries in `published` and logging
/// `counters` every [`PROGRESS_INTERVAL`] meanwhile.
async fn publish_all<T, C>(
    producer: &TopicProducer,
    rx: &mut mpsc::Receiver<T>,
    encode: impl FnMut(T) -> (String, Vec<u8>),
    counters: &Arc<C>,
    published: &AtomicU64,
    progress_message: &'static str,
) -> anyhow::Result<()>
where
    C: CounterSet + Send + Sync + 'static,
{
    let progress = {
        let counters = counters.clone();
        every(PROGRESS_INTERVAL, move || counters.log(progress_message))
    };
    let sent = producer
        .publish_from(rx, MAX_BATCH, encode, |n| add(published, n))
        .await;
    progress.abort();
    sent.map(drop).context("publishing to Kafka")
}

async fn coinbase(args: IngestCoinbaseArgs) -> anyhow::Result<()> {
    let feed = match args.feed {
        CoinbaseFeed::Exchange => FeedKind::Exchange,
        CoinbaseFeed::Advanced => FeedKind::Advanced,
    };
    let mut config = CoinbaseConfig::new(feed, args.coin_map, args.portfolio);
    config.url = args.url;
    if !args.products.is_empty() {
        config.product_ids = Some(args.products);
    }
    config.idle_timeout_ms = args.idle_timeout_ms;
    let settings = config.validate()?;
    let producer = producer(args.brokers, &args.topic, args.compression).await?;
    tracing::info!(
        url = %settings.url,
        products = settings.products.join(","),
        topic = %args.topic,
        "Ingesting Coinbase trades."
    );
    let (stop, shutdown) = stop_on_signal();
    let mut feed = connectors::coinbase::client::spawn(
        settings,
        TradeTracker::default(),
        CHANNEL_CAPACITY,
        shutdown,
    );
    let counters = feed.counters.clone();
    let published = publish_all(
        &producer,
        &mut feed.trades,
        |t| (t.record.symbol.clone(), t.record.to_json()),
        &counters,
        &counters.published,
        "Coinbase ingest progress.",
    )
    .await;
    if let Err(e) = published {
        let _ = stop.send(true);
        return Err(e);
    }
    let ended = feed.task.await.context("the Coinbase client task failed")?;
    producer.flush()?;
    counters.log("Coinbase ingest stopped.");
    // Every product refused, or nothing received could be used: not a success.
    Ok(ended?)
}

async fn gateio(args: IngestGateioArgs) -> anyhow::Result<()> {
    let pairs = if args.pairs.is_empty() {
        pairs_of_portfolio(&args.portfolio)?
    } else {
        args.pairs
    };
    let mut config = GateioConfig::new(pairs);
    if let Some(url) = args.url {
        config.base_url = url;
    }
    config.interval = args.interval;
    config.from_secs = args
        .from
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("--from")?;
    config.to_secs = args
        .to
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("--to")?;
    config.once = args.once;
    let settings = config.validate()?;
    let producer = producer(args.brokers, &args.topic, args.compression).await?;
    tracing::info!(
        url = %settings.base_url,
        pairs = settings.pairs.join(","),
        interval = settings.interval.name(),
        topic = %args.topic,
        "Ingesting Gate.io candles."
    );
    let mut state = match &args.state {
        Some(path) => PublishedState::load(path)?,
        None => PublishedState::default(),
    };
    let interval = settings.interval.name().to_owned();
    let (_stop, shutdown) = stop_on_signal();
    let counters = Arc::new(connectors::gateio::poller::Counters::default());
    let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
    let poller = tokio::spawn(connectors::gateio::poller::run(
        settings,
        state.watermarks(&interval),
        tx,
        shutdown,
        counters.clone(),
    ));
    let published = publish_all(
        &producer,
        &mut rx,
        |c: connectors::gateio::candles::CandleRecord| (c.currency_pair.clone(), c.to_json()),
        &counters,
        &counters.published,
        "Gate.io ingest progress.",
    )
    .await;
    if let Err(e) = published {
        poller.abort();
        return Err(e);
    }
    let polled = poller.await.context("the Gate.io poller task failed")?;
    producer.flush()?;
    counters.log("Gate.io ingest stopped.");
    let published_up_to = polled?;
    // Every candle handed to the producer is acknowledged now: the state may move past them.
    if let Some(path) = &args.state {
        state.record(&interval, &published_up_to);
        state.save(path)?;
    }
    Ok(())
}

/// Gate.io pairs for the portfolio's products: `X-USD` is traded there as `X_USDT`.
fn pairs_of_portfolio(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let portfolio = connectors::common::reference_files::read_portfolio(path)?;
    let pairs: Vec<String> = portfolio
        .keys()
        .filter_map(|product| {
            let (base, quote) = product.split_once('-')?;
            let quote = if quote == "USD" { "USDT" } else { quote };
            Some(format!("{base}_{quote}"))
        })
        .collect();
    if pairs.is_empty() {
        bail!(
            "the portfolio {} has no products; pass --pairs",
            path.display()
        );
    }
    Ok(pairs)
}

/// Unix seconds from RFC 3339, a date (`2026-11-20`, midnight UTC) or a number of seconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    bail!(
        "{text:?} is not a time: expected RFC 3339 (2026-11-20T00:00:00Z), a date (2026-11-20) or unix seconds"
    )
}
