//! Code that more than one connector needs. It names no venue.

pub mod backoff;
pub mod config;
pub mod counters;
pub mod excerpt;
pub mod files;
pub mod handout;
pub mod http;
pub mod reference_files;
pub mod store;
pub mod tls;
pub mod trade;
pub mod websocket;
