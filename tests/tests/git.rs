//! Git push and clone with the stock `git` binary against a real node and a real
//! anvil: signed pushes by on-chain committers, every refusal with its reason, the
//! owner's force-push, concurrent pushes, private repos, limits and malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use hanzo_e2e::{git::GitUser, *};
use hanzo_node::{acl::Member, config::Config, node::Node, unix_now};

/// A chain with alice (owner of public `demo` and `other` and private `secret`), bob (committer
/// of `demo`), carol (reader of `secret`, nothing on `demo`) and dave (a key of no
/// identity), and a node synced to it.
struct World {
    net: Devnet,
    node: Node,
    alice: GitUser,
    bob: GitUser,
    carol: GitUser,
    dave: GitUser,
    demo: u64,
    secret: u64,
}

impl World {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let net = Devnet::start().await;
        let (alice, bob, carol, dave) = (
            GitUser::new("alice"),
            GitUser::new("bob"),
            GitUser::new("carol"),
            GitUser::new("dave"),
        );
        net.identity_for(1, &alice).await;
        net.identity_for(2, &bob).await;
        net.identity_for(3, &carol).await;
        let a = net.client(1).await;
        let demo = a.create_repo("demo", "alice", false).await.unwrap();
        let secret = a.create_repo("secret", "alice", true).await.unwrap();
        a.create_repo("other", "alice", false).await.unwrap();
        a.set_member("demo", "bob", Member::Committer, true)
            .await
            .unwrap();
        a.set_member("secret", "carol", Member::Reader, true)
            .await
            .unwrap();
        let mut config = net.config();
        tweak(&mut config);
        let node = Node::start(config).await.unwrap();
        let block = net.confirm().await;
        node.synced_to(block).await;
        Self {
            net,
            node,
            alice,
            bob,
            carol,
            dave,
            demo,
            secret,
        }
    }

    fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}.git", self.node.http_addr)
    }

    /// Waits until the node has applied everything on chain so far.
    async fn sync(&self) {
        let block = self.net.confirm().await;
        self.node.synced_to(block).await;
    }

    /// The tips `ls-remote` shows for `repo`.
    fn tips(&self, repo: &str) -> Vec<(String, String)> {
        self.dave.ls_remote(&self.url(repo))
    }

    /// `git fsck` of the node's copy of repo `id` is clean and no quarantine is left.
    fn assert_repo_clean(&self, id: u64) {
        let dir = self.net.repo_dir(id);
        let out = self
            .dave
            .git_ok(&dir, &["fsck", "--strict", "--no-dangling"]);
        assert!(!out.contains("error"), "{out}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("objects"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
            .collect();
        assert!(leftovers.is_empty(), "quarantines left: {leftovers:?}");
    }
}

/// Has git get private-repo read tokens for each of `users` from the node's
/// credential helper, signed with the user's key.
fn read_tokens_for(users: &[&GitUser]) {
    let helper = format!("!{} git-credential --key", node_bin().display());
    for user in users {
        user.config(
            "credential.helper",
            &format!("{helper} {}", user.key.display()),
        );
        user.config("credential.useHttpPath", "true");
    }
}

/// The refusal for a key no identity carries.
fn no_identity(user: &GitUser) -> String {
    format!("key {} belongs to no identity", user.ssh.fingerprint())
}

/// A `gpg.ssh.program` that runs `ssh-keygen` after `script` (a shell snippet).
fn signer_script(user: &GitUser, name: &str, before: &str, after: &str) -> String {
    let path = user.home.path().join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{before}\nssh-keygen \"$@\" || exit 1\nfor last; do :; done\n{after}\n"
        ),
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path.display().to_string()
}

/// `git push --signed origin main` in `dir` with `program` as `gpg.ssh.program`.
fn push_with_signer(user: &GitUser, dir: &std::path::Path, program: &str) -> std::process::Output {
    let signer = format!("gpg.ssh.program={program}");
    user.git(dir, &["-c", &signer, "push", "--signed", "origin", "main"])
}

/// A POST over a fresh connection: (status, body).
fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&resp[..head_end]);
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, resp[head_end + 4..].to_vec())
}

fn pkt(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
    out.extend_from_slice(line);
}

/// The push-cert nonce the node advertises for `repo`.
fn nonce(w: &World, repo: &str) -> String {
    hanzo_e2e::git::push_nonce(&w.url(repo))
}

/// A push request with a certificate for `commands` signed by `user` at unix `time`,
/// then `pack`.
fn signed_request(
    w: &World,
    user: &GitUser,
    repo: &str,
    nonce: &str,
    time: u64,
    commands: &str,
    pack: &[u8],
) -> Vec<u8> {
    let cert = format!(
        "certificate version 0.1\npusher {} {time} +0000\npushee {}\nnonce {nonce}\n\n{commands}",
        user.ssh.fingerprint(),
        w.url(repo)
    );
    let sig = git::piped(
        Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "git", "-f"])
            .arg(&user.key),
        cert.as_bytes(),
    );
    let sig = String::from_utf8(sig).unwrap();
    let mut body = Vec::new();
    pkt(&mut body, b"push-cert\0report-status\n");
    for line in format!("{cert}{sig}").split_inclusive('\n') {
        pkt(&mut body, line.as_bytes());
    }
    pkt(&mut body, b"push-cert-end\n");
    body.extend_from_slice(b"0000");
    body.extend_from_slice(pack);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_pushes_are_accepted_and_every_refusal_names_its_reason() {
    let w = World::start(|c| c.git.nonce_window = Duration::from_secs(8)).await;
    let url = w.url("demo");
    let (alice, bob, carol, dave) = (&w.alice, &w.bob, &w.carol, &w.dave);

    // Alice, the owner, pushes; a stranger clones the same tree.
    let work = alice.init("demo");
    let first = alice.commit(&work, "README", "hello");
    // (--progress: git asks for quiet when stderr is no terminal.)
    let out = alice.git_ok(&work, &["push", "--signed", "--progress", &url, "main"]);
    assert!(
        out.contains("remote: hanzo: accepted 1 ref update(s), 3 object(s), signed by alice"),
        "{out}"
    );
    assert_eq!(
        w.tips("demo"),
        vec![
            (first.clone(), "HEAD".into()),
            (first.clone(), "refs/heads/main".into())
        ]
    );
    let clone = dave.home.path().join("clone");
    dave.git_ok(
        dave.home.path(),
        &["clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(dave.rev(&clone, "HEAD"), first);
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).unwrap(),
        "hello"
    );
    // Protocol v0 fetches work too.
    dave.git_ok(
        &clone,
        &["-c", "protocol.version=0", "fetch", "-q", "origin"],
    );

    // The tip is justified by alice's certificate.
    let refs = ok(&w.net.cli(&["repo", "refs", "demo", "--json"], &[]));
    let refs: serde_json::Value = serde_json::from_str(&refs).unwrap();
    assert_eq!(refs[0]["ref"], "refs/heads/main");
    assert_eq!(refs[0]["target"], first.as_str());
    assert_eq!(refs[0]["handle"], "alice");
    assert_eq!(refs[0]["key"], alice.ssh.fingerprint().as_str());
    assert_eq!(refs[0]["cert"].as_str().unwrap().len(), 64);
    // The certificate itself, by a prefix of its hash: what alice's git signed.
    let prefix = &refs[0]["cert"].as_str().unwrap()[..12];
    let cert = ok(&w.net.cli(&["repo", "cert", "demo", prefix], &[]));
    assert!(cert.starts_with("certificate version 0.1\n"), "{cert}");
    assert!(
        cert.contains(&format!(" {first} refs/heads/main\n")),
        "{cert}"
    );
    assert!(cert.contains("-----BEGIN SSH SIGNATURE-----"), "{cert}");
    let err = fails(&w.net.cli(&["repo", "cert", "demo", "ffffffffffff"], &[]));
    assert!(
        err.contains("`hanzo-node repo refs demo` lists them"),
        "{err}"
    );

    // Bob, a committer, works on a clone.
    let bwork = bob.home.path().join("demo");
    bob.git_ok(
        bob.home.path(),
        &["clone", "-q", &url, bwork.to_str().unwrap()],
    );
    let second = bob.commit(&bwork, "b.txt", "from bob");
    let unchanged = w.tips("demo");

    // Unsigned.
    let out = bob.git_err(&bwork, &["push", "origin", "main"]);
    assert!(out.contains("pushes must be signed"), "{out}");
    // A key whose identity is no committer.
    let cwork = carol.home.path().join("demo");
    carol.git_ok(
        carol.home.path(),
        &["clone", "-q", &url, cwork.to_str().unwrap()],
    );
    carol.commit(&cwork, "c.txt", "from carol");
    let out = carol.git_err(&cwork, &["push", "--signed", "origin", "main"]);
    let expected = format!(
        "key {} belongs to identity carol, who is not a committer of repo demo",
        carol.ssh.fingerprint()
    );
    assert!(out.contains(&format!("remote: error: {expected}")), "{out}");
    // A key of no identity.
    let dwork = dave.home.path().join("clone");
    dave.commit(&dwork, "d.txt", "from dave");
    let out = dave.git_err(&dwork, &["push", "--signed", "origin", "main"]);
    assert!(out.contains(&no_identity(dave)), "{out}");
    // A signature that does not verify.
    let broken = signer_script(
        bob,
        "broken-signer",
        "",
        "sed -i '3y/ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz/BCDEFGHIJKLMNOPQRSTUVWXYZAbcdefghijklmnopqrstuvwxyza/' \"$last.sig\"",
    );
    let out = git::output_text(&push_with_signer(bob, &bwork, &broken));
    assert!(out.contains("SSH signature"), "{out}");
    // A nonce older than the window (8 s here): the signer takes 10 s.
    let slow = signer_script(bob, "slow-signer", "sleep 10", "");
    let out = git::output_text(&push_with_signer(bob, &bwork, &slow));
    assert!(
        out.contains("nonce is") && out.contains("beyond the 8s window"),
        "{out}"
    );
    // A nonce issued for another repo, on a certificate that would delete main.
    let foreign = nonce(&w, "other");
    let body = signed_request(
        &w,
        alice,
        "demo",
        &foreign,
        unix_now(),
        &format!("{first} {} refs/heads/main\n", "0".repeat(40)),
        b"",
    );
    let (status, resp) = http_post(w.node.http_addr, "/demo.git/git-receive-pack", &body);
    let resp = String::from_utf8_lossy(&resp);
    assert_eq!(status, 200);
    assert!(
        resp.contains("ng refs/heads/main push certificate nonce")
            && resp.contains("was issued for repo ")
            && resp.contains(&format!(", not {}", w.demo)),
        "{resp}"
    );
    assert_eq!(w.tips("demo"), unchanged, "no refusal moved a ref");

    // Bob's signed fast-forward is accepted.
    bob.git_ok(&bwork, &["push", "--signed", "origin", "main"]);
    assert_eq!(
        w.tips("demo")[1],
        (second.clone(), "refs/heads/main".into())
    );
    // A stranger pulls it.
    dave.git_ok(&dwork, &["reset", "-q", "--hard", "origin/main"]);
    dave.git_ok(&dwork, &["pull", "-q", "--ff-only"]);
    assert_eq!(dave.rev(&dwork, "HEAD"), second);
    assert_eq!(
        std::fs::read_to_string(dwork.join("b.txt")).unwrap(),
        "from bob"
    );

    // Rewriting history: refused to a committer, allowed to the owner.
    bob.git_ok(&bwork, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let out = bob.git_err(&bwork, &["push", "--signed", "--force", "origin", "main"]);
    assert!(
        out.contains(
            "only the owner of repo demo may rewrite or delete refs/heads/main (for a ref rule, the owner among its signers); bob is not the owner"
        ),
        "{out}"
    );
    bob.git_ok(
        &bwork,
        &["push", "--signed", "origin", "HEAD:refs/heads/topic"],
    );
    let out = bob.git_err(&bwork, &["push", "--signed", "origin", ":refs/heads/topic"]);
    assert!(
        out.contains("may rewrite or delete refs/heads/topic"),
        "{out}"
    );
    alice.git_ok(&work, &["commit", "-q", "--amend", "-m", "owner rewrites"]);
    let rewritten = alice.rev(&work, "HEAD");
    // Replicas order a ref's updates by certificate time in whole seconds: a rewrite
    // or deletion needs a later second than the update it replaces (git/register.rs).
    std::thread::sleep(Duration::from_millis(1100));
    alice.git_ok(&work, &["push", "--signed", "--force", &url, "main"]);
    alice.git_ok(&work, &["push", "--signed", &url, ":refs/heads/topic"]);
    assert_eq!(
        w.tips("demo"),
        vec![
            (rewritten.clone(), "HEAD".into()),
            (rewritten.clone(), "refs/heads/main".into())
        ]
    );

    // On-chain changes take effect: a revoked key, then a removed committer.
    bob.git_ok(&bwork, &["fetch", "-q", "origin"]);
    bob.git_ok(&bwork, &["reset", "-q", "--hard", "origin/main"]);
    bob.commit(&bwork, "b2.txt", "again");
    w.net
        .client(2)
        .await
        .revoke_key("bob", &bob.acl_key())
        .await
        .unwrap();
    w.sync().await;
    let out = bob.git_err(&bwork, &["push", "--signed", "origin", "main"]);
    assert!(out.contains(&no_identity(bob)), "{out}");
    let a = w.net.client(1).await;
    a.set_member("demo", "carol", Member::Committer, true)
        .await
        .unwrap();
    w.sync().await;
    carol.git_ok(&cwork, &["fetch", "-q", "origin"]);
    carol.git_ok(&cwork, &["reset", "-q", "--hard", "origin/main"]);
    let by_carol = carol.commit(&cwork, "c.txt", "now a committer");
    carol.git_ok(&cwork, &["push", "--signed", "origin", "main"]);
    a.set_member("demo", "carol", Member::Committer, false)
        .await
        .unwrap();
    w.sync().await;
    carol.commit(&cwork, "c.txt", "no longer");
    let out = carol.git_err(&cwork, &["push", "--signed", "origin", "main"]);
    assert!(out.contains(&expected), "{out}");
    assert_eq!(w.tips("demo")[1], (by_carol, "refs/heads/main".into()));

    w.assert_repo_clean(w.demo);

    // A repo created on chain while the node runs is served once the ACL has it.
    let id = w
        .net
        .client(1)
        .await
        .create_repo("later", "alice", false)
        .await
        .unwrap();
    w.sync().await;
    eventually(Duration::from_secs(10), async || {
        w.net.repo_dir(id).exists().then_some(())
    })
    .await;
    let later = alice.init("later");
    let tip = alice.commit(&later, "x", "y");
    alice.git_ok(&later, &["push", "--signed", &w.url("later"), "main"]);
    assert_eq!(w.tips("later")[1], (tip, "refs/heads/main".into()));

    // Every push above is counted.
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", w.node.http_addr)])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("hanzo_git_pushes_accepted_total 7\n"),
        "{metrics}"
    );
    // Refusals are counted by reason: here all ten were the pushers' fault.
    assert!(
        metrics.contains("hanzo_git_pushes_refused_total{reason=\"denied\"} 10\n"),
        "{metrics}"
    );
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_to_one_ref_exactly_one_wins() {
    let w = World::start(|_| {}).await;
    let url = w.url("demo");
    let work = w.alice.init("demo");
    w.alice.commit(&work, "README", "base");
    w.alice.git_ok(&work, &["push", "--signed", &url, "main"]);

    // Both read the refs, then sign slowly, so both certificates expect the same old tip.
    let mut pushes = Vec::new();
    for user in [&w.alice, &w.bob] {
        let dir = user.home.path().join("race");
        user.git_ok(
            user.home.path(),
            &["clone", "-q", &url, dir.to_str().unwrap()],
        );
        let tip = user.commit(&dir, &format!("{}.txt", user.name), "mine");
        let slow = signer_script(user, "slow-signer", "sleep 1", "");
        pushes.push((tip, dir, slow));
    }
    let outcomes = std::thread::scope(|s| {
        let handles: Vec<_> = [&w.alice, &w.bob]
            .into_iter()
            .zip(&pushes)
            .map(|(user, (_, dir, slow))| s.spawn(move || push_with_signer(user, dir, slow)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let won: Vec<bool> = outcomes.iter().map(|o| o.status.success()).collect();
    assert_eq!(
        won.iter().filter(|w| **w).count(),
        1,
        "exactly one push wins: {outcomes:?}"
    );
    let loser = outcomes.iter().find(|o| !o.status.success()).unwrap();
    let text = git::output_text(loser);
    assert!(text.contains("fetch first"), "{text}");
    let winner_tip = &pushes[won.iter().position(|w| *w).unwrap()].0;
    assert_eq!(w.tips("demo")[1].0, *winner_tip);
    w.assert_repo_clean(w.demo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_repo_clones_need_a_reader_key() {
    let w = World::start(|_| {}).await;
    let url = w.url("secret");
    read_tokens_for(&[&w.alice, &w.carol, &w.dave]);
    let work = w.alice.init("secret");
    let tip = w.alice.commit(&work, "plans", "secret plans");
    w.alice.git_ok(&work, &["push", "--signed", &url, "main"]);

    // No credentials at all: git asks for a password, and may not prompt here.
    let out = w.bob.git_err(w.bob.home.path(), &["clone", &url]);
    assert!(out.contains("terminal prompts disabled"), "{out}");
    // A key of no identity: refused with the reason.
    let out = w.dave.git_err(w.dave.home.path(), &["clone", &url]);
    assert!(out.contains(&no_identity(&w.dave)), "{out}");
    // A reader clones.
    let dir = w.carol.home.path().join("secret");
    w.carol.git_ok(
        w.carol.home.path(),
        &["clone", "-q", &url, dir.to_str().unwrap()],
    );
    assert_eq!(w.carol.rev(&dir, "HEAD"), tip);
    // Reading is not committing.
    w.carol.commit(&dir, "plans", "leaked");
    let out = w
        .carol
        .git_err(&dir, &["push", "--signed", "origin", "main"]);
    assert!(
        out.contains("carol, who is not a committer of repo secret"),
        "{out}"
    );
    w.assert_repo_clean(w.secret);
}

/// A 2-of-2 rule on main: of two competing updates, the one that reaches both
/// signatures first moves main, and the other never does; a signature older than
/// `git.pending_expiry` no longer counts, and the tips of expired updates leave
/// `refs/pending/`; a restart keeps what is still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_updates_compete_and_expire() {
    let expiry = Duration::from_secs(4);
    let w = World::start(|c| c.git.pending_expiry = expiry).await;
    let url = w.url("demo");
    let work = w.alice.init("demo");
    let base = w.alice.commit(&work, "README", "base");
    w.alice.git_ok(&work, &["push", "--signed", &url, "main"]);
    w.net
        .client(1)
        .await
        .set_ref_rule(
            "demo",
            "refs/heads/main",
            &["alice".into(), "bob".into()],
            2,
        )
        .await
        .unwrap();
    w.sync().await;
    let World {
        net,
        node,
        alice,
        bob,
        dave,
        ..
    } = w;
    let tips = |url: &str, prefix: &str| {
        let mut tips: Vec<String> = dave
            .ls_remote(url)
            .into_iter()
            .filter(|(_, n)| n.starts_with(prefix))
            .map(|(id, _)| id)
            .collect();
        tips.sort();
        tips
    };
    let push = |user: &GitUser, dir: &std::path::Path, url: &str, tip: &str| {
        let fetch = format!("refs/pending/{tip}/heads/main");
        if user.rev(dir, "HEAD") != tip {
            user.git_ok(dir, &["fetch", "-q", url, &fetch]);
        }
        git::output_text(&user.git(
            dir,
            &["push", "--signed", url, &format!("{tip}:refs/heads/main")],
        ))
    };

    // Alice proposes X, bob proposes Y: both wait, both tips shown.
    let x = alice.commit(&work, "README", "x");
    let bobs = bob.init("demo");
    bob.git_ok(&bobs, &["pull", "-q", &url, "main"]);
    let y = bob.commit(&bobs, "README", "y");
    assert!(push(&alice, &work, &url, &x).contains("1 of 2 (alice)"));
    assert!(push(&bob, &bobs, &url, &y).contains("1 of 2 (bob)"));
    let mut both = vec![x.clone(), y.clone()];
    both.sort();
    assert_eq!(tips(&url, "refs/pending/"), both);
    assert_eq!(tips(&url, "refs/heads/main"), vec![base.clone()]);
    // Alice signs Y too: Y moves main. X can no longer: the tip it expects is gone.
    let out = push(&alice, &work, &url, &y);
    assert!(
        out.contains(&format!("{}..{}", &base[..7], &y[..7])),
        "{out}"
    );
    assert_eq!(tips(&url, "refs/heads/main"), vec![y.clone()]);
    let out = push(&bob, &bobs, &url, &x);
    assert!(out.contains("rejected"), "{out}");
    assert_eq!(tips(&url, "refs/heads/main"), vec![y.clone()]);

    // Z (on Y) waits through a restart of the node.
    alice.git_ok(&work, &["reset", "-q", "--hard", &y]);
    let z = alice.commit(&work, "README", "z");
    assert!(push(&alice, &work, &url, &z).contains("1 of 2 (alice)"));
    node.shutdown().await;
    let mut config = net.config();
    config.git.pending_expiry = expiry;
    let node = Node::start(config).await.unwrap();
    node.synced_to(net.confirm().await).await;
    let url = format!("http://{}/demo.git", node.http_addr);
    assert_eq!(tips(&url, "refs/pending/"), {
        let mut all = vec![x.clone(), z.clone()];
        all.sort();
        all
    });
    // After the expiry alice's signature no longer counts, and the tips of expired
    // updates are gone.
    tokio::time::sleep(expiry + Duration::from_secs(1)).await;
    let out = push(&bob, &bobs, &url, &z);
    assert!(out.contains("1 of 2 (bob); still to sign: alice"), "{out}");
    assert_eq!(tips(&url, "refs/pending/"), vec![z.clone()]);
    assert_eq!(tips(&url, "refs/heads/main"), vec![y]);
    node.shutdown().await;
}

/// `git archive --remote=<url>` as stock git's HTTP server serves it: anyone for a
/// public repo, readers only for a private one; refs only, as stock git.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_archive_remote_is_served_within_read_rights() {
    let w = World::start(|_| {}).await;
    read_tokens_for(&[&w.alice, &w.carol, &w.dave]);
    let work = w.alice.init("both");
    w.alice.commit(&work, "plans", "secret plans");
    w.alice.commit(&work, "notes", "more");
    for repo in ["demo", "secret"] {
        w.alice
            .git_ok(&work, &["push", "--signed", &w.url(repo), "main"]);
    }
    let listing = |user: &GitUser, args: &[&str]| {
        let out = user
            .command(
                user.home.path(),
                &[&["archive", "--format=tar"][..], args].concat(),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", git::output_text(&out));
        let tar = git::piped(Command::new("tar").arg("t"), &out.stdout);
        let mut names: Vec<String> = String::from_utf8(tar)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };
    // Public: dave, with a key of no identity, archives it; the files match the commit.
    let remote = format!("--remote={}", w.url("demo"));
    assert_eq!(listing(&w.dave, &[&remote, "HEAD"]), ["notes", "plans"]);
    // Refs only, not any revision (git's uploadArchive.allowUnreachable is off).
    let out = w
        .dave
        .git_err(w.dave.home.path(), &["archive", &remote, "main~1"]);
    assert!(out.contains("no such ref: main~1"), "{out}");
    // Private: carol, a reader, may; dave may not, and is told why.
    let remote = format!("--remote={}", w.url("secret"));
    assert_eq!(listing(&w.carol, &[&remote, "main", "plans"]), ["plans"]);
    let out = w
        .dave
        .git_err(w.dave.home.path(), &["archive", &remote, "HEAD"]);
    assert!(out.contains(&no_identity(&w.dave)), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_and_malformed_requests_get_reasons() {
    let w = World::start(|c| {
        c.git.max_pack_bytes = 64 * 1024;
        c.git.max_ref_updates = 2;
        c.git.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let url = w.url("demo");
    let alice = &w.alice;
    let work = alice.init("demo");
    let base = alice.commit(&work, "README", "small");
    alice.git_ok(&work, &["push", "--signed", &url, "main"]);

    // A pack over git.max_pack_bytes: 200 KB that do not compress.
    let mut noise = vec![0u8; 200_000];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::write(work.join("noise"), &noise).unwrap();
    alice.git_ok(&work, &["add", "noise"]);
    alice.git_ok(&work, &["commit", "-q", "-m", "noise"]);
    let out = alice.git_err(&work, &["push", "--signed", &url, "main"]);
    assert!(out.contains("git.max_pack_bytes"), "{out}");
    // More ref updates than git.max_ref_updates.
    alice.git_ok(&work, &["reset", "-q", "--hard", &base]);
    let out = alice.git_err(
        &work,
        &[
            "push",
            "--signed",
            &url,
            "main:refs/heads/a",
            "main:refs/heads/b",
            "main:refs/heads/c",
        ],
    );
    assert!(out.contains("git.max_ref_updates"), "{out}");
    assert_eq!(
        w.tips("demo"),
        vec![
            (base.clone(), "HEAD".into()),
            (base.clone(), "refs/heads/main".into())
        ]
    );

    let addr = w.node.http_addr;
    let path = "/demo.git/git-receive-pack";
    // Malformed pkt-lines.
    let (status, body) = http_post(addr, path, b"zzzz garbage");
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("pkt-line length"),
        "{body:?}"
    );
    // A garbage certificate.
    let mut req = Vec::new();
    pkt(&mut req, b"push-cert\0report-status\n");
    pkt(&mut req, b"this is not a certificate\n");
    pkt(&mut req, b"push-cert-end\n");
    req.extend_from_slice(b"0000");
    let (status, body) = http_post(addr, path, &req);
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("SSH signature"),
        "{body:?}"
    );
    // A validly signed push whose pack is cut in half.
    let next = alice.commit(&work, "more", "more");
    let pack = git::piped(
        Command::new("git")
            .args(["pack-objects", "--stdout", "--revs", "-q"])
            .current_dir(&work),
        format!("{next}\n^{base}\n").as_bytes(),
    );
    let nonce = nonce(&w, "demo");
    let update = format!("{base} {next} refs/heads/main\n");
    // Certificate time far from the node's clock.
    let req = signed_request(&w, alice, "demo", &nonce, unix_now() + 3600, &update, &pack);
    let (status, body) = http_post(addr, path, &req);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(body.contains("off this node's clock"), "{body}");
    // The pack cut in half.
    let req = signed_request(
        &w,
        alice,
        "demo",
        &nonce,
        unix_now(),
        &update,
        &pack[..pack.len() / 2],
    );
    let (status, body) = http_post(addr, path, &req);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(body.contains("ng refs/heads/main pack rejected"), "{body}");
    // A client that stalls mid-request is dropped with the reason.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n00"
    )
    .unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("git.idle_timeout"),
        "{body:?}"
    );

    assert_eq!(w.tips("demo")[1], (base, "refs/heads/main".into()));
    w.assert_repo_clean(w.demo);

    // A repo no token names.
    let out = alice.git_err(&work, &["ls-remote", &w.url("nope")]);
    assert!(
        out.contains("remote: no repo named \"nope\" on chain"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_pushes_and_restores_refs_no_push_justifies() {
    let w = World::start(|_| {}).await;
    let url = w.url("demo");
    let work = w.alice.init("demo");
    let first = w.alice.commit(&work, "a", "1");
    let second = w.alice.commit(&work, "b", "2");
    let refspec = format!("{first}:refs/heads/main");
    w.alice.git_ok(&work, &["push", "--signed", &url, &refspec]);

    // As if the node died after moving refs but before recording the push: a ref
    // moved and a ref created on disk, with no certificate behind them.
    let World {
        net,
        node,
        alice,
        dave,
        demo,
        ..
    } = w;
    node.shutdown().await;
    let dir = net.repo_dir(demo);
    let moved = format!("{second}:refs/heads/main");
    alice.git_ok(
        &work,
        &[
            "push",
            "-q",
            dir.to_str().unwrap(),
            &moved,
            "HEAD:refs/heads/stray",
        ],
    );

    let node = Node::start(net.config()).await.unwrap();
    let url = format!("http://{}/demo.git", node.http_addr);
    assert_eq!(
        dave.ls_remote(&url),
        vec![
            (first.clone(), "HEAD".into()),
            (first, "refs/heads/main".into())
        ]
    );
    // Pushing goes on from the recorded tip.
    alice.git_ok(&work, &["push", "--signed", &url, "main"]);
    assert_eq!(dave.ls_remote(&url)[1], (second, "refs/heads/main".into()));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_client_that_stops_reading_is_dropped() {
    let w = World::start(|c| c.git.idle_timeout = Duration::from_secs(2)).await;
    let work = w.alice.init("demo");
    let mut blob = vec![0u8; 20_000_000];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut blob)
        .unwrap();
    std::fs::write(work.join("big"), &blob).unwrap();
    w.alice.git_ok(&work, &["add", "big"]);
    w.alice.git_ok(&work, &["commit", "-q", "-m", "big"]);
    let tip = w.alice.rev(&work, "HEAD");
    w.alice
        .git_ok(&work, &["push", "--signed", &w.url("demo"), "main"]);

    // A protocol v0 fetch of everything, whose response the client does not read.
    let mut req = Vec::new();
    pkt(&mut req, format!("want {tip}\n").as_bytes());
    req.extend_from_slice(b"0000");
    pkt(&mut req, b"done\n");
    let mut s = TcpStream::connect(w.node.http_addr).unwrap();
    write!(
        s,
        "POST /demo.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        req.len()
    )
    .unwrap();
    s.write_all(&req).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert!(
        body.len() < blob.len(),
        "the whole pack ({} bytes) was still served after the client stalled",
        body.len()
    );
}

/// Each push adds a pack; past 50 of them the node combines them (`git gc --auto`,
/// as stock git's receive-pack does), in the background: pushes go on meanwhile,
/// nothing is lost, and a clone matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packs_from_many_pushes_are_combined_and_nothing_is_lost() {
    let w = World::start(|_| {}).await;
    let url = w.url("demo");
    let work = w.alice.init("demo");
    let packs = || {
        std::fs::read_dir(w.net.repo_dir(w.demo).join("objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    let mut most = 0;
    for i in 0..60 {
        w.alice.commit(&work, "log", &format!("push {i}"));
        w.alice
            .git_ok(&work, &["push", "-q", "--signed", &url, "main"]);
        most = most.max(packs());
    }
    assert!(most > 50, "each push adds a pack: at most {most}");
    // Combined once past 50: a pack or two, plus one per push since.
    let combined = eventually(Duration::from_secs(60), async || {
        let n = packs();
        (n <= 20).then_some(n)
    })
    .await;
    assert!(combined >= 1, "no pack left");
    let tip = w.alice.rev(&work, "HEAD");
    assert_eq!(w.tips("demo")[1], (tip.clone(), "refs/heads/main".into()));
    w.assert_repo_clean(w.demo);
    let clone = w.dave.home.path().join("clone");
    w.dave.git_ok(
        w.dave.home.path(),
        &["clone", "-q", &url, clone.to_str().unwrap()],
    );
    assert_eq!(w.dave.rev(&clone, "HEAD"), tip);
    assert_eq!(
        w.dave
            .git_ok(&clone, &["rev-list", "--count", "HEAD"])
            .trim(),
        "60"
    );
    // Pushing goes on after the repack.
    w.alice.commit(&work, "log", "after");
    w.alice
        .git_ok(&work, &["push", "-q", "--signed", &url, "main"]);
    w.node.shutdown().await;
}
