//! tokenfleet gateway: the public `tokenfleet.v1.TextGeneration` API in front of a pool of
//! workers. Stateless: everything it knows about workers is soft state rebuilt from their
//! load streams.

pub mod auth;
pub mod config;
pub mod errors;
pub mod generation;
pub mod metrics;
pub mod pool;
pub mod routing;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod text;
pub mod validate;
