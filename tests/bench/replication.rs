//! Replication benchmark (run by `scripts/bench-replication`): three `hanzo-node`
//! binaries on loopback, registered as operators.
//!
//! * Small pushes: `--small` signed pushes of one commit to node A; for each, the time
//!   from the push being accepted (git returns) to the new tip being advertised by
//!   both B and C. p50 and p95.
//! * A large pack (`--mb` MB of history) pushed to A: the time until B and C both
//!   advertise it, against a plain `git fetch` of the same history between two local
//!   repos in the same run.
//!
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::time::{Duration, Instant};

use hanzo_e2e::{
    Devnet, arg,
    bench::{generate, median, peak_rss_mb, percentile},
    cluster::Process,
    http_get,
};

/// Waits until every node in `nodes` advertises `tip`, asking every `every`; returns
/// when the first and when the last did. Each ask runs a `git upload-pack` on the
/// node, so a large pack's arrival is polled less often: the polls would otherwise
/// take CPU from the replication they measure.
async fn visible(nodes: &[&Process], tip: &str, every: Duration) -> (Instant, Instant) {
    let start = Instant::now();
    let mut seen: Vec<Option<Instant>> = vec![None; nodes.len()];
    while seen.iter().any(Option::is_none) {
        for (n, at) in nodes
            .iter()
            .zip(seen.iter_mut())
            .filter(|(_, at)| at.is_none())
        {
            if http_get(n.http, "/demo.git/info/refs?service=git-upload-pack")
                .await
                .contains(tip)
            {
                *at = Some(Instant::now());
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{tip} never arrived"
        );
        tokio::time::sleep(every).await;
    }
    let seen = seen.into_iter().flatten();
    (seen.clone().min().unwrap(), seen.max().unwrap())
}

const SMALL_POLL: Duration = Duration::from_millis(2);
const LARGE_POLL: Duration = Duration::from_millis(25);

#[tokio::main]
async fn main() {
    let small = usize::try_from(arg("--small", 40)).unwrap();
    let mb = arg("--mb", 60);
    let commits = arg("--commits", 2000);
    let bytes = usize::try_from(mb * 1_000_000 / commits).unwrap();

    let net = Devnet::start().await;
    let (alice, _) = net.alice_with_demo().await;
    // Catch-up every 5 s, so that it rarely runs during a measurement.
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            net.spawn_operator(5 + i, &[("HANZO_P2P_SYNC_INTERVAL", "5s")])
                .await,
        );
    }
    net.mine(3).await;
    // Every node serves demo and is connected to the others: a first push arrives.
    let work = alice.init("work");
    alice.commit(&work, "README", "start");
    let url = nodes[0].url("demo");
    let start = Instant::now();
    loop {
        let out = alice.git(&work, &["push", "-q", "--signed", &url, "main"]);
        if out.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "node A never took a push"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let others = [&nodes[1], &nodes[2]];
    visible(&others, &alice.rev(&work, "HEAD"), SMALL_POLL).await;

    eprintln!("{small} small pushes …");
    let mut lat = Vec::new();
    for i in 0..small {
        alice.commit(&work, "README", &format!("small {i}"));
        let tip = alice.rev(&work, "HEAD");
        alice.git_ok(&work, &["push", "-q", "--signed", &url, "main"]);
        let accepted = Instant::now();
        let (_, seen) = visible(&others, &tip, SMALL_POLL).await;
        lat.push(seen.duration_since(accepted).as_secs_f64() * 1000.0);
    }
    let p50 = percentile(&mut lat, 0.5);
    let p95 = percentile(&mut lat, 0.95);

    eprintln!("generating {commits} commits, ~{mb} MB …");
    let big = alice.init("big");
    generate(&alice, &big, commits, bytes);
    alice.git_ok(&big, &["gc", "-q"]);
    // Baseline: a plain git fetch of the same history between two local repos.
    let mut baseline = Vec::new();
    for r in 0..3 {
        let into = alice.init(&format!("fetch-{r}"));
        let t = Instant::now();
        alice.git_ok(&into, &["fetch", "-q", big.to_str().unwrap(), "main"]);
        baseline.push(t.elapsed().as_secs_f64());
    }
    let baseline = median(baseline);
    let big_url = url.clone();
    // The big history replaces main (the owner's force-push).
    alice.git_ok(
        &big,
        &["push", "-q", "--signed", "--force", &big_url, "main"],
    );
    let accepted = Instant::now();
    let tip = alice.rev(&big, "HEAD");
    let (first, seen) = visible(&others, &tip, LARGE_POLL).await;
    let large = seen.duration_since(accepted).as_secs_f64();
    let large_first = first.duration_since(accepted).as_secs_f64();
    let rss = nodes
        .iter()
        .map(|n| peak_rss_mb(n.process.as_ref().unwrap().0.id()))
        .fold(0.0, f64::max);

    println!(
        "small pushes: p50 {p50:.0} ms, p95 {p95:.0} ms (accepted on A → advertised by B and C)"
    );
    println!(
        "large pack {mb} MB: {large:.2}s to B and C; git fetch between local repos {baseline:.2}s; ratio {:.2}",
        large / baseline
    );
    println!(
        "  the first of B and C had it after {large_first:.2}s (ratio {:.2})",
        large_first / baseline
    );
    println!("peak RSS of the three nodes: {rss:.0} MB");
    println!("small_p50_ms={p50:.0}");
    println!("small_p95_ms={p95:.0}");
    println!("large_s={large:.3}");
    println!("baseline_fetch_s={baseline:.3}");
    println!("large_ratio={:.2}", large / baseline);
    println!("large_first_ratio={:.2}", large_first / baseline);
    println!("peak_rss_mb={rss:.0}");
}
