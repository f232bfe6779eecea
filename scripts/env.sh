# Sourced by the scripts: puts the project's pinned tools (anvil, forge, buf) and its
# build on PATH.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/node_modules/@foundry-rs/anvil-linux-amd64/bin:$root/node_modules/@bufbuild/buf-linux-x64/bin:$root/node_modules/@foundry-rs/forge-linux-amd64/bin:$root/target/debug:$PATH"
