//! Compiles `proto/` (package `hanzo.node.v1`) with protox (no system protoc) into
//! tonic code, and keeps the descriptor set for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: [&str; 6] = ["auth", "node", "operator", "repo", "chain", "inference"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<String> = PROTOS
        .iter()
        .map(|p| format!("../proto/hanzo/node/v1/{p}.proto"))
        .collect();
    let fds = protox::compile(&files, ["../proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hanzo_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
