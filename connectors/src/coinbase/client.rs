//! The long-running feed client: connect, subscribe, read, and on any failure reconnect with
//! jittered exponential backoff and subscribe again. Trades leave normalised, deduplicated and in
//! trade-id order per product through a bounded channel (a slow consumer slows the reader, it does
//! not grow a queue); the `coinstream ingest coinbase` command publishes them to Kafka, the engine
//! source hands them to SQL.
//!
//! Reconnecting lives here rather than in the engine's restart loop because the trade-id state
//! ([`TradeTracker`]) must outlive a connection: it is what keeps the `last_match` and the overlap
//! after a reconnect from being published twice, and what reveals the trades lost in between.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::advanced;
use super::config::{FeedKind, Settings};
use super::feed::{self, FeedEvent};
use super::gaps::{Lost, Seen, TradeTracker};
use crate::common::backoff::Backoff;
use crate::common::counters::{CounterSet, add, read};
use crate::common::excerpt::excerpt;
use crate::common::trade::{TradeRecord, rfc3339_micros};
use crate::common::websocket::{self, WsStream};

/// One trade to hand on, with when its frame arrived.
#[derive(Debug, Clone)]
pub struct ReceivedTrade {
    /// The bus record.
    pub record: TradeRecord,
    /// When the frame holding it was read.
    pub received_at: SystemTime,
}

/// What the client counted since it started; shared with whoever consumes its trades (which
/// counts `published`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames received.
    pub messages_in: AtomicU64,
    /// Trades not seen before (whether or not their product is known).
    pub trades: AtomicU64,
    /// Trades the consumer published (Kafka acknowledged, or the engine committed).
    pub published: AtomicU64,
    /// Trades dropped as replays (`last_match`, snapshots, overlaps after a reconnect).
    pub duplicates: AtomicU64,
    /// Trades dropped because their product is not in the coin map.
    pub unknown_products: AtomicU64,
    /// `error` messages from the exchange.
    pub exchange_errors: AtomicU64,
    /// Frames (or trades inside a frame) that could not be used.
    pub invalid: AtomicU64,
    /// Connections opened after the first one.
    pub reconnects: AtomicU64,
    /// Attempts to connect that failed.
    pub connect_failures: AtomicU64,
    /// Connections replaced because they went silent.
    pub idle_timeouts: AtomicU64,
    /// Runs of trade ids that never arrived.
    pub gaps: AtomicU64,
    /// Trades in those runs.
    pub lost_trades: AtomicU64,
}

impl CounterSet for Counters {
    /// Every counter, plus `skipped` (duplicates and unknown products) and `errors` (exchange
    /// errors and unusable frames).
    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let duplicates = read(&self.duplicates);
        let unknown = read(&self.unknown_products);
        let exchange_errors = read(&self.exchange_errors);
        let invalid = read(&self.invalid);
        vec![
            ("messages_in", read(&self.messages_in)),
            ("trades", read(&self.trades)),
            ("published", read(&self.published)),
            ("skipped", duplicates + unknown),
            ("duplicates", duplicates),
            ("unknown_products", unknown),
            ("errors", exchange_errors + invalid),
            ("exchange_errors", exchange_errors),
            ("invalid", invalid),
            ("reconnects", read(&self.reconnects)),
            ("connect_failures", read(&self.connect_failures)),
            ("idle_timeouts", read(&self.idle_timeouts)),
            ("gaps", read(&self.gaps)),
            ("lost_trades", read(&self.lost_trades)),
        ]
    }
}

/// A running client: its trades and counters.
pub struct FeedTask {
    /// Trades in trade-id order per product; closes when the client stops.
    pub trades: mpsc::Receiver<ReceivedTrade>,
    /// The client's counters.
    pub counters: Arc<Counters>,
    /// The client task; it ends when `shutdown` turns true (or its sender is dropped) or when
    /// `trades` is dropped.
    pub task: JoinHandle<()>,
}

/// Starts the client on the current runtime. `tracker` carries what was already handed on (empty,
/// or seeded from a checkpoint); `capacity` bounds the channel of trades.
pub fn spawn(
    settings: Settings,
    tracker: TradeTracker,
    capacity: usize,
    shutdown: watch::Receiver<bool>,
) -> FeedTask {
    let (tx, trades) = mpsc::channel(capacity.max(1));
    let counters = Arc::new(Counters::default());
    let client = Client {
        settings,
        tracker,
        counters: counters.clone(),
        tx,
        warned_unknown: HashSet::new(),
        connections: 0,
        healthy: false,
    };
    let task = tokio::spawn(client.run(shutdown));
    FeedTask {
        trades,
        counters,
        task,
    }
}

/// Why a connection ended.
enum End {
    /// Shutdown was asked for.
    Shutdown,
    /// Nobody takes the trades any more.
    ReceiverGone,
    /// The connection failed or went silent: reconnect.
    Lost(String),
}

struct Client {
    settings: Settings,
    tracker: TradeTracker,
    counters: Arc<Counters>,
    tx: mpsc::Sender<ReceivedTrade>,
    warned_unknown: HashSet<String>,
    connections: u64,
    /// The current connection delivered something useful (so the backoff starts over).
    healthy: bool,
}

impl Client {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.healthy = false;
            match self.session(&mut shutdown).await {
                End::Shutdown | End::ReceiverGone => break,
                End::Lost(reason) => {
                    if self.healthy {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        url = %self.settings.url,
                        reason = %reason,
                        retry_in_ms = delay.as_millis() as u64,
                        "Coinbase feed connection lost; reconnecting."
                    );
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.counters.log("Coinbase feed client stopped.");
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> End {
        let url = self.settings.url.clone();
        let mut ws = tokio::select! {
            biased;
            _ = shutdown.changed() => return End::Shutdown,
            connected = websocket::connect(&url, self.settings.connect_timeout) => match connected {
                Ok(ws) => ws,
                Err(e) => {
                    add(&self.counters.connect_failures, 1);
                    return End::Lost(format!("cannot connect: {e}"));
                }
            },
        };
        if self.connections > 0 {
            add(&self.counters.reconnects, 1);
        }
        self.connections += 1;
        // The feed disconnects a client that has not subscribed within 5 s: subscribe first.
        let requests = match self.settings.feed {
            FeedKind::Exchange => vec![feed::subscribe_message(&self.settings.products)],
            FeedKind::Advanced => advanced::subscribe_messages(&self.settings.products),
        };
        for request in requests {
            if let Err(e) = ws.send(Message::text(request)).await {
                return End::Lost(format!("cannot subscribe: {e}"));
            }
        }
        tracing::info!(
            url = %url,
            products = self.settings.products.join(","),
            "Connected to the Coinbase feed; subscribing."
        );
        let idle = self.settings.idle_timeout;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    close(&mut ws).await;
                    return End::Shutdown;
                }
                next = tokio::time::timeout(idle, ws.next()) => next,
            };
            let bytes = match next {
                Err(_) => {
                    add(&self.counters.idle_timeouts, 1);
                    return End::Lost(format!("no message for {idle:?}"));
                }
                Ok(None) => return End::Lost("the server closed the connection".into()),
                Ok(Some(Err(e))) => return End::Lost(format!("read failed: {e}")),
                Ok(Some(Ok(Message::Text(text)))) => text.as_bytes().to_vec(),
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes.to_vec(),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return End::Lost(match frame {
                        Some(f) => {
                            format!("the server closed the connection: {} {}", f.code, f.reason)
                        }
                        None => "the server closed the connection".into(),
                    });
                }
                // tungstenite answers pings by itself.
                Ok(Some(Ok(_))) => continue,
            };
            if let Err(end) = self.frame(&bytes).await {
                return end;
            }
        }
    }

    async fn frame(&mut self, bytes: &[u8]) -> Result<(), End> {
        add(&self.counters.messages_in, 1);
        let received_at = SystemTime::now();
        let ingest_time = rfc3339_micros(chrono::Utc::now());
        match self.settings.feed {
            FeedKind::Exchange => {
                let event = feed::parse(bytes, &self.settings.coins, &ingest_time);
                self.event(event, bytes, received_at).await
            }
            FeedKind::Advanced => {
                for event in advanced::parse(bytes, &self.settings.coins, &ingest_time) {
                    self.event(event, bytes, received_at).await?;
                }
                Ok(())
            }
        }
    }

    async fn event(
        &mut self,
        event: FeedEvent,
        frame: &[u8],
        received_at: SystemTime,
    ) -> Result<(), End> {
        match event {
            FeedEvent::Trade { record, last_match } => {
                self.healthy = true;
                match self.tracker.trade(&record.symbol, record.trade_id) {
                    Seen::Duplicate => {
                        add(&self.counters.duplicates, 1);
                        tracing::trace!(product = %record.symbol, trade_id = record.trade_id, last_match, "Replayed trade skipped.");
                        return Ok(());
                    }
                    Seen::New { lost } => {
                        if let Some(lost) = lost {
                            self.lost(&record.symbol, lost, "trade ids skipped between two trades");
                        }
                    }
                }
                add(&self.counters.trades, 1);
                if record.coin_name.is_none() {
                    add(&self.counters.unknown_products, 1);
                    if self.warned_unknown.insert(record.symbol.clone()) {
                        tracing::warn!(
                            product = %record.symbol,
                            "Trades of a product missing from the coin map are counted and dropped."
                        );
                    }
                    return Ok(());
                }
                self.tx
                    .send(ReceivedTrade {
                        record,
                        received_at,
                    })
                    .await
                    .map_err(|_| End::ReceiverGone)
            }
            FeedEvent::Heartbeat {
                product_id,
                last_trade_id,
            } => {
                self.healthy = true;
                if let Some(lost) = self.tracker.heartbeat(&product_id, last_trade_id) {
                    self.lost(
                        &product_id,
                        lost,
                        "the heartbeat's last_trade_id is ahead of the last trade received",
                    );
                }
                Ok(())
            }
            FeedEvent::Subscriptions => {
                self.healthy = true;
                tracing::info!(frame = %excerpt(frame), "Subscribed to the Coinbase feed.");
                Ok(())
            }
            FeedEvent::Error { message, reason } => {
                add(&self.counters.exchange_errors, 1);
                tracing::warn!(
                    message = %message,
                    reason = reason.as_deref().unwrap_or(""),
                    frame = %excerpt(frame),
                    "The exchange sent an error message."
                );
                Ok(())
            }
            FeedEvent::Other(kind) => {
                self.healthy = true;
                tracing::trace!(kind = %kind, "Feed message of an unused type skipped.");
                Ok(())
            }
            FeedEvent::Invalid(reason) => {
                add(&self.counters.invalid, 1);
                tracing::warn!(reason = %reason, frame = %excerpt(frame), "Unusable feed message skipped.");
                Ok(())
            }
        }
    }

    fn lost(&self, product: &str, lost: Lost, why: &'static str) {
        add(&self.counters.gaps, 1);
        add(&self.counters.lost_trades, lost.count());
        // Data loss: ERROR, per the logging rules.
        tracing::error!(
            product,
            first_trade_id = lost.first,
            last_trade_id = lost.last,
            count = lost.count(),
            why,
            "Trades lost on the feed (the matches channel cannot replay them)."
        );
    }
}

async fn close(ws: &mut WsStream) {
    let closing = ws.close(None);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
}
