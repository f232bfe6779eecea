//! Puts the dashboard (`dashboard/dist/`, built by `scripts/setup` with npm) where
//! `src/dashboard.rs` includes it; without a build, a page that says how to make one.

use std::{env, fs, path::PathBuf};

fn main() {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboard/dist");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for (file, missing) in [
        (
            "index.html",
            "<!doctype html><title>hanzo-node</title><p>This node was built without its dashboard: run <code>scripts/setup</code> (it builds <code>dashboard/</code> with npm), then build the node again.</p>",
        ),
        ("app.js", ""),
    ] {
        let src = dist.join(file);
        println!("cargo:rerun-if-changed={}", src.display());
        let bytes = fs::read(&src).unwrap_or_else(|_| missing.as_bytes().to_vec());
        fs::write(out.join(file), bytes).expect("OUT_DIR is writable");
    }
}
