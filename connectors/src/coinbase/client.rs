//! The long-running feed client: connect, subscribe, read, and on any failure reconnect with
//! jittered exponential backoff and subscribe again. Trades leave normalised, deduplicated and in
//! trade-id order per product through a bounded channel (a slow consumer slows the reader, it does
//! not grow a queue); the `coinstream ingest coinbase` command publishes them to Kafka, the engine
//! source hands them to SQL.
//!
//! Reconnecting lives here rather than in the engine's restart loop because the trade-id state
//! ([`TradeTracker`]) must outlive a connection: it is what keeps the `last_match` and the overlap
//! after a reconnect from being published twice, and what reveals the trades lost in between.
//!
//! What is not retried, because retrying cannot help:
//! - an `error` "Failed to subscribe" naming one of the products (unknown or delisted; the feed
//!   then ignores the whole request): that product is dropped with an ERROR and the others are
//!   subscribed again at once; when none is left (or the refusal names no product and there are
//!   several), the client stops with a permanent error naming the products and the reason;
//! - an authentication failure (Advanced Trade also reports an unknown channel that way): stop.
//!
//! Liveness comes from data: only trades and heartbeats keep a connection; WebSocket pings (which
//! tungstenite answers by itself) and other frames do not, so a connection that only keeps the
//! transport up is replaced after the idle timeout.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use engine::{Error, Result, Retry};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::advanced;
use super::config::{FeedKind, Settings};
use super::feed::{self, FeedEvent};
use super::gaps::{Lost, Seen, TradeTracker};
use crate::common::counters::{CounterSet, add, read};
use crate::common::excerpt::excerpt;
use crate::common::trade::{TradeRecord, rfc3339_micros};
use crate::common::websocket::{self, WsStream};
use engine::retry::Backoff;

/// One trade to hand on, with when its frame arrived.
#[derive(Debug, Clone)]
pub struct ReceivedTrade {
    /// The bus record.
    pub record: TradeRecord<'static>,
    /// When the frame holding it was read.
    pub received_at: SystemTime,
}

/// A frame (or a trade inside one) that could not be used, as received, with why.
#[derive(Debug, Clone)]
pub struct RejectedFrame {
    /// The frame exactly as received.
    pub frame: Vec<u8>,
    /// Why it was rejected.
    pub reason: String,
    /// The frame's number since the client started (from 1).
    pub number: u64,
    /// When it was read.
    pub received_at: SystemTime,
}

/// Unusable frames logged at WARN each; later ones are only counted (the counters are logged).
const MAX_WARNED_INVALID: u64 = 10;

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
    /// Unusable frames, when they are [`Unusable::HandedOn`]; closes when the client stops.
    pub rejected: Option<mpsc::Receiver<RejectedFrame>>,
    /// The client's counters.
    pub counters: Arc<Counters>,
    /// The client task; it ends when `shutdown` turns true (or its sender is dropped), when
    /// `trades` is dropped, or when the exchange refused every product or the credentials (a
    /// permanent error). A run whose every frame was unusable also ends in a permanent error.
    pub task: JoinHandle<Result<()>>,
}

/// What the client does with frames (or trades in them) it cannot use, e.g. a price of zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Counted and logged, not handed on.
    Counted,
    /// Counted, and handed on through [`FeedTask::rejected`] (for the engine's dead letters);
    /// whoever takes trades must take those too.
    HandedOn,
}

/// Starts the client on the current runtime with unusable frames [`Unusable::Counted`]; see
/// [`start`].
pub fn spawn(
    settings: Settings,
    tracker: TradeTracker,
    capacity: usize,
    shutdown: watch::Receiver<bool>,
) -> FeedTask {
    start(settings, tracker, capacity, shutdown, Unusable::Counted)
}

/// Starts the client on the current runtime. `tracker` carries what was already handed on (empty,
/// or seeded from a checkpoint); `capacity` bounds the channel of trades (and that of unusable
/// frames, when they are [`Unusable::HandedOn`]).
pub fn start(
    settings: Settings,
    tracker: TradeTracker,
    capacity: usize,
    shutdown: watch::Receiver<bool>,
    unusable: Unusable,
) -> FeedTask {
    let (tx, trades) = mpsc::channel(capacity.max(1));
    let (rejected_tx, rejected) = if unusable == Unusable::HandedOn {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let counters = Arc::new(Counters::default());
    let client = Client {
        products: settings.products.clone(),
        settings,
        tracker,
        counters: counters.clone(),
        tx,
        rejected_tx,
        warned_unknown: HashSet::new(),
        connections: 0,
        healthy: false,
        used: 0,
        first_invalid: None,
    };
    let task = tokio::spawn(client.run(shutdown));
    FeedTask {
        trades,
        rejected,
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
    /// The exchange refused some products, which were dropped: subscribe the rest at once.
    Resubscribe,
    /// Retrying cannot help.
    Fatal(Error),
}

/// What an `error` message means for the subscription.
#[derive(Debug, PartialEq, Eq)]
enum ErrorVerdict {
    /// These products of ours cannot be subscribed (unknown, delisted).
    Refused(Vec<String>),
    /// Nothing will work on retry (credentials; a refusal naming none of several products).
    Fatal,
    /// Something that may pass (a slow consumer, a refusal naming a product we no longer ask for).
    Transient,
}

/// Reads an `error` message (`message` and the optional `reason`) against the products we
/// subscribe. The docs promise only `message`; a refusal's `reason` names the product in practice
/// ("DOT-USD is not a valid product") but not always ("Invalid product ID provided").
fn judge_error(message: &str, reason: Option<&str>, products: &[String]) -> ErrorVerdict {
    let text = format!("{message} {}", reason.unwrap_or_default());
    let lower = text.to_ascii_lowercase();
    if lower.contains("authentication") || lower.contains("unauthorized") {
        return ErrorVerdict::Fatal;
    }
    let refused = lower.contains("failed to subscribe")
        || lower.contains("not a valid product")
        || lower.contains("invalid product");
    if !refused {
        return ErrorVerdict::Transient;
    }
    let named: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.contains('-') && word.chars().any(|c| c.is_ascii_uppercase()))
        .collect();
    let ours: Vec<String> = products
        .iter()
        .filter(|p| named.contains(&p.as_str()))
        .cloned()
        .collect();
    match (ours.is_empty(), named.is_empty(), products.len()) {
        (false, _, _) => ErrorVerdict::Refused(ours),
        // It names a product, but not one we ask for (any more).
        (true, false, _) => ErrorVerdict::Transient,
        (true, true, 1) => ErrorVerdict::Refused(products.to_vec()),
        (true, true, _) => ErrorVerdict::Fatal,
    }
}

struct Client {
    settings: Settings,
    /// The products still subscribed (the exchange may refuse some).
    products: Vec<String>,
    tracker: TradeTracker,
    counters: Arc<Counters>,
    tx: mpsc::Sender<ReceivedTrade>,
    rejected_tx: Option<mpsc::Sender<RejectedFrame>>,
    warned_unknown: HashSet<String>,
    connections: u64,
    /// The current connection delivered something useful (so the backoff starts over).
    healthy: bool,
    /// Trades and heartbeats received (whether or not new).
    used: u64,
    /// Why the first unusable frame was unusable.
    first_invalid: Option<String>,
}

impl Client {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        let outcome = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            self.healthy = false;
            match self.session(&mut shutdown).await {
                End::Shutdown | End::ReceiverGone => break Ok(()),
                End::Fatal(e) => {
                    tracing::error!(error = %e, "Coinbase feed client stopped: retrying cannot help.");
                    break Err(e);
                }
                End::Resubscribe => continue,
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
                        _ = shutdown.changed() => break Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        self.counters.log("Coinbase feed client stopped.");
        outcome.and(self.nothing_usable().map_or(Ok(()), Err))
    }

    fn error(&self, message: String) -> Error {
        Error::Source {
            name: format!("coinbase {}", self.settings.url),
            message,
            retry: Retry::Permanent,
            source: None,
        }
    }

    /// A run that received frames but could use none of them failed, whatever made it stop.
    fn nothing_usable(&self) -> Option<Error> {
        let invalid = read(&self.counters.invalid);
        (self.used == 0 && invalid > 0).then(|| {
            self.error(format!(
                "none of the {invalid} frames received could be used (the first: {}); check the feed kind and the url",
                self.first_invalid.as_deref().unwrap_or_default()
            ))
        })
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
            FeedKind::Exchange => vec![feed::subscribe_message(&self.products)],
            FeedKind::Advanced => advanced::subscribe_messages(&self.products),
        };
        for request in requests {
            if let Err(e) = ws.send(Message::text(request)).await {
                return End::Lost(format!("cannot subscribe: {e}"));
            }
        }
        tracing::info!(
            url = %url,
            products = self.products.join(","),
            "Connected to the Coinbase feed; subscribing."
        );
        let idle = self.settings.idle_timeout;
        // Only trades and heartbeats move it: pings and pongs prove the transport, not the feed.
        let mut alive_until = tokio::time::Instant::now() + idle;
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    close(&mut ws).await;
                    return End::Shutdown;
                }
                _ = tokio::time::sleep_until(alive_until) => {
                    add(&self.counters.idle_timeouts, 1);
                    return End::Lost(format!("no trade or heartbeat for {idle:?}"));
                }
                next = ws.next() => next,
            };
            let bytes = match next {
                None => return End::Lost("the server closed the connection".into()),
                Some(Err(e)) => return End::Lost(format!("read failed: {e}")),
                Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
                Some(Ok(Message::Close(frame))) => {
                    return End::Lost(match frame {
                        Some(f) => {
                            format!("the server closed the connection: {} {}", f.code, f.reason)
                        }
                        None => "the server closed the connection".into(),
                    });
                }
                // tungstenite answers pings by itself.
                Some(Ok(_)) => continue,
            };
            match self.frame(&bytes).await {
                Ok(true) => alive_until = tokio::time::Instant::now() + idle,
                Ok(false) => {}
                Err(end) => {
                    if matches!(end, End::Resubscribe | End::Fatal(_)) {
                        close(&mut ws).await;
                    }
                    return end;
                }
            }
        }
    }

    /// Handles one frame; `true` when it carried a trade or a heartbeat.
    async fn frame(&mut self, bytes: &[u8]) -> Result<bool, End> {
        add(&self.counters.messages_in, 1);
        let received_at = SystemTime::now();
        let ingest_time = rfc3339_micros(chrono::Utc::now());
        match self.settings.feed {
            FeedKind::Exchange => {
                // Owned: `event` needs `&mut self`, which holds the coin map the trade borrows.
                let event = feed::parse(bytes, &self.settings.coins, &ingest_time).into_owned();
                self.event(event, bytes, received_at).await
            }
            FeedKind::Advanced => {
                let mut alive = false;
                for event in advanced::parse(bytes, &self.settings.coins, &ingest_time) {
                    alive |= self.event(event, bytes, received_at).await?;
                }
                Ok(alive)
            }
        }
    }

    /// Handles one event of a frame; `true` when it is a trade or a heartbeat.
    async fn event(
        &mut self,
        event: FeedEvent<'static>,
        frame: &[u8],
        received_at: SystemTime,
    ) -> Result<bool, End> {
        match event {
            FeedEvent::Trade { record, last_match } => {
                self.healthy = true;
                self.used += 1;
                match self.tracker.trade(&record.symbol, record.trade_id) {
                    Seen::Duplicate => {
                        add(&self.counters.duplicates, 1);
                        tracing::trace!(product = %record.symbol, trade_id = record.trade_id, last_match, "Replayed trade skipped.");
                        return Ok(true);
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
                    if self.warned_unknown.insert(record.symbol.to_string()) {
                        tracing::warn!(
                            product = %record.symbol,
                            "Trades of a product missing from the coin map are counted and dropped."
                        );
                    }
                    return Ok(true);
                }
                self.tx
                    .send(ReceivedTrade {
                        record,
                        received_at,
                    })
                    .await
                    .map_err(|_| End::ReceiverGone)?;
                Ok(true)
            }
            FeedEvent::Heartbeat {
                product_id,
                last_trade_id,
            } => {
                self.healthy = true;
                self.used += 1;
                if let Some(lost) = self.tracker.heartbeat(&product_id, last_trade_id) {
                    self.lost(
                        &product_id,
                        lost,
                        "the heartbeat's last_trade_id is ahead of the last trade received",
                    );
                }
                Ok(true)
            }
            FeedEvent::Subscriptions => {
                self.healthy = true;
                tracing::info!(frame = %excerpt(frame), "Subscribed to the Coinbase feed.");
                Ok(false)
            }
            FeedEvent::Error { message, reason } => {
                add(&self.counters.exchange_errors, 1);
                self.exchange_error(&message, reason.as_deref(), frame)?;
                Ok(false)
            }
            FeedEvent::Other(kind) => {
                self.healthy = true;
                tracing::trace!(kind = %kind, "Feed message of an unused type skipped.");
                let alive =
                    self.settings.feed == FeedKind::Advanced && kind == advanced::HEARTBEATS;
                if alive {
                    self.used += 1;
                }
                Ok(alive)
            }
            FeedEvent::Invalid(reason) => {
                self.invalid(reason, frame, received_at).await?;
                Ok(false)
            }
        }
    }

    /// Counts an unusable frame, logs the first few, and hands it on when asked to.
    async fn invalid(
        &mut self,
        reason: String,
        frame: &[u8],
        received_at: SystemTime,
    ) -> Result<(), End> {
        add(&self.counters.invalid, 1);
        let n = read(&self.counters.invalid);
        if n <= MAX_WARNED_INVALID {
            tracing::warn!(reason = %reason, frame = %excerpt(frame), "Unusable feed message skipped.");
        } else {
            tracing::trace!(reason = %reason, frame = %excerpt(frame), "Unusable feed message skipped.");
        }
        if self.first_invalid.is_none() {
            self.first_invalid = Some(reason.clone());
        }
        if n == MAX_WARNED_INVALID {
            if self.used == 0 {
                // Once: the per-frame warnings stop here.
                tracing::error!(
                    frames = n,
                    first_reason = self.first_invalid.as_deref().unwrap_or_default(),
                    "Nothing the Coinbase feed sent could be used so far; check the feed kind and the url."
                );
            } else {
                tracing::warn!(
                    "Further unusable feed messages are only counted (counter invalid)."
                );
            }
        }
        if let Some(tx) = &self.rejected_tx {
            let rejected = RejectedFrame {
                frame: frame.to_vec(),
                reason,
                number: read(&self.counters.messages_in),
                received_at,
            };
            tx.send(rejected).await.map_err(|_| End::ReceiverGone)?;
        }
        Ok(())
    }

    /// Acts on an `error` message: drops refused products, stops when nothing can work.
    fn exchange_error(
        &mut self,
        message: &str,
        reason: Option<&str>,
        frame: &[u8],
    ) -> Result<(), End> {
        let because = match reason {
            Some(r) if !r.is_empty() => format!("{message}: {r}"),
            _ => message.to_owned(),
        };
        match judge_error(message, reason, &self.products) {
            ErrorVerdict::Transient => {
                tracing::warn!(
                    message = %message,
                    reason = reason.unwrap_or(""),
                    frame = %excerpt(frame),
                    "The exchange sent an error message."
                );
                Ok(())
            }
            ErrorVerdict::Fatal => Err(End::Fatal(self.error(format!(
                "the exchange refused the subscription to {}: {because}",
                self.products.join(", ")
            )))),
            ErrorVerdict::Refused(refused) => {
                self.products.retain(|p| !refused.contains(p));
                for product in &refused {
                    // Data of a configured product will never come: an operator must act.
                    tracing::error!(
                        product = %product,
                        reason = %because,
                        left = self.products.join(","),
                        "The exchange refused a product; it is dropped and the others are subscribed again."
                    );
                }
                if self.products.is_empty() {
                    return Err(End::Fatal(self.error(format!(
                        "the exchange refused every product: {} ({because})",
                        refused.join(", ")
                    ))));
                }
                Err(End::Resubscribe)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn products(p: &[&str]) -> Vec<String> {
        p.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_refusal_naming_a_product_drops_that_product() {
        let ours = products(&["BTC-USD", "ETH-USD", "DOT-USD"]);
        assert_eq!(
            judge_error(
                "Failed to subscribe",
                Some("DOT-USD is not a valid product"),
                &ours
            ),
            ErrorVerdict::Refused(products(&["DOT-USD"]))
        );
        assert_eq!(
            judge_error("Failed to subscribe", Some("ETH-USD is delisted"), &ours),
            ErrorVerdict::Refused(products(&["ETH-USD"]))
        );
        // A product we do not ask for (any more): not about this subscription.
        assert_eq!(
            judge_error(
                "Failed to subscribe",
                Some("FOO-USD is not a valid product"),
                &ours
            ),
            ErrorVerdict::Transient
        );
    }

    #[test]
    fn a_refusal_naming_no_product_is_fatal_unless_only_one_was_asked_for() {
        let reason = Some("Invalid product ID provided");
        assert_eq!(
            judge_error(
                "Failed to subscribe",
                reason,
                &products(&["BTC-USD", "ETH-USD"])
            ),
            ErrorVerdict::Fatal
        );
        assert_eq!(
            judge_error("Failed to subscribe", reason, &products(&["BTC-USD"])),
            ErrorVerdict::Refused(products(&["BTC-USD"]))
        );
    }

    #[test]
    fn authentication_failures_are_fatal_and_other_errors_transient() {
        let ours = products(&["BTC-USD"]);
        assert_eq!(
            judge_error("authentication failure", None, &ours),
            ErrorVerdict::Fatal
        );
        assert_eq!(
            judge_error("slow consumer", None, &ours),
            ErrorVerdict::Transient
        );
        assert_eq!(judge_error("", None, &ours), ErrorVerdict::Transient);
    }
}
