//! The engine's one backoff policy ([`engine::retry::Backoff`]), re-exported for the connectors'
//! own loops that must outlive a failure: the Coinbase feed client's reconnects (its trade-id
//! state spans connections) and the Gate.io client.

pub use engine::retry::Backoff;
