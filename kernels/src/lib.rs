//! tokenfleet's CUDA kernels and their launchers. Without the `cuda` feature this crate is
//! an empty shell so the workspace builds anywhere.
