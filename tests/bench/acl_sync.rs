//! ACL build benchmark (run by `scripts/bench-acl-sync`): creates at least `--events`
//! contract logs on a fresh anvil, then measures a fresh node's time to build its ACL
//! from them against the same `eth_getLogs` calls alone, interleaved over a few
//! rounds, and prints medians as `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{sync::Arc, time::Instant};

use alloy::{
    primitives::{B256, U256},
    providers::ext::AnvilApi,
    providers::{DynProvider, Provider},
    rpc::types::Filter,
};
use hanzo_e2e::{Devnet, arg};
use hanzo_node::{
    acl::{Acl, Snapshot},
    chain::{self, IdentityToken, RepoToken, Syncer, sync::Step},
    store::Store,
};

const ROUNDS: usize = 9;

/// Mints identities with one key each and makes them committers of one repo (4 logs
/// per identity) until `target` logs exist. One sender, so token ids are sequential
/// and known in advance; explicit gas and fees skip estimation; automine is off and
/// each batch is mined into a few full blocks.
async fn generate(net: &Devnet, target: u64) -> anyhow::Result<u64> {
    const BATCH: u64 = 100; // identities, 3 transactions each
    let provider = chain::connect(&net.anvil.endpoint(), Some(net.dev_key(1))).await?;
    let ids = IdentityToken::new(net.deployment.identity_token, provider.clone());
    let repos = RepoToken::new(net.deployment.repo_token, provider.clone());
    let (gas, fee, tip) = (200_000, 20_000_000_000u128, 1_000_000_000u128);
    net.provider.anvil_set_auto_mine(false).await?;
    // Identity 1 owns repo 1.
    let _owner = ids
        .mint("owner".into())
        .gas(gas)
        .max_fee_per_gas(fee)
        .max_priority_fee_per_gas(tip)
        .send()
        .await?;
    let repo = U256::from(1);
    let mut last = repos
        .create("bench".into(), U256::from(1), false)
        .gas(gas)
        .max_fee_per_gas(fee)
        .max_priority_fee_per_gas(tip)
        .send()
        .await?;
    let mut logs = 4;
    let mut n = 0u64;
    while logs < target {
        for _ in 0..BATCH {
            let id = U256::from(n + 2);
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(n + 1).to_be_bytes());
            let _mint = ids
                .mint(format!("u{n}"))
                .gas(gas)
                .max_fee_per_gas(fee)
                .max_priority_fee_per_gas(tip)
                .send()
                .await?;
            let _key = ids
                .addKey(id, 0, B256::from(key))
                .gas(gas)
                .max_fee_per_gas(fee)
                .max_priority_fee_per_gas(tip)
                .send()
                .await?;
            last = repos
                .addMember(repo, id, 0)
                .gas(gas)
                .max_fee_per_gas(fee)
                .max_priority_fee_per_gas(tip)
                .send()
                .await?;
            logs += 4;
            n += 1;
        }
        // 30M gas blocks hold 150 of these 200k-gas transactions.
        net.provider
            .anvil_mine(Some(3 * BATCH / 150 + 1), None)
            .await?;
    }
    net.provider.anvil_set_auto_mine(true).await?;
    let receipt = provider.get_transaction_receipt(*last.tx_hash()).await?;
    anyhow::ensure!(
        receipt.is_some_and(|r| r.status()),
        "the last transaction was not mined or reverted"
    );
    Ok(logs)
}

async fn getlogs_only(
    provider: &DynProvider,
    net: &Devnet,
    to: u64,
    range: u64,
) -> anyhow::Result<usize> {
    let mut from = net.deployment.block;
    let mut count = 0;
    while from <= to {
        let end = to.min(from + range - 1);
        let filter = Filter::new()
            .address(net.deployment.addresses().to_vec())
            .from_block(from)
            .to_block(end);
        count += provider.get_logs(&filter).await?.len();
        from = end + 1;
    }
    Ok(count)
}

/// What one fresh ACL build measured.
struct Build {
    events_applied: u64,
    snapshot: Arc<Snapshot>,
    /// Opening the empty store (included in `total_s`).
    open_s: f64,
    /// From before the store open until the ACL is published.
    total_s: f64,
    /// The checkpoint write that finishes after publishing (not in `total_s`).
    write_s: f64,
}

/// A fresh node's ACL build: open an empty store, sync to `to`, publish.
async fn build_acl(provider: &DynProvider, net: &Devnet, to: u64) -> anyhow::Result<Build> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let t = Instant::now();
    let store = Arc::new(Store::open(dir.path())?);
    let open_s = t.elapsed().as_secs_f64();
    let (acl, publisher) = Acl::new(Snapshot::default());
    let mut config = net.config().chain;
    config.confirmations = 0;
    let (mut syncer, _status) = Syncer::new(
        provider.clone(),
        net.deployment.clone(),
        config,
        store,
        publisher,
        &hanzo_node::metrics::Registry::default(),
    )?;
    loop {
        match syncer.step().await? {
            Step::Advanced { to: at, .. } if at >= to => break,
            Step::Advanced { .. } => {}
            other => anyhow::bail!("unexpected sync step {other:?}"),
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    let t = Instant::now();
    syncer.finish_write().await?;
    let write_s = t.elapsed().as_secs_f64();
    let snapshot = acl.snapshot();
    Ok(Build {
        events_applied: snapshot.events_applied,
        snapshot,
        open_s,
        total_s,
        write_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = arg("--events", 10_000);
    let net = Devnet::start().await;
    let started = Instant::now();
    let made = generate(&net, events).await?;
    let to = net.head().await;
    println!(
        "# generated {made} logs in {:.1}s over {} blocks",
        started.elapsed().as_secs_f64(),
        to - net.deployment.block
    );

    let provider = chain::connect(&net.anvil.endpoint(), None).await?;
    let range = net.config().chain.max_block_range;
    let (mut base, mut ours, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    let mut applied = 0;
    for round in 0..ROUNDS {
        // Alternate which runs first, so neither gains from a warmer anvil.
        let mut n = 0;
        let mut build = None;
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let t = Instant::now();
                n = getlogs_only(&provider, &net, to, range).await?;
                base.push(t.elapsed().as_secs_f64());
            } else {
                build = Some(build_acl(&provider, &net, to).await?);
            }
        }
        let b = build.expect("both sides ran");
        anyhow::ensure!(
            b.events_applied == n as u64,
            "ACL applied {} logs, eth_getLogs returned {n}",
            b.events_applied
        );
        anyhow::ensure!(
            b.snapshot.block.map(|b| b.hash) != Some(B256::ZERO),
            "no block"
        );
        ours.push(b.total_s);
        writes.push(b.write_s);
        println!(
            "# round {round}: getlogs {:.3}s, acl build {:.3}s (store open {:.3}s), then checkpoint write {:.3}s; {} identities, {} repos",
            base[round],
            b.total_s,
            b.open_s,
            b.write_s,
            b.snapshot.state.identities.len(),
            b.snapshot.state.repos.len()
        );
        applied = b.events_applied;
    }
    let (getlogs_s, acl_build_s) = (median(base), median(ours));
    println!("events={applied}");
    println!("blocks={}", to - net.deployment.block + 1);
    println!("rounds={ROUNDS}");
    println!("getlogs_s={getlogs_s:.3}");
    println!("acl_build_s={acl_build_s:.3}");
    println!("ratio={:.3}", acl_build_s / getlogs_s);
    println!("events_per_s={:.0}", applied as f64 / acl_build_s);
    println!("checkpoint_write_s={:.3}", median(writes));
    Ok(())
}
