//! fibflow (under construction)
pub mod codec;
pub mod engine;
pub mod log;
