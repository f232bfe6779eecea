//! Replication benchmark (run by `scripts/bench-replication`): three `hanzo-node`
//! binaries on loopback, registered as operators.
//!
//! * Small pushes: `--small` signed pushes of one commit to node A; for each, the time
//!   from the push being accepted (git returns) to the new tip being advertised by
//!   both B and C. p50 and p95.
//! * A large pack (`--mb` MB of history) pushed to A: the time until B and C both
//!   advertise it, against a plain `git fetch` of the same history between two local
//!   repos in the same run.
//! * A real-size repository pushed with `git push --signed --mirror` to a fresh repo
//!   on A: `--mirror-commits` commits (default 16,000), `--mirror-refs` branches and
//!   tags (320), `--mirror-mb` MB of history (140, about 105 MB packed). Bytes each
//!   of B and C fetched against the pack's size (amplification), and the time until
//!   both advertise every ref against a local `git fetch` of all refs.
//!
//! * Quorum pushes: `--quorum-pushes` rounds of one signed push each without a quorum
//!   and with `-o hanzo.quorum=1`, `=2` and `=all` (with three nodes, 2 and all are
//!   both other nodes), in turn; the median time `git push` takes for each, against
//!   the plain push in the same run.
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
    visible_in(nodes, "demo", tip, every).await
}

/// [`visible`] for repo `repo`.
async fn visible_in(
    nodes: &[&Process],
    repo: &str,
    tip: &str,
    every: Duration,
) -> (Instant, Instant) {
    let start = Instant::now();
    let mut seen: Vec<Option<Instant>> = vec![None; nodes.len()];
    while seen.iter().any(Option::is_none) {
        for (n, at) in nodes
            .iter()
            .zip(seen.iter_mut())
            .filter(|(_, at)| at.is_none())
        {
            if http_get(
                n.http,
                &format!("/{repo}.git/info/refs?service=git-upload-pack"),
            )
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

    let rounds = arg("--quorum-pushes", 20);
    eprintln!("{rounds} rounds of plain and quorum pushes …");
    let modes: [(&str, &[&str]); 4] = [
        ("plain", &[]),
        ("quorum1", &["-o", "hanzo.quorum=1"]),
        ("quorum2", &["-o", "hanzo.quorum=2"]),
        ("quorum_all", &["-o", "hanzo.quorum=all"]),
    ];
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for i in 0..rounds {
        for (m, (name, options)) in modes.iter().enumerate() {
            alice.commit(&work, "README", &format!("{name} {i}"));
            let args = [&["push", "-q", "--signed"][..], options, &[&url, "main"]].concat();
            let t = Instant::now();
            alice.git_ok(&work, &args);
            took[m].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let took: Vec<f64> = took.into_iter().map(median).collect();

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

    let mirror = mirror(&net, &alice, &nodes).await;

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
    println!(
        "push latency (median of {rounds}): plain {:.0} ms, quorum 1 {:.0} ms, quorum 2 {:.0} ms, quorum all {:.0} ms",
        took[0], took[1], took[2], took[3]
    );
    println!("plain_push_ms={:.0}", took[0]);
    for (m, name) in ["quorum1", "quorum2", "quorum_all"].iter().enumerate() {
        println!("{name}_push_ms={:.0}", took[m + 1]);
        println!("{name}_push_ratio={:.2}", took[m + 1] / took[0]);
    }
    println!("small_p50_ms={p50:.0}");
    println!("small_p95_ms={p95:.0}");
    println!("large_s={large:.3}");
    println!("baseline_fetch_s={baseline:.3}");
    println!("large_ratio={:.2}", large / baseline);
    println!("large_first_ratio={:.2}", large_first / baseline);
    println!("peak_rss_mb={rss:.0}");
    mirror.print();
}

struct Mirror {
    commits: u64,
    refs: usize,
    pack_mb: f64,
    fetched_mb: [f64; 2],
    agreement_s: f64,
    baseline_s: f64,
    rss_mb: f64,
}

impl Mirror {
    fn print(&self) {
        let amplification = self.fetched_mb[0].max(self.fetched_mb[1]) / self.pack_mb;
        println!(
            "mirror push of {} commits, {} refs, {:.0} MB packed: B fetched {:.0} MB, C {:.0} MB (amplification {amplification:.2}); all refs on B and C after {:.1}s, local git fetch {:.1}s (ratio {:.2}); peak RSS {:.0} MB",
            self.commits,
            self.refs,
            self.pack_mb,
            self.fetched_mb[0],
            self.fetched_mb[1],
            self.agreement_s,
            self.baseline_s,
            self.agreement_s / self.baseline_s,
            self.rss_mb
        );
        println!("mirror_pack_mb={:.1}", self.pack_mb);
        println!("mirror_fetch_amplification={amplification:.2}");
        println!("mirror_agreement_s={:.2}", self.agreement_s);
        println!("mirror_baseline_fetch_s={:.2}", self.baseline_s);
        println!("mirror_ratio={:.2}", self.agreement_s / self.baseline_s);
        println!("mirror_peak_rss_mb={:.0}", self.rss_mb);
    }
}

/// Bytes a node fetched from peers so far, in MB.
async fn fetched_mb(p: &Process) -> f64 {
    hanzo_e2e::cluster::metric(p.http, "hanzo_p2p_bytes_fetched_total", "").await / 1e6
}

/// The real-size repository pushed with `--mirror` to repo `mirror` on A.
async fn mirror(net: &Devnet, alice: &hanzo_e2e::git::GitUser, nodes: &[Process]) -> Mirror {
    let commits = arg("--mirror-commits", 16_000);
    let refs = usize::try_from(arg("--mirror-refs", 320)).unwrap();
    let mb = arg("--mirror-mb", 140);
    net.client(1)
        .await
        .create_repo("mirror", "alice", false)
        .await
        .unwrap();
    net.mine(3).await;
    eprintln!("generating {commits} commits, ~{mb} MB, {refs} refs …");
    let src = alice.init("mirror-src");
    generate(
        alice,
        &src,
        commits,
        usize::try_from(mb * 1_000_000 / commits).unwrap(),
    );
    let ids = alice.git_ok(&src, &["rev-list", "main"]);
    let ids: Vec<&str> = ids.lines().collect();
    let mut script = String::new();
    for k in 1..refs {
        let id = ids[k * ids.len() / refs];
        let name = if k % 16 == 0 {
            format!("refs/tags/v{k}")
        } else {
            format!("refs/heads/branch-{k}")
        };
        script.push_str(&format!("create {name} {id}\n"));
    }
    let mut update = alice.command(&src, &["update-ref", "--stdin"]);
    let out = hanzo_e2e::git::piped(&mut update, script.as_bytes());
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let pack_mb: f64 = std::fs::read_dir(src.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.metadata().unwrap().len() as f64 / 1e6)
        .sum();
    // Baseline: a local git fetch of every ref.
    let mut baseline = Vec::new();
    for r in 0..3 {
        let into = alice.init(&format!("mirror-fetch-{r}"));
        let t = Instant::now();
        alice.git_ok(
            &into,
            &[
                "fetch",
                "-q",
                src.to_str().unwrap(),
                "refs/*:refs/remotes/src/*",
            ],
        );
        baseline.push(t.elapsed().as_secs_f64());
    }
    let baseline_s = median(baseline);

    let before = [fetched_mb(&nodes[1]).await, fetched_mb(&nodes[2]).await];
    let url = nodes[0].url("mirror");
    alice.git_ok(&src, &["push", "-q", "--signed", "--mirror", &url]);
    let accepted = Instant::now();
    let tip = alice.rev(&src, "main");
    let last = format!("refs/heads/branch-{}", refs - 1);
    let (_, seen) = visible_in(&[&nodes[1], &nodes[2]], "mirror", &last, LARGE_POLL).await;
    visible_in(&[&nodes[1], &nodes[2]], "mirror", &tip, LARGE_POLL).await;
    let agreement_s = seen.duration_since(accepted).as_secs_f64();
    // Anything still being fetched counts too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let fetched = [
        fetched_mb(&nodes[1]).await - before[0],
        fetched_mb(&nodes[2]).await - before[1],
    ];
    let rss_mb = nodes
        .iter()
        .map(|n| peak_rss_mb(n.process.as_ref().unwrap().0.id()))
        .fold(0.0, f64::max);
    Mirror {
        commits,
        refs,
        pack_mb,
        fetched_mb: fetched,
        agreement_s,
        baseline_s,
        rss_mb,
    }
}
