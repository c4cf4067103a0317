//! The `tokenfleet.v1` contract shared by the gateway, the workers and the CLI.
//!
//! - [`v1`]: generated messages, clients and servers of `TextGeneration` and `Worker`.
//! - [`block_hash`]: the chained KV-block hashes that workers publish and gateways route on;
//!   both sides must compute them identically, so the one implementation lives here.
//! - [`finish_reason_str`]: the JSON/CLI spelling of [`v1::FinishReason`].

pub mod block_hash;
pub mod limits;

/// Generated protobuf and gRPC code of package `tokenfleet.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tokenfleet.v1");
}

/// Encoded `FileDescriptorSet` of every tokenfleet proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tokenfleet_descriptor");

/// The JSON/CLI string of a finish reason ("length", "eos", "stop_token", "stop_sequence",
/// "cancelled"); "unspecified" for the zero value.
pub fn finish_reason_str(reason: v1::FinishReason) -> &'static str {
    use v1::FinishReason as F;
    match reason {
        F::Unspecified => "unspecified",
        F::Length => "length",
        F::Eos => "eos",
        F::StopToken => "stop_token",
        F::StopSequence => "stop_sequence",
        F::Cancelled => "cancelled",
    }
}

/// Shared runtime of the gateway and worker processes (feature `runtime`).
#[cfg(feature = "runtime")]
pub mod runtime;
