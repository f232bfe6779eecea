//! Soak (run by `scripts/soak`): three `hanzo-node` processes on loopback driven at a
//! steady rate for a bounded time — a signed push every `--push-ms` to the nodes in
//! turn (each timed until all three advertise it) and `--rps` gRPC `GetStatus` calls
//! from a signed-in caller spread over the nodes, with a block every `--block-ms`
//! (1000; 0 for none). Every `--sample-s` it prints the
//! nodes' RSS; at the end the errors, p50/p99 latencies and the RSS trend (first
//! sample, last sample, and the median of the first and the last quarter of samples).
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hanzo_e2e::{
    Devnet, arg,
    bench::{free_addr, median, percentile, rss_mb, status_mb},
    cluster::{Process, metric},
    http_get,
    rpc::{bearer, connect, session},
};
use hanzo_node::rpc::proto::{GetStatusRequest, node_service_client::NodeServiceClient};

/// Waits (at most 30 s) until every node advertises `tip`; whether they did.
async fn replicated(nodes: &[Process], tip: &str) -> bool {
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in nodes {
            if !http_get(n.http, "/demo.git/info/refs?service=git-upload-pack")
                .await
                .contains(tip)
            {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn summary(name: &str, v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        println!("{name}: no samples");
        return (0.0, 0.0);
    }
    let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
    println!("{name}: n={} p50 {p50:.1} ms, p99 {p99:.1} ms", v.len());
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let seconds = arg("--seconds", 600);
    let push_ms = arg("--push-ms", 2000);
    let rps = arg("--rps", 20);
    let sample_s = arg("--sample-s", 30);
    // A block every `--block-ms` (0: none after set-up).
    let block_ms = arg("--block-ms", 1000);

    let net = Devnet::start().await;
    let (alice, _) = net.alice_with_demo().await;
    let caller = net.dev_key(3);
    net.stake_caller(3).await;
    let mut nodes = Vec::new();
    let mut grpc = Vec::new();
    for i in 0..3 {
        let rpc = free_addr();
        let listen = rpc.to_string();
        // The default ref comparison every 30 s (the tests' cluster uses 1 s).
        nodes.push(
            net.spawn_operator(
                5 + i,
                &[
                    ("HANZO_RPC_LISTEN", listen.as_str()),
                    ("HANZO_P2P_SYNC_INTERVAL", "30s"),
                ],
            )
            .await,
        );
        grpc.push(rpc);
    }
    net.mine(3).await;
    // Blocks keep coming, as on a real chain, so the nodes keep syncing.
    let miner = {
        let provider = net.provider.clone();
        tokio::spawn(async move {
            if block_ms == 0 {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_millis(block_ms)).await;
                let _ = alloy::providers::ext::AnvilApi::anvil_mine(&provider, Some(1), None).await;
            }
        })
    };
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.process.as_ref().unwrap().0.id())
        .collect();

    // Every node takes a first push and every node has it.
    let work = alice.init("work");
    alice.commit(&work, "README", "start");
    let start = Instant::now();
    while !alice
        .git(
            &work,
            &["push", "-q", "--signed", &nodes[0].url("demo"), "main"],
        )
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "node A never took a push"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(replicated(&nodes, &alice.rev(&work, "HEAD")).await);

    // gRPC: one signed-in channel per node; calls spread over them at `rps`.
    let mut channels = Vec::new();
    for addr in &grpc {
        channels.push(connect(*addr).await);
    }
    let rpc_lat = Arc::new(Mutex::new(Vec::<f64>::new()));
    let rpc_errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let rpc_task = {
        let (lat, errors) = (rpc_lat.clone(), rpc_errors.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps.max(1)));
            let mut i = 0usize;
            let mut clients = Vec::new();
            let mut signed_in = Instant::now();
            while Instant::now() < deadline {
                // Sessions last 15 minutes: sign in again every 10.
                if clients.is_empty() || signed_in.elapsed() > Duration::from_secs(600) {
                    clients.clear();
                    for ch in &channels {
                        let token = session(ch, &caller).await;
                        clients.push((NodeServiceClient::new(ch.clone()), token));
                    }
                    signed_in = Instant::now();
                }
                tick.tick().await;
                let (client, token) = &mut clients[i % 3];
                i += 1;
                let t = Instant::now();
                match client.get_status(bearer(GetStatusRequest {}, token)).await {
                    Ok(_) => lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        eprintln!("rpc error: {:?} {}", e.code(), e.message());
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let mut push_lat = Vec::new();
    let mut repl_lat = Vec::new();
    let (mut push_errors, mut repl_errors) = (0u64, 0u64);
    let mut rss: Vec<Vec<f64>> = Vec::new();
    let mut next_sample = Instant::now();
    let began = Instant::now();
    let mut n = 0usize;
    while Instant::now() < deadline {
        if Instant::now() >= next_sample {
            let s: Vec<f64> = pids.iter().map(|&p| rss_mb(p)).collect();
            let anon: Vec<f64> = pids.iter().map(|&p| status_mb(p, "RssAnon:")).collect();
            println!(
                "t={:>4}s pushes={n} rss_mb=[{:.0}, {:.0}, {:.0}] (anonymous [{:.0}, {:.0}, {:.0}]) rpc_calls={}",
                began.elapsed().as_secs(),
                s[0],
                s[1],
                s[2],
                anon[0],
                anon[1],
                anon[2],
                rpc_lat.lock().unwrap().len()
            );
            rss.push(s);
            next_sample += Duration::from_secs(sample_s);
        }
        let round = Instant::now();
        alice.commit(&work, "README", &format!("soak {n}"));
        let tip = alice.rev(&work, "HEAD");
        let url = nodes[n % 3].url("demo");
        let t = Instant::now();
        let out = tokio::task::block_in_place(|| {
            alice.git(&work, &["push", "-q", "--signed", &url, "main"])
        });
        if out.status.success() {
            push_lat.push(t.elapsed().as_secs_f64() * 1000.0);
            let accepted = Instant::now();
            if replicated(&nodes, &tip).await {
                repl_lat.push(accepted.elapsed().as_secs_f64() * 1000.0);
            } else {
                eprintln!("push {n}: {tip} not on every node within 30 s");
                repl_errors += 1;
            }
        } else {
            eprintln!("push {n} failed: {}", String::from_utf8_lossy(&out.stderr));
            push_errors += 1;
        }
        n += 1;
        let wait = Duration::from_millis(push_ms).saturating_sub(round.elapsed());
        tokio::time::sleep(wait).await;
    }
    rpc_task.await.unwrap();
    miner.abort();
    let s: Vec<f64> = pids.iter().map(|&p| rss_mb(p)).collect();
    println!(
        "t={:>4}s pushes={n} rss_mb=[{:.0}, {:.0}, {:.0}] (end)",
        began.elapsed().as_secs(),
        s[0],
        s[1],
        s[2]
    );
    rss.push(s);

    println!(
        "\nsoak of {seconds} s: {n} pushes, {} gRPC calls",
        rpc_lat.lock().unwrap().len()
    );
    let (push_p50, push_p99) = summary("push (git push --signed returns)", &mut push_lat);
    let (repl_p50, repl_p99) = summary("replication (accepted → on all 3 nodes)", &mut repl_lat);
    let (rpc_p50, rpc_p99) = summary("gRPC GetStatus", &mut rpc_lat.lock().unwrap());
    let rpc_errors = rpc_errors.load(Ordering::Relaxed);
    println!("errors: push {push_errors}, replication {repl_errors}, gRPC {rpc_errors}");
    // RSS trend per node: the median of the first and of the last quarter of samples.
    let quarter = (rss.len() / 4).max(1);
    let mut growth = f64::MIN;
    for node in 0..3 {
        let series: Vec<f64> = rss.iter().map(|s| s[node]).collect();
        let early = median(series[..quarter].to_vec());
        let late = median(series[series.len() - quarter..].to_vec());
        println!(
            "node {node} RSS: first {:.0} MB, last {:.0} MB; first-quarter median {early:.0} MB, last-quarter median {late:.0} MB",
            series[0],
            series[series.len() - 1]
        );
        growth = growth.max(late - early);
    }
    // Which path brought each replicated update: gossip, or only the periodic
    // catch-up (gossip missed it).
    let (mut gossip, mut catchup) = (0.0, 0.0);
    for p in &nodes {
        gossip += metric(p.http, "hanzo_p2p_applied_total", "via=\"gossip\"").await;
        catchup += metric(p.http, "hanzo_p2p_applied_total", "via=\"catchup\"").await;
    }
    println!("pushes={n}");
    println!("applied_via_gossip={gossip}");
    println!("applied_via_catchup={catchup}");
    println!("errors={}", push_errors + repl_errors + rpc_errors);
    println!("push_p50_ms={push_p50:.1}");
    println!("push_p99_ms={push_p99:.1}");
    println!("replication_p50_ms={repl_p50:.1}");
    println!("replication_p99_ms={repl_p99:.1}");
    println!("rpc_p50_ms={rpc_p50:.2}");
    println!("rpc_p99_ms={rpc_p99:.2}");
    println!("rss_growth_mb_max={growth:.1}");
}
