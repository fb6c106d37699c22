//! # coinstream
//!
//! The library half of the `coinstream` binary: what every command, the sqllogictest runner and
//! the tests share. Today that is the config loader ([`config::Config::load`]); the binary
//! (`src/main.rs`) parses flags and wires components around it.

pub mod config;
