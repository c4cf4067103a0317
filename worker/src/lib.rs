//! tokenfleet worker: loads a Llama-3.1-family checkpoint, runs the continuous-batching
//! engine on a backend (cpu, cuda, synthetic) and serves the `tokenfleet.v1.Worker` gRPC
//! service. The binary's subcommands live in [`cli`].

pub mod backend;
pub mod cli;
pub mod config;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod offline;
pub mod service;
