# Sourced by the scripts: puts the project's pinned tools (anvil, forge) on PATH.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/node_modules/@foundry-rs/anvil-linux-amd64/bin:$root/node_modules/@foundry-rs/forge-linux-amd64/bin:$root/target/debug:$PATH"
