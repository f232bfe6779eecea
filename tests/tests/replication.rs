//! Replication among real nodes on loopback: pushes reach every node, an offline
//! node catches up, divergent pushes settle on one tip and keep the other, only
//! staked operators' nodes take part, forged updates change nothing, and ref rules
//! and the default branch on chain hold on every node.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{process::Command, time::Duration};

use hanzo_e2e::{
    cluster::{Member, Process, connected, metric},
    git::{GitUser, certificate, fsck, push_nonce, quarantines},
    *,
};
use hanzo_node::{
    acl::{Member as Role, StakeRole},
    p2p::wire::RefUpdate,
    unix_now,
};

const SETTLE: Duration = Duration::from_secs(60);

/// alice owns public repo `demo`; bob commits to it; carol has an identity and no
/// rights. Returns demo's token id.
async fn people(net: &Devnet) -> (GitUser, GitUser, GitUser, u64) {
    let (alice, bob, carol) = (
        GitUser::new("alice"),
        GitUser::new("bob"),
        GitUser::new("carol"),
    );
    net.identity_for(1, &alice).await;
    net.identity_for(2, &bob).await;
    net.identity_for(3, &carol).await;
    let a = net.client(1).await;
    let demo = a.create_repo("demo", "alice", false).await.unwrap();
    a.set_member("demo", "bob", Role::Committer, true)
        .await
        .unwrap();
    (alice, bob, carol, demo)
}

/// The refs `m` holds for demo, the tips it keeps under `refs/superseded/` included
/// (clients do not see those: [`advertised`]), but not the tips of updates waiting
/// for signatures on this node (`refs/pending/`: they are not replicated).
fn refs(user: &GitUser, m: &Member) -> Vec<(String, String)> {
    let id = m.node().acl.snapshot().repo("demo").unwrap().0;
    let mut refs = held(user, &m.repo_dir(id));
    refs.retain(|(_, name)| !name.starts_with("refs/pending/"));
    refs
}

/// `(tip, ref)` of every ref of the bare repo at `dir` (none if it does not exist yet).
fn held(user: &GitUser, dir: &std::path::Path) -> Vec<(String, String)> {
    if !dir.exists() {
        return Vec::new();
    }
    let out = user.git_ok(dir, &["for-each-ref", "--format=%(objectname) %(refname)"]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
        .collect()
}

/// The refs `git ls-remote` shows for demo on `m`.
fn advertised(user: &GitUser, m: &Member) -> Vec<(String, String)> {
    user.ls_remote(&m.url("demo"))
}

/// demo's `refs/heads/main` record as `hanzo-node repo refs --json` shows it on `m`.
fn shown_main(net: &Devnet, m: &Member) -> serde_json::Value {
    let data = m.dir.path().to_str().unwrap().to_owned();
    let env = [("HANZO_DATA_DIR", data.as_str())];
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&net.cli(&["repo", "refs", "demo", "--json"], &env))).unwrap();
    shown
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ref"] == "refs/heads/main")
        .unwrap_or_else(|| panic!("no main in {shown}"))
        .clone()
}

async fn converged(user: &GitUser, members: &[&Member]) -> Vec<(String, String)> {
    eventually(SETTLE, async || {
        let first = refs(user, members[0]);
        (!first.is_empty() && members.iter().all(|m| refs(user, m) == first)).then_some(first)
    })
    .await
}

/// The tip of ref `name` among `(id, name)` pairs.
fn tip(refs: &[(String, String)], name: &str) -> Option<String> {
    refs.iter()
        .find(|(_, n)| n == name)
        .map(|(id, _)| id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_reach_every_node_and_an_offline_node_catches_up() {
    let net = Devnet::start().await;
    let (alice, bob, _, demo) = people(&net).await;
    let mut nodes = net.cluster(3, 5).await;

    // A push to A appears on B and C, objects included: a clone from C matches.
    let work = alice.init("work");
    alice.commit(&work, "README", "hello");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    let head = alice.rev(&work, "HEAD");
    let all: Vec<&Member> = nodes.iter().collect();
    let settled = converged(&alice, &all).await;
    assert_eq!(tip(&settled, "refs/heads/main"), Some(head.clone()));
    // A served the pack the push brought, as it was, with no pack-objects run.
    assert!(
        nodes[0]
            .metric("hanzo_p2p_packs_served_total", "push_pack")
            .await
            >= 1.0
    );
    let clone = alice.home.path().join("from-c");
    alice.git_ok(
        clone.parent().unwrap(),
        &[
            "clone",
            "-q",
            &nodes[2].url("demo"),
            clone.to_str().unwrap(),
        ],
    );
    assert_eq!(alice.rev(&clone, "HEAD"), head);
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).unwrap(),
        "hello"
    );
    // B recorded who pushed: the certificate travelled with the update.
    let b_dir = nodes[1].dir.path().to_str().unwrap().to_owned();
    let shown = ok(&net.cli(
        &["repo", "refs", "demo", "--json"],
        &[("HANZO_DATA_DIR", b_dir.as_str())],
    ));
    assert!(shown.contains("\"handle\": \"alice\""), "{shown}");
    assert!(nodes[1].metric("hanzo_p2p_updates_total", "applied").await >= 1.0);
    assert!(nodes[1].metric("hanzo_p2p_bytes_fetched_total", "").await > 0.0);

    // C is down while A and B take pushes (a new branch too); it catches up on
    // restart with no further push.
    nodes[2].stop().await;
    for i in 0..3 {
        alice.commit(&work, "README", &format!("change {i}"));
        alice.git_ok(
            &work,
            &["push", "--signed", &nodes[i % 2].url("demo"), "main"],
        );
        converged(&alice, &[&nodes[0], &nodes[1]]).await;
    }
    let bobs = bob.init("bobs");
    bob.git_ok(&bobs, &["pull", "-q", &nodes[1].url("demo"), "main"]);
    bob.commit(&bobs, "feature", "bob's");
    bob.git_ok(
        &bobs,
        &[
            "push",
            "--signed",
            &nodes[1].url("demo"),
            "HEAD:refs/heads/feature",
        ],
    );
    let expected = converged(&alice, &[&nodes[0], &nodes[1]]).await;
    nodes[2].restart(&net).await;
    let after = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(after, expected);
    assert_eq!(
        tip(&after, "refs/heads/main"),
        Some(alice.rev(&work, "HEAD"))
    );
    fsck(&nodes[2].repo_dir(demo));
}

fn all_of(nodes: &[Member]) -> Vec<&Member> {
    nodes.iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn divergent_pushes_settle_on_one_tip_and_keep_the_other() {
    let net = Devnet::start().await;
    let (alice, bob, _, demo) = people(&net).await;
    let mut nodes = net.cluster(2, 5).await;
    let work = alice.init("work");
    alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    converged(&alice, &all_of(&nodes)).await;

    // A third node, not yet registered: the others refuse it, so it is partitioned
    // from them. Bob starts main there from another root while A has alice's.
    let dir = net.node_dir();
    let node = hanzo_node::node::Node::start(net.config_in(dir.path()))
        .await
        .unwrap();
    let third = Member {
        dir,
        node: Some(node),
    };
    third.node().synced_to(net.confirm().await).await;
    // (The third may briefly see a connection it dialed, until the other side's gate
    // closes it; the others never count it a peer.)
    let third_id = third.node().p2p.as_ref().unwrap().peer_id;
    for m in &nodes {
        assert!(!m.node().p2p.as_ref().unwrap().peers().contains(&third_id));
    }
    let alice_tip = alice.rev(&work, "HEAD");
    let bobs = bob.init("bobs");
    let bob_tip = bob.commit(&bobs, "other", "bob's line");
    bob.git_ok(&bobs, &["push", "--signed", &third.url("demo"), "main"]);
    assert_eq!(
        tip(&refs(&bob, &third), "refs/heads/main"),
        Some(bob_tip.clone())
    );

    // Registered: it joins, and all three settle on one tip; the other is kept.
    net.register_node(7, third.dir.path(), third.node()).await;
    net.confirm().await;
    nodes.push(third);
    let settled = converged(&alice, &all_of(&nodes)).await;
    let main = tip(&settled, "refs/heads/main").unwrap();
    assert!(main == alice_tip || main == bob_tip, "{settled:?}");
    let loser = if main == alice_tip {
        &bob_tip
    } else {
        &alice_tip
    };
    let kept: Vec<&(String, String)> = settled
        .iter()
        .filter(|(_, n)| n.starts_with("refs/superseded/") && n.ends_with("/heads/main"))
        .collect();
    assert!(
        kept.iter().any(|(id, _)| id == loser),
        "loser kept: {settled:?}"
    );
    for m in &nodes {
        fsck(&m.repo_dir(demo));
        // Kept, not advertised: clients see only live refs.
        let seen = advertised(&alice, m);
        assert!(
            seen.iter().all(|(_, n)| !n.starts_with("refs/superseded/")),
            "{seen:?}"
        );
        assert_eq!(tip(&seen, "refs/heads/main"), Some(main.clone()));
    }

    // The owner restores the loser as a branch with the CLI; it replicates.
    let (_, kept_ref) = kept.iter().find(|(id, _)| id == loser).unwrap();
    let out = Command::new(hanzo_e2e::node_bin())
        .args([
            "repo",
            "restore",
            "demo",
            kept_ref,
            "--to",
            "refs/heads/restored",
        ])
        .current_dir(&work)
        .env("HOME", alice.home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HANZO_DATA_DIR", nodes[0].dir.path())
        .env("HANZO_CHAIN_RPC_URL", net.anvil.endpoint())
        .env("HANZO_LOG", "warn")
        .output()
        .unwrap();
    ok(&out);
    for m in &nodes {
        eventually(SETTLE, async || {
            (tip(&advertised(&alice, m), "refs/heads/restored").as_ref() == Some(loser))
                .then_some(())
        })
        .await;
    }
}

/// A certificate for `commands` bound as a push to demo on `m` would be: demo's URL
/// on `m` and a nonce `m` issued, dated `timestamp`, signed by `user`.
fn certificate_for(user: &GitUser, m: &Member, timestamp: u64, commands: &str) -> Vec<u8> {
    let url = m.url("demo");
    certificate(user, (&url, &push_nonce(&url)), timestamp, commands)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_staked_nodes_take_part_and_forged_updates_change_nothing() {
    let net = Devnet::start().await;
    let (alice, _, carol, demo) = people(&net).await;
    let nodes = net.cluster(3, 5).await;
    let work = alice.init("work");
    let base = alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    let before = converged(&alice, &all_of(&nodes)).await;

    // A node whose key has no stake dials A: refused, and it never gets a peer.
    let dir = net.node_dir();
    let mut config = net.config_in(dir.path());
    config.p2p.bootstrap = nodes[0].p2p_addrs().await;
    let outsider = hanzo_node::node::Node::start(config).await.unwrap();
    eventually(SETTLE, async || {
        (nodes[0].metric("hanzo_p2p_peers_denied_total", "").await >= 1.0).then_some(())
    })
    .await;
    // It never gets demo's main from A, which has it; nobody counts it a peer.
    let outsider_id = outsider.p2p.as_ref().unwrap().peer_id;
    let outside_url = format!("http://{}/demo.git", outsider.http_addr);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(alice.ls_remote(&outside_url).is_empty());
        for m in &nodes {
            assert!(
                !m.node()
                    .p2p
                    .as_ref()
                    .unwrap()
                    .peers()
                    .contains(&outsider_id)
            );
        }
    }
    outsider.shutdown().await;

    // Forged updates published by B (a staked node): a bad signature, a
    // non-committer's certificate, one dated an hour ahead. A and C reject the
    // forgeries and ignore the non-committer's (their ACL might lag B's: it is no
    // proof against B).
    alice.commit(&work, "README", "forged");
    let forged_tip = alice.rev(&work, "HEAD");
    let cmd = format!("{base} {forged_tip} refs/heads/main\n");
    let mut bad_sig = certificate_for(&alice, &nodes[1], unix_now(), &cmd);
    let at = bad_sig.len() - 100;
    bad_sig[at] ^= 1;
    let forged = [
        bad_sig,
        certificate_for(&carol, &nodes[1], unix_now(), &cmd),
        certificate_for(&alice, &nodes[1], unix_now() + 3600, &cmd),
    ];
    let counts = async |reason: &str| {
        [
            nodes[0].metric("hanzo_p2p_updates_total", reason).await,
            nodes[2].metric("hanzo_p2p_updates_total", reason).await,
        ]
    };
    let (invalid_before, unusable_before) = (counts("invalid").await, counts("unusable").await);
    let b = nodes[1].node().p2p.clone().unwrap();
    for cert in forged {
        let update = RefUpdate {
            repo: demo,
            refs: vec![("refs/heads/main".into(), oid(&base), oid(&forged_tip))],
            cert,
            announced_ms: 0,
            cosigned: Vec::new(),
        };
        b.publish_raw(demo, update.encode()).await;
    }
    eventually(SETTLE, async || {
        let (invalid, unusable) = (counts("invalid").await, counts("unusable").await);
        (0..2)
            .all(|n| {
                invalid[n] >= invalid_before[n] + 2.0 && unusable[n] >= unusable_before[n] + 1.0
            })
            .then_some(())
    })
    .await;
    assert_eq!(converged(&alice, &all_of(&nodes)).await, before);

    // B's operator unstakes: A and C drop B within a sync.
    net.client(6)
        .await
        .request_unstake(StakeRole::Operator, ether(2))
        .await
        .unwrap();
    let block = net.confirm().await;
    for m in [&nodes[0], &nodes[2]] {
        m.node().synced_to(block).await;
        let p2p = m.node().p2p.clone().unwrap();
        eventually(SETTLE, async || {
            (!p2p.peers().contains(&b.peer_id)).then_some(())
        })
        .await;
    }
}

/// The cross-repo replay (a certificate alice signed for repo `other`, relayed by a
/// staked node as an update of demo, with demo's objects there to serve) and its
/// variants: each is refused by every node, nothing moves. The same update bound to
/// demo applies: the refusals are the binding's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_for_another_repo_or_network_are_refused_everywhere() {
    let net = Devnet::start().await;
    let (alice, _, _, demo) = people(&net).await;
    net.client(1)
        .await
        .create_repo("other", "alice", false)
        .await
        .unwrap();
    let nodes = net.cluster(3, 5).await;
    let work = alice.init("work");
    let base = alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    let forged_tip = alice.commit(&work, "README", "replayed");
    alice.git_ok(
        &work,
        &[
            "push",
            "--signed",
            &nodes[0].url("demo"),
            "HEAD:refs/heads/side",
        ],
    );
    let before = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&before, "refs/heads/side"), Some(forged_tip.clone()));

    // The origin refuses a push to a URL other than its registered one: replicas
    // would refuse its certificate.
    let port = nodes[0].node().http_addr.port();
    let out = alice.git_err(
        &work,
        &[
            "push",
            "--signed",
            &format!("http://localhost:{port}/demo.git"),
            "HEAD:refs/heads/x",
        ],
    );
    assert!(
        out.contains(&format!(
            "which is not this node's registered git URL: push to http://127.0.0.1:{port}/demo.git"
        )),
        "{out}"
    );

    let cmd = format!("{base} {forged_tip} refs/heads/main\n");
    let b = &nodes[1];
    let (demo_url, other_url) = (b.url("demo"), b.url("other"));
    let demo_nonce = push_nonce(&demo_url);
    let mut parts: Vec<&str> = demo_nonce.split('-').collect();
    parts[1] = "0123456789abcdef";
    let other_network = parts.join("-");
    let now = unix_now();
    let refused = [
        // Signed for a push to other, relayed as demo's.
        certificate(&alice, (&other_url, &push_nonce(&other_url)), now, &cmd),
        // demo's URL, other's nonce.
        certificate(&alice, (&demo_url, &push_nonce(&other_url)), now, &cmd),
        // A nonce of another network.
        certificate(&alice, (&demo_url, &other_network), now, &cmd),
        // Pushed to a host that is no operator's.
        certificate(
            &alice,
            ("http://203.0.113.9:8680/demo.git", &demo_nonce),
            now,
            &cmd,
        ),
    ];
    let invalid = async || {
        [
            nodes[0].metric("hanzo_p2p_updates_total", "invalid").await,
            nodes[2].metric("hanzo_p2p_updates_total", "invalid").await,
        ]
    };
    let invalid_before = invalid().await;
    let update = |cert| RefUpdate {
        repo: demo,
        refs: vec![("refs/heads/main".into(), oid(&base), oid(&forged_tip))],
        cert,
        announced_ms: 0,
        cosigned: Vec::new(),
    };
    let p2p = b.node().p2p.clone().unwrap();
    for cert in refused {
        p2p.publish_raw(demo, update(cert).encode()).await;
    }
    eventually(SETTLE, async || {
        let now = invalid().await;
        (now[0] >= invalid_before[0] + 4.0 && now[1] >= invalid_before[1] + 4.0).then_some(())
    })
    .await;
    assert_eq!(converged(&alice, &all_of(&nodes)).await, before);

    // B paid for each forgery on A and C, and four got it banned: both dropped it.
    let b_id = p2p.peer_id;
    for m in [&nodes[0], &nodes[2]] {
        assert!(
            m.metric("hanzo_p2p_penalties_total", "invalid_update")
                .await
                >= 4.0
        );
        eventually(SETTLE, async || {
            (!m.node().p2p.as_ref().unwrap().peers().contains(&b_id)).then_some(())
        })
        .await;
    }

    // Bound to demo on this network, the same update relayed by C applies on A.
    let c = nodes[2].node().p2p.clone().unwrap();
    c.publish_raw(
        demo,
        update(certificate_for(&alice, b, unix_now(), &cmd)).encode(),
    )
    .await;
    eventually(SETTLE, async || {
        (tip(&refs(&alice, &nodes[0]), "refs/heads/main") == Some(forged_tip.clone())).then_some(())
    })
    .await;
}

fn oid(commit: &str) -> [u8; 20] {
    alloy::hex::decode(commit).unwrap().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_while_receiving_a_pack_is_consistent_and_converges() {
    let net = Devnet::start().await;
    let (alice, _, _, demo) = people(&net).await;
    let a = net.cluster(1, 5).await;
    let mut b = net.spawn_operator(6, &[]).await;
    let block = net.confirm().await;
    a[0].node().synced_to(block).await;
    connected(&a, 1).await;

    // ~30 MB of history pushed to A; B is killed (SIGKILL) while its pack is still
    // arriving, that is while its quarantine exists.
    let work = alice.init("work");
    hanzo_e2e::bench::generate(&alice, &work, 600, 50_000);
    alice.git_ok(
        &work,
        &["push", "-q", "--signed", &a[0].url("demo"), "main"],
    );
    let tip = alice.rev(&work, "HEAD");
    let repo = b.repo_dir(demo);
    eventually(SETTLE, async || (quarantines(&repo) > 0).then_some(())).await;
    b.kill();

    // What is on disk is a consistent repo: fsck is clean and main, if it moved at
    // all, names the whole pushed history.
    fsck(&repo);
    let main = Command::new("git")
        .args(["rev-parse", "-q", "--verify", "refs/heads/main"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let main = String::from_utf8_lossy(&main.stdout).trim().to_owned();
    assert!(main.is_empty() || main == tip, "main at {main}");

    // Started again: it catches up with no new push, and leaves no quarantine.
    net.respawn(&mut b, &[]);
    let arrived = eventually(SETTLE, async || {
        let ok = alice.git(alice.home.path(), &["ls-remote", &b.url("demo")]);
        let out = String::from_utf8_lossy(&ok.stdout).into_owned();
        out.contains(&format!("{tip}\trefs/heads/main"))
            .then_some(out)
    })
    .await;
    assert!(!arrived.contains("refs/superseded/"), "{arrived}");
    fsck(&repo);
    // The killed run's quarantine is gone; a second fetch of the same update (gossip
    // and the periodic ref comparison can both start one) may still be finishing.
    eventually(SETTLE, async || (quarantines(&repo) == 0).then_some(())).await;
}

/// Over QUIC (the other tests use TCP): a push replicates; then the repo's token is
/// burned and every node removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_quic_a_burned_repo_is_removed_from_every_node() {
    let net = Devnet::start().await;
    let (alice, _, _, demo) = people(&net).await;
    let nodes = net.cluster_on(2, 5, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    for m in &nodes {
        let addrs = m.p2p_addrs().await;
        assert!(addrs.iter().all(|a| a.contains("/quic-v1")), "{addrs:?}");
    }
    let work = alice.init("work");
    alice.commit(&work, "README", "soon gone");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    converged(&alice, &all_of(&nodes)).await;

    net.client(1).await.burn_repo("demo").await.unwrap();
    let block = net.confirm().await;
    for m in &nodes {
        m.node().synced_to(block).await;
        eventually(SETTLE, async || (!m.repo_dir(demo).exists()).then_some(())).await;
        let refused = alice.git_err(alice.home.path(), &["ls-remote", &m.url("demo")]);
        assert!(refused.contains("not found"), "{refused}");
    }
}

/// A peer that stops sending mid-pack (its process frozen with SIGSTOP while it
/// serves) holds up nothing beyond `p2p.stream_timeout`: the fetch is abandoned and
/// the objects come from another node, while the frozen one is still frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_stalls_mid_pack_is_dropped_for_another() {
    let net = Devnet::start().await;
    let (alice, _, _, _) = people(&net).await;
    // A serves packs at 1 MiB/s, so its transfer of 8 MiB is under way for seconds;
    // B and C serve at full speed. Every node drops a stream idle for 2 s.
    let write = |name: &str, text: &str| {
        let path = net.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let slow = write(
        "slow.toml",
        "[p2p]\nmax_bytes_per_sec = 1048576\nstream_timeout = \"2s\"\n",
    );
    let fast = write("fast.toml", "[p2p]\nstream_timeout = \"2s\"\n");
    let mut a = net
        .spawn_operator(5, &[("HANZO_CONFIG", slow.as_str())])
        .await;
    let env = [("HANZO_CONFIG", fast.as_str())];
    let mut b = net.spawn_operator(6, &env).await;
    net.confirm().await;
    let work = alice.init("work");
    // Incompressible: the pack is as large as the blob.
    let mut blob = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open("/dev/urandom").unwrap(), 8 << 20),
        &mut blob,
    )
    .unwrap();
    std::fs::write(work.join("blob.bin"), blob).unwrap();
    alice.git_ok(&work, &["add", "blob.bin"]);
    let tip = alice.commit(&work, "README", "big");
    eventually(SETTLE, async || {
        alice
            .git(&work, &["push", "-q", "--signed", &a.url("demo"), "main"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let has = |p: &Process| {
        let out = alice.git(alice.home.path(), &["ls-remote", &p.url("demo")]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("{tip}\trefs/heads/main"))
    };
    eventually(SETTLE, async || has(&b).then_some(())).await;

    // B goes away; C joins and fetches from A, the only node up.
    b.kill();
    let c = net.spawn_operator(7, &env).await;
    net.confirm().await;
    eventually(SETTLE, async || {
        (metric(c.http, "hanzo_p2p_bytes_fetched_total", "").await > 0.0).then_some(())
    })
    .await;
    let a_pid = nix::unistd::Pid::from_raw(a.process.as_ref().unwrap().0.id() as i32);
    let signal = |sig| nix::sys::signal::kill(a_pid, sig).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    let frozen = std::time::Instant::now();
    assert!(
        !has(&c),
        "C had it all before A froze: the transfer was too short"
    );
    net.respawn(&mut b, &env);

    // C drops A at the stream deadline and gets the objects from B.
    eventually(SETTLE, async || has(&c).then_some(())).await;
    let took = frozen.elapsed();
    eprintln!("C had the objects {took:?} after A froze mid-pack");
    assert!(
        metric(
            c.http,
            "hanzo_p2p_fetch_failures_total",
            "reason=\"stream\""
        )
        .await
            >= 1.0,
        "C's fetch from A never failed"
    );
    // Well before libp2p's ping (20 s) would have dropped the frozen peer.
    assert!(
        took < Duration::from_secs(15),
        "C waited {took:?} for a frozen peer"
    );
    signal(nix::sys::signal::Signal::SIGCONT);
    fsck(&c.dir.path().join("repos/1.git"));
    a.kill();
}

/// A real partition: three nodes in their own network namespaces, bridged. A's link
/// is cut while both sides take pushes to the same ref and to different refs; when
/// it is restored, all three hold the same refs, both tips of the contested ref are
/// kept, nothing is lost, and fsck is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_link_heals_and_both_sides_pushes_survive() {
    let net = Devnet::start().await;
    let (alice, bob, _, demo) = people(&net).await;
    let ns = hanzo_e2e::netns::Net::new(3);
    let anvil: std::net::SocketAddr = net
        .anvil
        .endpoint()
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap();
    let chain = ns.relay(anvil).await;
    let config = net.dir.path().join("netns.toml");
    std::fs::write(&config, "[dns]\nenabled = false\n").unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let dir = net.node_dir();
        let addr = ns.addr(i);
        net.register_endpoint(
            5 + i,
            dir.path(),
            &format!("http://{addr}:8680 http://127.0.0.1:8680 /ip4/{addr}/tcp/8681"),
        )
        .await;
        let mut cmd = ns.command(i, hanzo_e2e::node_bin().to_str().unwrap());
        cmd.arg("run")
            .env("HANZO_DATA_DIR", dir.path())
            .env("HANZO_CONFIG", &config)
            .env("HANZO_CHAIN_RPC_URL", format!("http://{chain}"))
            .env("HANZO_CHAIN_POLL_INTERVAL", "50ms")
            .env("HANZO_HTTP_LISTEN", "0.0.0.0:8680")
            .env("HANZO_P2P_LISTEN", "/ip4/0.0.0.0/tcp/8681")
            .env("HANZO_P2P_SYNC_INTERVAL", "1s")
            .env("HANZO_RPC_LISTEN", "127.0.0.1:0")
            .env(
                "HANZO_LOG",
                std::env::var("HANZO_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let process = hanzo_e2e::bench::Killed(cmd.spawn().unwrap());
        nodes.push((dir, process, format!("http://{addr}:8680/demo.git")));
    }
    net.confirm().await;
    // What node `i` holds for demo, kept tips included.
    let held_by = |i: usize| held(&alice, &nodes[i].0.path().join(format!("repos/{demo}.git")));
    let work = alice.init("work");
    let base = alice.commit(&work, "README", "base");
    eventually(SETTLE, async || {
        alice
            .git(&work, &["push", "-q", "--signed", &nodes[1].2, "main"])
            .status
            .success()
            .then_some(())
    })
    .await;
    eventually(SETTLE, async || {
        (0..3)
            .all(|i| held_by(i).iter().any(|(id, _)| *id == base))
            .then_some(())
    })
    .await;

    // A is cut off. Inside A's namespace alice pushes main and a branch of her own
    // (to A's registered loopback URL); from the host, bob pushes main and another
    // branch to B.
    ns.link(0, false);
    let a_main = alice.commit(&work, "README", "alice during the cut");
    let inside = |args: &[&str]| {
        ok(&alice
            .command_via(ns.command(0, "git"), &work, args)
            .output()
            .unwrap());
    };
    let a_url = "http://127.0.0.1:8680/demo.git";
    inside(&["push", "-q", "--signed", a_url, "main"]);
    inside(&["push", "-q", "--signed", a_url, "main:refs/heads/a-only"]);
    let bobs = bob.init("bobs");
    bob.git_ok(&bobs, &["fetch", "-q", &nodes[1].2, "main"]);
    bob.git_ok(&bobs, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    let b_main = bob.commit(&bobs, "b.txt", "bob during the cut");
    bob.git_ok(&bobs, &["push", "-q", "--signed", &nodes[1].2, "main"]);
    bob.git_ok(
        &bobs,
        &[
            "push",
            "-q",
            "--signed",
            &nodes[1].2,
            "main:refs/heads/b-only",
        ],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !held_by(0).iter().any(|(id, _)| *id == b_main),
        "A got B's push through a cut link"
    );

    // Healed: everyone holds the same, both mains kept, both branches everywhere.
    ns.link(0, true);
    let settled = eventually(SETTLE, async || {
        let first = held_by(0);
        (first.iter().any(|(_, n)| n == "refs/heads/a-only")
            && first.iter().any(|(_, n)| n == "refs/heads/b-only")
            && (1..3).all(|i| held_by(i) == first))
        .then_some(first)
    })
    .await;
    for tip in [&a_main, &b_main] {
        assert!(
            settled.iter().any(|(id, n)| id == tip
                && (n == "refs/heads/main" || n.starts_with("refs/superseded/"))),
            "{tip} lost: {settled:?}"
        );
    }
    for (dir, _, _) in &nodes {
        fsck(&dir.path().join(format!("repos/{demo}.git")));
    }
}

/// Ref rules and the default branch on chain hold on every node: main's rule names
/// only bob, so the owner cannot push it, and the owner's certificate for main,
/// relayed by a staked node, moves it nowhere; bob's push moves it everywhere. A tag
/// rule lets carol, no committer, push release tags and nothing else; a rule asking
/// two signatures holds one, naming who must still sign. Clones from any node check out
/// the default branch the chain names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ref_rules_and_the_default_branch_hold_on_every_node() {
    let net = Devnet::start().await;
    let (alice, bob, carol, demo) = people(&net).await;
    let nodes = net.cluster(3, 5).await;
    let work = alice.init("work");
    let base = alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["branch", "unstable"]);
    alice.git_ok(&work, &["branch", "a-2011-release"]);
    alice.git_ok(
        &work,
        &[
            "push",
            "--signed",
            &nodes[0].url("demo"),
            "main",
            "unstable",
            "a-2011-release",
        ],
    );
    converged(&alice, &all_of(&nodes)).await;

    let a = net.client(1).await;
    a.set_ref_rule("demo", "refs/heads/main", &["bob".into()], 1)
        .await
        .unwrap();
    a.set_ref_rule("demo", "refs/tags/v*", &["carol".into()], 1)
        .await
        .unwrap();
    a.set_ref_rule(
        "demo",
        "refs/heads/release-*",
        &["alice".into(), "bob".into()],
        2,
    )
    .await
    .unwrap();
    a.set_default_branch("demo", "unstable").await.unwrap();
    let block = net.confirm().await;
    for m in &nodes {
        m.node().synced_to(block).await;
    }

    // The owner may not move main any more, on any node.
    let owners = alice.commit(&work, "README", "owner's change");
    for m in &nodes {
        let out = alice.git_err(&work, &["push", "--signed", &m.url("demo"), "main"]);
        assert!(
            out.contains("alice, who may not move refs/heads/main of repo demo: its ref rule refs/heads/main on chain allows only bob"),
            "{out}"
        );
    }
    // Nor through a staked node relaying her certificate: A and C refuse it (their
    // ACL might lag B's, so it is no proof against B) and main stays, though every
    // node holds the commit (pushed to a branch no rule governs).
    alice.git_ok(
        &work,
        &[
            "push",
            "--signed",
            &nodes[0].url("demo"),
            "HEAD:refs/heads/side",
        ],
    );
    let before = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&before, "refs/heads/side"), Some(owners.clone()));
    assert_eq!(tip(&before, "refs/heads/main"), Some(base.clone()));
    let unusable = async || {
        [
            nodes[0].metric("hanzo_p2p_updates_total", "unusable").await,
            nodes[2].metric("hanzo_p2p_updates_total", "unusable").await,
        ]
    };
    let unusable_before = unusable().await;
    let cmd = format!("{base} {owners} refs/heads/main\n");
    let update = RefUpdate {
        repo: demo,
        refs: vec![("refs/heads/main".into(), oid(&base), oid(&owners))],
        cert: certificate_for(&alice, &nodes[1], unix_now(), &cmd),
        announced_ms: 0,
        cosigned: Vec::new(),
    };
    nodes[1]
        .node()
        .p2p
        .clone()
        .unwrap()
        .publish_raw(demo, update.encode())
        .await;
    eventually(SETTLE, async || {
        let now = unusable().await;
        (0..2)
            .all(|n| now[n] >= unusable_before[n] + 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(converged(&alice, &all_of(&nodes)).await, before);

    // Two signatures asked: one waits, naming whose are still needed.
    alice.git_ok(&work, &["branch", "release-1", &base]);
    let out = alice.git_err(
        &work,
        &["push", "--signed", &nodes[0].url("demo"), "release-1"],
    );
    assert!(
        out.contains("refs/heads/release-1 waits for signatures: 1 of 2 (alice); still to sign: bob (ref rule refs/heads/release-*)"),
        "{out}"
    );

    // Bob, whom the rule names, moves main on every node.
    let bobs = bob.init("bobs");
    bob.git_ok(&bobs, &["pull", "-q", &nodes[1].url("demo"), "main"]);
    let bobs_tip = bob.commit(&bobs, "README", "bob's change");
    bob.git_ok(
        &bobs,
        &[
            "push",
            "--signed",
            &nodes[1].url("demo"),
            "HEAD:refs/heads/main",
        ],
    );
    let after = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&after, "refs/heads/main"), Some(bobs_tip.clone()));

    // Carol, no committer, pushes a release tag but not a branch, and not another tag.
    let carols = carol.init("carols");
    carol.git_ok(&carols, &["pull", "-q", &nodes[2].url("demo"), "main"]);
    carol.git_ok(&carols, &["tag", "v1.0"]);
    carol.git_ok(&carols, &["tag", "nightly"]);
    carol.git_ok(
        &carols,
        &["push", "--signed", &nodes[2].url("demo"), "v1.0"],
    );
    let out = carol.git_err(
        &carols,
        &["push", "--signed", &nodes[2].url("demo"), "nightly"],
    );
    assert!(
        out.contains("carol, who is not a committer of repo demo"),
        "{out}"
    );
    let after = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&after, "refs/tags/v1.0"), Some(bobs_tip.clone()));
    assert_eq!(tip(&after, "refs/tags/nightly"), None);

    // Every node points HEAD at the default branch: a clone checks out unstable,
    // not main and not the first branch by name.
    for (i, m) in nodes.iter().enumerate() {
        let out = alice.git_ok(
            alice.home.path(),
            &["ls-remote", "--symref", &m.url("demo"), "HEAD"],
        );
        assert!(
            out.starts_with("ref: refs/heads/unstable\tHEAD"),
            "node {i}: {out}"
        );
        let clone = alice.home.path().join(format!("clone-{i}"));
        alice.git_ok(
            alice.home.path(),
            &["clone", "-q", &m.url("demo"), clone.to_str().unwrap()],
        );
        assert_eq!(
            alice
                .git_ok(&clone, &["rev-parse", "--abbrev-ref", "HEAD"])
                .trim(),
            "unstable",
            "node {i}"
        );
    }
}

/// A 2-of-3 rule on main: one signer's push waits (its tip shown under
/// refs/pending/), a committer whom the rule does not name cannot sign, the same
/// signer twice counts once, and the second signer's push of the same update moves
/// main on every node with both certificates recorded everywhere. Replicas check the
/// signatures themselves: an update relayed with a non-signer's or another update's
/// certificate as its second signature changes nothing, and the same update with a
/// real second signer's certificate applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_of_three_signers_move_main_on_every_node() {
    let net = Devnet::start().await;
    let (alice, bob, _, demo) = people(&net).await;
    let dave = GitUser::new("dave");
    net.identity_for(4, &dave).await;
    let a = net.client(1).await;
    a.set_member("demo", "dave", Role::Committer, true)
        .await
        .unwrap();
    let nodes = net.cluster(3, 5).await;
    let work = alice.init("work");
    let base = alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["push", "--signed", &nodes[0].url("demo"), "main"]);
    converged(&alice, &all_of(&nodes)).await;
    a.set_ref_rule(
        "demo",
        "refs/heads/main",
        &["alice".into(), "bob".into(), "carol".into()],
        2,
    )
    .await
    .unwrap();
    let block = net.confirm().await;
    for m in &nodes {
        m.node().synced_to(block).await;
    }

    // Alice's push waits for a second signature; main stays on every node.
    let url = nodes[0].url("demo");
    let proposed = alice.commit(&work, "README", "reviewed change");
    let pending_ref = format!("refs/pending/{proposed}/heads/main");
    for _ in 0..2 {
        let out = alice.git_err(&work, &["push", "--signed", &url, "main"]);
        for line in [
            "refs/heads/main waits for signatures: 1 of 2 (alice); still to sign: bob, carol (ref rule refs/heads/main)".to_owned(),
            format!("git fetch {url} {pending_ref}"),
            format!("git push --signed {url} {proposed}:refs/heads/main"),
            "main -> main (pending: 1 of 2 signatures)".to_owned(),
        ] {
            assert!(out.contains(&line), "{line:?} not in\n{out}");
        }
    }
    assert_eq!(
        alice
            .ls_remote(&url)
            .iter()
            .find(|(_, n)| *n == pending_ref),
        Some(&(proposed.clone(), pending_ref.clone()))
    );
    let before = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&before, "refs/heads/main"), Some(base.clone()));

    // Dave commits to demo but is no signer of main's rule: his signature is refused.
    let daves = dave.init("daves");
    dave.git_ok(&daves, &["fetch", "-q", &url, &pending_ref]);
    let out = dave.git_err(
        &daves,
        &[
            "push",
            "--signed",
            &url,
            &format!("{proposed}:refs/heads/main"),
        ],
    );
    assert!(
        out.contains("dave, who may not move refs/heads/main of repo demo: its ref rule refs/heads/main on chain allows only alice, bob, carol"),
        "{out}"
    );

    // Bob reviews what he signs, then pushes the same update: main moves everywhere.
    let bobs = bob.init("bobs");
    bob.git_ok(&bobs, &["fetch", "-q", &url, &pending_ref]);
    assert_eq!(bob.rev(&bobs, "FETCH_HEAD"), proposed);
    bob.git_ok(
        &bobs,
        &[
            "push",
            "--signed",
            &url,
            &format!("{proposed}:refs/heads/main"),
        ],
    );
    let after = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&after, "refs/heads/main"), Some(proposed.clone()));
    assert!(
        !alice
            .ls_remote(&url)
            .iter()
            .any(|(_, n)| n.starts_with("refs/pending/")),
        "the pending tip is gone once the update moved"
    );
    // Every node recorded both certificates: bob's, and alice's with it.
    for m in &nodes {
        let main = shown_main(&net, m);
        assert_eq!(main["handle"], "bob");
        let other = main["cosigned"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{main}"))
            .to_owned();
        let data = m.dir.path().to_str().unwrap().to_owned();
        let env = [("HANZO_DATA_DIR", data.as_str())];
        let text = ok(&net.cli(&["repo", "cert", "demo", &other], &env));
        assert!(text.contains(&alice.ssh.fingerprint()), "{text}");
        assert!(
            text.contains(&format!("{base} {proposed} refs/heads/main")),
            "{text}"
        );
    }

    // Relayed by a staked node: alice's certificate for the next update of main,
    // its objects on every node (a branch no rule governs), with a second
    // "signature" that is dave's (no signer), or bob's for another update. A and C
    // refuse both; with bob's for this very update, both apply it.
    let next = alice.commit(&work, "README", "relayed");
    alice.git_ok(&work, &["push", "--signed", &url, "HEAD:refs/heads/side"]);
    converged(&alice, &all_of(&nodes)).await;
    let cmd = format!("{proposed} {next} refs/heads/main\n");
    let other = format!("{proposed} {base} refs/heads/main\n");
    let relay = async |cosigned: Vec<u8>| {
        let update = RefUpdate {
            repo: demo,
            refs: vec![("refs/heads/main".into(), oid(&proposed), oid(&next))],
            cert: certificate_for(&alice, &nodes[1], unix_now(), &cmd),
            announced_ms: 0,
            cosigned: vec![cosigned],
        };
        nodes[1]
            .node()
            .p2p
            .clone()
            .unwrap()
            .publish_raw(demo, update.encode())
            .await;
    };
    let refused = async || {
        [
            nodes[0].metric("hanzo_p2p_updates_total", "unusable").await
                + nodes[0].metric("hanzo_p2p_updates_total", "invalid").await,
            nodes[2].metric("hanzo_p2p_updates_total", "unusable").await
                + nodes[2].metric("hanzo_p2p_updates_total", "invalid").await,
        ]
    };
    let refused_before = refused().await;
    relay(certificate_for(&dave, &nodes[1], unix_now(), &cmd)).await;
    relay(certificate_for(&bob, &nodes[1], unix_now(), &other)).await;
    eventually(SETTLE, async || {
        let now = refused().await;
        (0..2)
            .all(|n| now[n] >= refused_before[n] + 2.0)
            .then_some(())
    })
    .await;
    let still = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&still, "refs/heads/main"), Some(proposed.clone()));
    relay(certificate_for(&bob, &nodes[1], unix_now(), &cmd)).await;
    eventually(SETTLE, async || {
        [&nodes[0], &nodes[2]]
            .iter()
            .all(|m| tip(&refs(&alice, m), "refs/heads/main") == Some(next.clone()))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quorum_push_returns_once_replicas_hold_it() {
    let net = Devnet::start().await;
    let (alice, _, _, _) = people(&net).await;
    let mut nodes = net.cluster(4, 5).await;
    let keys: Vec<String> = nodes.iter().map(|m| m.key().public().to_string()).collect();
    let work = alice.init("work");
    let url = nodes[0].url("demo");
    alice.commit(&work, "README", "base");
    alice.git_ok(&work, &["push", "--signed", &url, "main"]);
    converged(&alice, &all_of(&nodes)).await;

    // Quorum 2: the push answers ok once two other replicas hold it, and says which.
    let first = alice.commit(&work, "README", "held by two");
    let quorum = [
        "push",
        "--signed",
        "-o",
        "hanzo.quorum=2",
        url.as_str(),
        "main",
    ];
    let out = alice.git_ok(&work, &quorum);
    assert!(
        out.contains(
            "hanzo: held by 2 other replica(s) before it moved, each with a signed receipt:"
        ),
        "{out}"
    );
    let main = shown_main(&net, &nodes[0]);
    let holders: Vec<String> = main["receipts"]
        .as_array()
        .unwrap_or_else(|| panic!("{main}"))
        .iter()
        .map(|r| r["node"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(holders.len(), 2, "{main}");
    assert!(!holders.contains(&keys[0]), "{main}");
    for h in &holders {
        assert!(keys.contains(h), "{h} is none of the nodes");
        assert!(out.contains(h.as_str()), "{h} not named in:\n{out}");
        // A holder has main at the new tip the moment the push returns: were the
        // origin killed now, the push is on the quorum replicas.
        let m = &nodes[keys.iter().position(|k| k == h).unwrap()];
        assert_eq!(
            tip(&refs(&alice, m), "refs/heads/main"),
            Some(first.clone())
        );
    }

    // One replica away: two others still hold the push.
    nodes[3].stop().await;
    let second = alice.commit(&work, "README", "one away");
    let out = alice.git_ok(&work, &quorum);
    assert!(out.contains("hanzo: held by 2 other replica(s)"), "{out}");
    let settled = converged(&alice, &[&nodes[0], &nodes[1], &nodes[2]]).await;
    assert_eq!(tip(&settled, "refs/heads/main"), Some(second.clone()));

    // Two away: one other replica cannot make a quorum of two; refused, nothing moves.
    nodes[2].stop().await;
    alice.commit(&work, "README", "two away");
    let out = alice.git_err(&work, &quorum);
    assert!(
        out.contains("quorum not reached: 1 of the 2 other replicas asked for held the push"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in &nodes[..2] {
        assert_eq!(
            tip(&refs(&alice, m), "refs/heads/main"),
            Some(second.clone())
        );
    }

    // Back: every node agrees on the second push.
    nodes[2].restart(&net).await;
    nodes[3].restart(&net).await;
    let after = converged(&alice, &all_of(&nodes)).await;
    assert_eq!(tip(&after, "refs/heads/main"), Some(second));

    // The origin killed right after ok: the push is on the replicas that held it.
    let third = alice.commit(&work, "README", "origin dies");
    let out = alice.git_ok(&work, &quorum);
    nodes[0].stop().await;
    let held: Vec<_> = nodes[1..]
        .iter()
        .zip(&keys[1..])
        .filter(|(_, k)| out.contains(k.as_str()))
        .collect();
    assert_eq!(held.len(), 2, "{out}");
    for (m, _) in held {
        assert_eq!(
            tip(&advertised(&alice, m), "refs/heads/main"),
            Some(third.clone())
        );
    }
}
