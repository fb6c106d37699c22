//! Code that more than one connector needs. It names no venue.

pub mod reference_files;
pub mod trade;
