//! Faults with real parts on loopback: the chain RPC goes away and comes back; a node
//! is SIGKILLed while receiving a push; a node gets SIGTERM while receiving one; a
//! critical task fails; a node is cut off from its peers while they take pushes. (A node killed while applying a replicated pack is in
//! `replication.rs`; a whole devnet restarted from its data dir in `devnet.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{path::Path, process::Command, time::Duration};

use hanzo_e2e::{
    cluster::{Process, connected},
    faults::Proxy,
    git::{GitUser, fsck, quarantines},
    rpc::{bearer, served, session},
    *,
};
use hanzo_node::rpc::proto::{
    GetHealthRequest, GetStatusRequest, ServingStatus, auth_service_client::AuthServiceClient,
    node_service_client::NodeServiceClient,
};
use tonic::Code;

/// The chain RPC stops answering: the node keeps serving from its last ACL, reports
/// not-ready with the reason, and catches up (a deposit made meanwhile counts) once
/// the RPC is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_chain_rpc_goes_away_serves_its_last_acl_and_resumes() {
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", net.anvil.port()).parse().unwrap()).await;
    let mut config = net.config();
    config.chain.rpc_url = proxy.url();
    let (node, ch) = served(&net, config).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let ready = http_get(node.http_addr, "/readiness").await;
    assert!(
        ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200"),
        "{ready}"
    );

    // Down: not ready, with the reason; callers are still served from the last ACL.
    proxy.set_down(true);
    let why = eventually(Duration::from_secs(30), async || {
        let r = http_get(node.http_addr, "/readiness").await;
        r.contains(" 503 ").then_some(r)
    })
    .await;
    assert!(why.contains("not ready: chain sync failing"), "{why}");
    assert!(
        why.contains(&proxy.url()),
        "the reason names the RPC: {why}"
    );
    let health = api
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::NotServing);
    assert!(
        health.reason.starts_with("chain sync failing") && health.reason.contains(&proxy.url()),
        "{}",
        health.reason
    );
    api.get_status(bearer(GetStatusRequest {}, &token))
        .await
        .unwrap();

    // Meanwhile on chain: another caller deposits. The node cannot see it yet.
    net.stake_caller(5).await;
    let block = net.confirm().await;
    let mut auth = AuthServiceClient::new(ch.clone());
    let req = rpc::sign_in_request(auth.clone(), &net.dev_key(5), None).await;
    assert_eq!(
        auth.sign_in(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Back: it catches up, is ready, and the new caller is served.
    proxy.set_down(false);
    node.synced_to(block).await;
    eventually(Duration::from_secs(30), async || {
        let r = http_get(node.http_addr, "/readiness").await;
        r.contains(" 200 ").then_some(())
    })
    .await;
    let newcomer = session(&ch, &net.dev_key(5)).await;
    api.get_status(bearer(GetStatusRequest {}, &newcomer))
        .await
        .unwrap();
    node.shutdown().await;
}

const SETTLE: Duration = Duration::from_secs(60);

/// `main` of demo as `url` serves it, if it has one.
fn main_at(alice: &GitUser, url: &str) -> Option<String> {
    alice
        .ls_remote(url)
        .into_iter()
        .find(|(_, name)| name == "refs/heads/main")
        .map(|(id, _)| id)
}

/// Waits until `url` serves demo's main at `tip`.
async fn serves(alice: &GitUser, url: &str, tip: &str) {
    eventually(SETTLE, async || {
        (main_at(alice, url).as_deref() == Some(tip)).then_some(())
    })
    .await;
}

/// A signed push of `work`'s main to `url`, once its pack is arriving at `repo` (a
/// quarantine exists); stderr piped.
async fn push_arriving(
    alice: &GitUser,
    work: &Path,
    url: &str,
    repo: &Path,
) -> std::process::Child {
    let push = alice
        .command(work, &["push", "-q", "--signed", url, "main"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(SETTLE, async || (quarantines(repo) > 0).then_some(())).await;
    push
}

/// Waits until the node process answers with its ACL synced.
async fn ready(p: &Process) {
    eventually(SETTLE, async || {
        let resp = http_get(p.http, "/readiness").await;
        resp.lines()
            .next()
            .is_some_and(|status| status.contains(" 200 "))
            .then_some(())
    })
    .await;
}

/// `hanzo-node repo refs demo --json` on a stopped node's data dir: its database
/// opens and holds the push records.
fn refs_on_disk(net: &Devnet, dir: &Path) -> String {
    ok(&Command::new(node_bin())
        .args(["repo", "refs", "demo", "--json"])
        .env("HANZO_DATA_DIR", dir)
        .env("HANZO_CHAIN_RPC_URL", net.anvil.endpoint())
        .env("HANZO_LOG", "warn")
        .output()
        .unwrap())
}

/// SIGKILL while a pushed pack is arriving: no push the client saw accepted is lost,
/// the repo is clean and the database opens; after a restart the node serves what it
/// accepted, the push can be made again, and its peer converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_while_receiving_a_push_loses_no_accepted_push() {
    let net = Devnet::start().await;
    let (alice, demo) = net.alice_with_demo().await;
    let peer = net.cluster(1, 5).await;
    let mut a = net.spawn_operator(6, &[]).await;
    let block = net.confirm().await;
    peer[0].node().synced_to(block).await;
    connected(&peer, 1).await;
    ready(&a).await;

    // An accepted push of the first 100 commits, then ~25 MB more, during which A is
    // killed.
    let work = alice.init("work");
    hanzo_e2e::bench::generate(&alice, &work, 600, 50_000);
    let big = alice.rev(&work, "HEAD");
    let first = alice.rev(&work, "HEAD~500");
    alice.git_ok(
        &work,
        &[
            "push",
            "-q",
            "--signed",
            &a.url("demo"),
            &format!("{first}:refs/heads/main"),
        ],
    );
    let repo = a.repo_dir(demo);
    let push = push_arriving(&alice, &work, &a.url("demo"), &repo).await;
    a.kill();
    let push = push.wait_with_output().unwrap();
    // Killed mid-pack, the client saw the push fail; had it been reported accepted,
    // main must be the big push from here on.
    let accepted = push.status.success();
    let expected = if accepted { &big } else { &first };
    eprintln!(
        "the client saw the killed push {}",
        if accepted { "accepted" } else { "fail" }
    );

    // On disk: a clean repo whose main is the accepted push, and a database that
    // opens with that push's record.
    fsck(&repo);
    let on_disk = refs_on_disk(&net, a.dir.path());
    assert!(on_disk.contains(expected.as_str()), "{on_disk}");
    if !accepted {
        assert!(!on_disk.contains(&big), "{on_disk}");
    }

    // Restarted: A serves the accepted push, the quarantine is gone, and the push
    // made again is accepted and reaches the peer.
    net.respawn(&mut a, &[]);
    ready(&a).await;
    serves(&alice, &a.url("demo"), expected).await;
    assert_eq!(
        quarantines(&repo),
        0,
        "the killed push's quarantine is left"
    );
    alice.git_ok(&work, &["push", "-q", "--signed", &a.url("demo"), "main"]);
    serves(&alice, &a.url("demo"), &big).await;
    serves(&alice, &peer[0].url("demo"), &big).await;
    fsck(&repo);
    fsck(&peer[0].repo_dir(demo));
}

/// A node frozen (SIGSTOP: alive, its sockets open, answering nothing — a link that
/// drops every packet) while its peers take pushes: they are not held up by it, and
/// after it is thawed it converges to what they accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_from_its_peers_converges_after_healing() {
    let net = Devnet::start().await;
    let (alice, demo) = net.alice_with_demo().await;
    let peers = net.cluster(2, 5).await;
    let c = net.spawn_operator(7, &[]).await;
    let block = net.confirm().await;
    for m in &peers {
        m.node().synced_to(block).await;
    }
    connected(&peers, 2).await;
    ready(&c).await;

    let work = alice.init("work");
    alice.commit(&work, "README", "before the partition");
    alice.git_ok(
        &work,
        &["push", "-q", "--signed", &peers[0].url("demo"), "main"],
    );
    let before = alice.rev(&work, "HEAD");
    serves(&alice, &c.url("demo"), &before).await;

    // Cut off: the others take pushes to main and a new branch, each promptly.
    let pid = nix::unistd::Pid::from_raw(c.process.as_ref().unwrap().0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for i in 0..3 {
        alice.commit(&work, "README", &format!("during the partition {i}"));
        alice.git_ok(
            &work,
            &["push", "-q", "--signed", &peers[i % 2].url("demo"), "main"],
        );
    }
    let during = alice.rev(&work, "HEAD");
    alice.git_ok(
        &work,
        &[
            "push",
            "-q",
            "--signed",
            &peers[1].url("demo"),
            "main:feature",
        ],
    );
    for m in &peers {
        serves(&alice, &m.url("demo"), &during).await;
    }
    // Long enough for the peers' periodic ref comparison to meet the silent node.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Healed: C catches up with both refs and its repo is clean.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    serves(&alice, &c.url("demo"), &during).await;
    let refs = eventually(SETTLE, async || {
        let refs = alice.ls_remote(&c.url("demo"));
        (refs == alice.ls_remote(&peers[0].url("demo"))).then_some(refs)
    })
    .await;
    assert!(
        refs.contains(&(during.clone(), "refs/heads/feature".into())),
        "{refs:?}"
    );
    fsck(&c.repo_dir(demo));
}

/// SIGTERM (systemd's stop) while a pushed pack is arriving: the node stops taking
/// new work, lets the push finish, and exits 0 well within its grace period; the
/// repo is clean and the database holds what the client was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_with_sigterm_during_a_push_finishes_it_and_exits_0() {
    let net = Devnet::start().await;
    let (alice, demo) = net.alice_with_demo().await;
    let mut a = net.spawn_operator(6, &[]).await;
    net.confirm().await;
    ready(&a).await;

    let work = alice.init("work");
    hanzo_e2e::bench::generate(&alice, &work, 300, 50_000);
    let tip = alice.rev(&work, "HEAD");
    let repo = a.repo_dir(demo);
    let push = push_arriving(&alice, &work, &a.url("demo"), &repo).await;
    let child = &mut a.process.as_mut().unwrap().0;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "still running 60 s after SIGTERM (shutdown_grace is 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exited with {status} after SIGTERM");
    eprintln!("stopped {:?} after SIGTERM", signalled.elapsed());
    let push = push.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&push.stderr);

    // The push in flight finished: the client saw it accepted, and the stopped
    // node's repo and database hold it.
    assert!(
        push.status.success(),
        "the push in flight was cut off: {said}"
    );
    fsck(&repo);
    assert_eq!(quarantines(&repo), 0, "a quarantine is left");
    let on_disk = refs_on_disk(&net, a.dir.path());
    assert!(on_disk.contains(tip.as_str()), "{on_disk}");
    net.respawn(&mut a, &[]);
    ready(&a).await;
    serves(&alice, &a.url("demo"), &tip).await;
}

/// A critical task that fails makes `hanzo-node run` stop and exit non-zero, naming
/// the task, so its service manager restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_task_that_fails_stops_the_node_with_a_non_zero_exit_naming_it() {
    let net = Devnet::start().await;
    let p = Process {
        dir: net.node_dir(),
        http: bench::free_addr(),
        listen: format!("/ip4/127.0.0.1/tcp/{}", bench::free_addr().port()),
        process: None,
    };
    let mut cmd = net.run_command(&p, &[(hanzo_node::tasks::FAIL_TASK_ENV, "p2p")]);
    let out = tokio::task::spawn_blocking(move || {
        cmd.stderr(std::process::Stdio::piped()).output().unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the node stops within 60 s of its failure")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0: {stderr}");
    assert!(
        stderr.contains("critical task p2p failed: failed on purpose"),
        "{stderr}"
    );
}
