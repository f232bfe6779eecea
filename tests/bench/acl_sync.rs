//! ACL build benchmark (run by `scripts/bench-acl-sync`): creates at least `--events`
//! contract logs on a fresh anvil, then measures a fresh node's time to build its ACL
//! from them against the same `eth_getLogs` calls alone, interleaved over a few
//! rounds, and prints medians as `key=value` lines.

use std::{sync::Arc, time::Instant};

use alloy::{
    primitives::B256,
    providers::{DynProvider, Provider},
    rpc::types::Filter,
};
use futures_util::future::try_join_all;
use hanzo_e2e::Devnet;
use hanzo_node::{
    acl::{Acl, Key, Member, Snapshot},
    chain::{self, Syncer, sync::Step},
    keys::SshKey,
    store::Store,
};

const ROUNDS: usize = 3;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each worker mints identities with one key each (3 logs per identity), creates repos
/// (2 logs each) and adds committers (1 log each) until it has made `target` logs.
async fn generate(net: &Devnet, worker: usize, target: u64) -> anyhow::Result<u64> {
    let client = net.client(worker).await;
    let mut logs = 0;
    let mut n = 0u64;
    let me = format!("w{worker}");
    client.mint_identity(&me).await?;
    logs += 2;
    client.create_repo(&format!("{me}-repo"), &me, false).await?;
    logs += 2;
    while logs < target {
        let handle = format!("w{worker}-u{n}");
        client.mint_identity(&handle).await?;
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.to_be_bytes());
        key[8] = worker as u8 + 1;
        client.add_key(&handle, &Key::Ssh(SshKey(key))).await?;
        client.set_member(&format!("{me}-repo"), &handle, Member::Committer, true).await?;
        logs += 4;
        n += 1;
    }
    Ok(logs)
}

async fn getlogs_only(provider: &DynProvider, net: &Devnet, to: u64, range: u64) -> anyhow::Result<usize> {
    let mut from = net.deployment.block;
    let mut count = 0;
    while from <= to {
        let end = to.min(from + range - 1);
        let filter = Filter::new().address(net.deployment.addresses().to_vec()).from_block(from).to_block(end);
        count += provider.get_logs(&filter).await?.len();
        from = end + 1;
    }
    Ok(count)
}

async fn build_acl(provider: &DynProvider, net: &Devnet, to: u64) -> anyhow::Result<(u64, Arc<Snapshot>)> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path())?);
    let (acl, publisher) = Acl::new(Snapshot::default());
    let mut config = net.config().chain;
    config.confirmations = 0;
    let (mut syncer, _status) = Syncer::new(provider.clone(), net.deployment.clone(), config, store, publisher)?;
    loop {
        match syncer.step().await? {
            Step::Advanced { to: at, .. } if at >= to => break,
            Step::Advanced { .. } => {}
            other => anyhow::bail!("unexpected sync step {other:?}"),
        }
    }
    let snap = acl.snapshot();
    Ok((snap.events_applied, snap))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = arg("--events", 10_000);
    let workers = arg("--workers", 4) as usize;
    let net = Devnet::start().await;
    let started = Instant::now();
    let per_worker = events.div_ceil(workers as u64);
    let made: u64 = try_join_all((1..=workers).map(|w| generate(&net, w, per_worker))).await?.iter().sum();
    let to = net.head().await;
    println!("# generated {made} logs in {:.1}s over {} blocks", started.elapsed().as_secs_f64(), to - net.deployment.block);

    let provider = chain::connect(&net.anvil.endpoint(), None).await?;
    let range = net.config().chain.max_block_range;
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    let mut applied = 0;
    for round in 0..ROUNDS {
        let t = Instant::now();
        let n = getlogs_only(&provider, &net, to, range).await?;
        base.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let (events_applied, snap) = build_acl(&provider, &net, to).await?;
        ours.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(events_applied as usize == n, "ACL applied {events_applied} logs, eth_getLogs returned {n}");
        anyhow::ensure!(snap.block.map(|b| b.hash) != Some(B256::ZERO), "no block");
        println!(
            "# round {round}: getlogs {:.3}s, acl build {:.3}s, {} identities, {} repos",
            base[round], ours[round], snap.state.identities.len(), snap.state.repos.len()
        );
        applied = events_applied;
    }
    let (getlogs_s, acl_build_s) = (median(base), median(ours));
    println!("events={applied}");
    println!("blocks={}", to - net.deployment.block + 1);
    println!("rounds={ROUNDS}");
    println!("getlogs_s={getlogs_s:.3}");
    println!("acl_build_s={acl_build_s:.3}");
    println!("ratio={:.3}", acl_build_s / getlogs_s);
    println!("events_per_s={:.0}", applied as f64 / acl_build_s);
    Ok(())
}
