//! Generates the tonic/prost code for `tokenfleet/v1/*.proto` into OUT_DIR, with the
//! vendored protoc so a fresh machine needs no protoc, plus a descriptor set for
//! server reflection.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["tokenfleet/v1/common.proto", "tokenfleet/v1/text_generation.proto", "tokenfleet/v1/worker.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().file_descriptor_set_path(out_dir.join("tokenfleet_descriptor.bin")).compile_protos(&protos, &["."])?;
    Ok(())
}
