//! Text handling of the gateway: incremental detokenization and stop strings. Workers
//! stay token-in/token-out.

pub mod detok;
pub mod stop;
