//! Git hosting benchmark (run by `scripts/bench-git`): a generated repository of
//! `--commits` commits and about `--mb` MB is pushed to and cloned from a running
//! `hanzo-node` (signed push), and the same push and clone go to stock git's smart
//! HTTP server (`git http-backend` behind a minimal CGI server in this process) and
//! to `git daemon`, alternating over `--rounds` rounds on fresh repos. Prints medians,
//! ratios and the node's peak RSS, ending with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode},
    response::Response,
};
use futures_util::TryStreamExt;
use hanzo_e2e::{
    Devnet, arg,
    bench::{Killed, free_addr, generate, median, peak_rss_mb},
    git::GitUser,
    node_bin,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

/// Runs `git args` as `user`, returning seconds taken.
fn timed(user: &GitUser, dir: &Path, args: &[&str]) -> f64 {
    let start = Instant::now();
    user.git_ok(dir, args);
    start.elapsed().as_secs_f64()
}

/// Serves `git http-backend` over CGI: request headers become CGI variables, the body
/// streams to its stdin, and its stdout (CGI headers, then the body) streams back.
async fn cgi(root: PathBuf, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "bench")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut body = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
        let _ = tokio::io::copy(&mut body, &mut stdin).await;
        drop(stdin);
        let _ = child.wait().await;
    });
    let mut out = BufReader::with_capacity(1 << 16, stdout);
    let mut res = Response::new(Body::empty());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap().parse().unwrap();
            *res.status_mut() = StatusCode::from_u16(code).unwrap();
        } else {
            res.headers_mut().insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
    }
    *res.body_mut() = Body::from_stream(ReaderStream::with_capacity(out, 1 << 16));
    res
}

#[tokio::main]
async fn main() {
    let commits = arg("--commits", 5000);
    let mb = arg("--mb", 70);
    let rounds = usize::try_from(arg("--rounds", 5)).unwrap();
    let bytes = usize::try_from(mb * 1_000_000 / commits).unwrap();

    // Chain: alice's identity and key, one repo per round.
    let net = Devnet::start().await;
    let alice = GitUser::new("alice");
    net.identity_for(1, &alice).await;
    let c = net.client(1).await;
    for r in 0..rounds {
        c.create_repo(&format!("bench-{r}"), "alice", false)
            .await
            .unwrap();
    }
    net.mine(2).await;

    // The node, as the real binary.
    let node_addr = free_addr();
    let node = Killed(
        Command::new(node_bin())
            .arg("run")
            .env("HANZO_DATA_DIR", net.dir.path())
            .env("HANZO_CHAIN_RPC_URL", net.anvil.endpoint())
            .env("HANZO_CHAIN_POLL_INTERVAL", "50ms")
            .env("HANZO_HTTP_LISTEN", node_addr.to_string())
            .env("HANZO_P2P_LISTEN", "/ip4/127.0.0.1/tcp/0")
            .envs(net.node_env())
            .env("HANZO_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let ready = format!(
        "http://{node_addr}/bench-{}.git/info/refs?service=git-upload-pack",
        rounds - 1
    );
    let start = Instant::now();
    while !Command::new("curl")
        .args(["-sf", "-o", "/dev/null", &ready])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "node did not serve the repos"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Baselines: git http-backend over CGI, and git daemon.
    let base = tempfile::tempdir().unwrap();
    let cgi_addr = free_addr();
    let root = base.path().to_path_buf();
    let app = axum::Router::new().fallback(move |req: Request| cgi(root.clone(), req));
    let listener = tokio::net::TcpListener::bind(cgi_addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let daemon_port = free_addr().port();
    let _daemon = Killed(
        Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={daemon_port}"))
            .arg(format!("--base-path={}", base.path().display()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    eprintln!("generating {commits} commits of {bytes} bytes each …");
    let work = alice.init("work");
    let t = Instant::now();
    generate(&alice, &work, commits, bytes);
    alice.git_ok(&work, &["gc", "-q"]);
    let pack_mb: f64 = std::fs::read_dir(work.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len() as f64)
        .sum::<f64>()
        / 1e6;
    eprintln!(
        "generated in {:.1}s: packed {pack_mb:.1} MB",
        t.elapsed().as_secs_f64()
    );

    let (mut push, mut clone) = (Vec::new(), Vec::new());
    let (mut http_push, mut http_clone) = (Vec::new(), Vec::new());
    let (mut daemon_push, mut daemon_clone) = (Vec::new(), Vec::new());
    let clones = alice.home.path().join("clones");
    for r in 0..rounds {
        let name = format!("bench-{r}");
        for server in ["http", "daemon"] {
            let bare = base.path().join(format!("{name}-{server}.git"));
            alice.git_ok(
                base.path(),
                &["init", "-q", "--bare", bare.to_str().unwrap()],
            );
            alice.git_ok(&bare, &["config", "http.receivepack", "true"]);
        }
        let node_url = format!("http://{node_addr}/{name}.git");
        let http_url = format!("http://{cgi_addr}/{name}-http.git");
        let daemon_url = format!("git://127.0.0.1:{daemon_port}/{name}-daemon.git");
        // Alternate which goes first.
        let order: Vec<&str> = if r % 2 == 0 {
            vec!["node", "http", "daemon"]
        } else {
            vec!["daemon", "http", "node"]
        };
        for who in &order {
            match *who {
                "node" => push.push(timed(
                    &alice,
                    &work,
                    &["push", "-q", "--signed", &node_url, "main"],
                )),
                "http" => http_push.push(timed(&alice, &work, &["push", "-q", &http_url, "main"])),
                _ => daemon_push.push(timed(&alice, &work, &["push", "-q", &daemon_url, "main"])),
            }
        }
        for who in &order {
            let dest = clones.join(format!("{name}-{who}"));
            let url = match *who {
                "node" => &node_url,
                "http" => &http_url,
                _ => &daemon_url,
            };
            let secs = timed(
                &alice,
                alice.home.path(),
                &["clone", "-q", "--bare", url, dest.to_str().unwrap()],
            );
            match *who {
                "node" => clone.push(secs),
                "http" => http_clone.push(secs),
                _ => daemon_clone.push(secs),
            }
            assert_eq!(
                alice.rev(&dest, "main"),
                alice.rev(&work, "main"),
                "clone from {who} matches"
            );
            std::fs::remove_dir_all(&dest).unwrap();
        }
        eprintln!(
            "round {r}: push node {:.2}s http {:.2}s daemon {:.2}s; clone node {:.2}s http {:.2}s daemon {:.2}s",
            push[r], http_push[r], daemon_push[r], clone[r], http_clone[r], daemon_clone[r]
        );
    }
    let rss = peak_rss_mb(node.0.id());
    let (push, http_push, daemon_push) = (median(push), median(http_push), median(daemon_push));
    let (clone, http_clone, daemon_clone) =
        (median(clone), median(http_clone), median(daemon_clone));
    println!("repository: {commits} commits, {pack_mb:.1} MB packed; medians of {rounds} rounds");
    println!(
        "push   node {push:.2}s   git http-backend {http_push:.2}s   git daemon {daemon_push:.2}s"
    );
    println!(
        "clone  node {clone:.2}s   git http-backend {http_clone:.2}s   git daemon {daemon_clone:.2}s"
    );
    println!("node peak RSS {rss:.0} MB");
    println!("commits={commits}");
    println!("pack_mb={pack_mb:.1}");
    println!("push_s={push:.3}");
    println!("baseline_push_s={http_push:.3}");
    println!("daemon_push_s={daemon_push:.3}");
    println!("clone_s={clone:.3}");
    println!("baseline_clone_s={http_clone:.3}");
    println!("daemon_clone_s={daemon_clone:.3}");
    println!("push_ratio={:.2}", push / http_push);
    println!("clone_ratio={:.2}", clone / http_clone);
    println!("peak_rss_mb={rss:.0}");
}
