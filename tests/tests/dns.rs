//! pkarr DNS on a Mainline DHT of the devnet's own on loopback: nodes publish their
//! endpoints, a separate client resolves them (and follows a restart on a new port),
//! packets not signed by a node's key are never taken for it, and `hanzo://` clones
//! and signed pushes go through the chain and the DHT, failing over when a node is
//! down.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use hanzo_e2e::{cluster::Member, git::GitUser, *};
use hanzo_node::{
    acl::Member as Role,
    dns::{self, Endpoints, Resolver},
};

const SETTLE: Duration = Duration::from_secs(60);

/// Waits until `m`'s publisher has published a packet naming its operator.
async fn published(m: &Member) -> dns::Published {
    let mut publisher = m.node().dns.clone().expect("dns on");
    eventually(SETTLE, async || {
        let p = publisher.published()?;
        if p.endpoints.operator.is_some() {
            Some(p)
        } else {
            tokio::time::timeout(Duration::from_millis(200), publisher.changed())
                .await
                .ok()
                .flatten();
            None
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_separate_client_resolves_a_node_and_follows_its_restart() {
    let net = Devnet::start().await;
    let mut nodes = net.cluster(1, 5).await;
    let a = &nodes[0];
    let first = published(a).await;
    let shown = first.endpoints.clone();
    let key = a.key().public();
    let http = a.node().http_addr;
    let rpc = a.node().rpc_addr.unwrap();
    assert_eq!(shown.git, Some(format!("http://{http}")));
    assert_eq!(shown.grpc, Some(format!("http://{rpc}")));

    // A client of its own on the same DHT finds it, by node key and by operator.
    let resolver = Resolver::new(net.dht_client());
    let acl = net.client(0).await.snapshot().await.unwrap();
    let by_key = resolver.resolve(&acl, &key.to_string()).await.unwrap();
    assert_eq!(by_key.endpoints.git, Some(format!("http://{http}")));
    assert_eq!(by_key.operator, net.dev_address(5));
    assert_eq!(by_key.endpoints.operator, Some(net.dev_address(5)));
    let listen = a.p2p_addrs().await;
    // The libp2p addresses, without `/p2p/` (the PeerId is the key itself).
    let bare: Vec<String> = listen
        .iter()
        .map(|a| a.split("/p2p/").next().unwrap().to_owned())
        .collect();
    assert!(!bare.is_empty());
    assert_eq!(by_key.endpoints.p2p, bare);
    let by_operator = resolver
        .resolve(&acl, &net.dev_address(5).to_string())
        .await
        .unwrap();
    assert_eq!(by_operator.endpoints, by_key.endpoints);

    // The CLI says the same, as JSON and as text.
    let dir = a.dir.path().to_str().unwrap().to_owned();
    let json = ok(&net.cli(
        &["resolve", &key.to_string(), "--json"],
        &[("HANZO_DATA_DIR", dir.as_str())],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["git"], format!("http://{http}"));
    let text = ok(&net.cli(
        &["resolve", &net.dev_address(5).to_string()],
        &[("HANZO_DATA_DIR", dir.as_str())],
    ));
    assert!(text.contains(&format!("git: http://{http}")), "{text}");
    // A key no operator registered is refused, saying so.
    let stranger = hanzo_node::keys::NodeKey::generate().public();
    let refused = fails(&net.cli(
        &["resolve", &stranger.to_string()],
        &[("HANZO_DATA_DIR", dir.as_str())],
    ));
    assert!(
        refused.contains("not registered by any operator"),
        "{refused}"
    );

    // Restarted on the same addresses, it publishes the packet it kept in its store
    // again (same timestamp) rather than signing a new one.
    let mut config = net.config_in(nodes[0].dir.path());
    config.http.listen = http;
    config.rpc.listen = rpc;
    config.p2p.listen = listen.clone();
    nodes[0].stop().await;
    nodes[0].node = Some(hanzo_node::node::Node::start(config).await.unwrap());
    let again = published(&nodes[0]).await;
    assert_eq!(again.timestamp, first.timestamp);
    assert_eq!(again.endpoints, shown);

    // Restarted on another HTTP port: the next packet (newer) carries it.
    nodes[0].stop().await;
    nodes[0].restart(&net).await;
    let moved = nodes[0].node().http_addr;
    assert_ne!(moved, http);
    let after = eventually(SETTLE, async || {
        let r = resolver.resolve(&acl, &key.to_string()).await.ok()?;
        (r.endpoints.git == Some(format!("http://{moved}"))).then_some(r)
    })
    .await;
    assert!(after.published_us > by_key.published_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_packet_not_signed_by_the_node_key_is_never_taken_for_it() {
    let net = Devnet::start().await;
    let nodes = net.cluster(1, 5).await;
    let real = published(&nodes[0]).await.endpoints;
    let key = nodes[0].key().public();
    let client = net.dht_client();

    // Another key publishes a packet naming an attacker's endpoints.
    let evil = Endpoints {
        git: Some("http://198.51.100.66:80".into()),
        ..real.clone()
    };
    let other = pkarr::Keypair::random();
    let (forged, _) = dns::packet(&other, &evil, pkarr::Timestamp::now()).unwrap();
    client.publish(&forged).await.unwrap();
    // The same bytes presented as the node's own packet do not verify.
    let node_pk = dns::public_key(&key).unwrap();
    assert!(pkarr::SignedPacket::from_relay_payload(&node_pk, &forged.to_relay_payload()).is_err());
    // Nor does the node's packet with one byte of its records changed.
    let own = client
        .resolve(&node_pk, pkarr::ResolvePolicy::NetworkOnly)
        .await
        .unwrap();
    let mut tampered = own.to_relay_payload().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(pkarr::SignedPacket::from_relay_payload(&node_pk, &tampered.into()).is_err());

    // Resolution of the node still gives its own endpoints; the other key is no
    // operator's, so it is refused.
    let resolver = Resolver::new(client);
    let acl = net.client(0).await.snapshot().await.unwrap();
    let r = resolver.resolve(&acl, &key.to_string()).await.unwrap();
    assert_eq!(r.endpoints.git, real.git);
    let z32 = other.public_key().to_z32();
    let err = resolver.resolve(&acl, &z32).await.unwrap_err().to_string();
    assert!(err.contains("not registered by any operator"), "{err}");
}

/// Points `user`'s git at the devnet's chain and DHT, as the README says.
fn hanzo_git_config(net: &Devnet, user: &GitUser) {
    user.config("hanzo.rpcUrl", &net.anvil.endpoint());
    user.config(
        "hanzo.deployment",
        net.dir.path().join("deployment.json").to_str().unwrap(),
    );
    user.config("hanzo.dhtBootstrap", &net.dht.bootstrap.join(","));
    user.config("hanzo.dhtTimeout", "100ms");
}

/// The node key the helper said it used.
fn used_node(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("hanzo: using node ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no node named in:\n{output}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hanzo_urls_clone_and_push_signed_with_the_first_choice_node_down() {
    let net = Devnet::start().await;
    let alice = GitUser::new("alice");
    net.identity_for(1, &alice).await;
    let owner = net.client(1).await;
    owner.create_repo("demo", "alice", false).await.unwrap();
    let bob = GitUser::new("bob");
    net.identity_for(2, &bob).await;
    owner
        .set_member("demo", "bob", Role::Committer, true)
        .await
        .unwrap();
    let mut nodes = net.cluster(2, 5).await;
    for m in &nodes {
        published(m).await;
    }
    hanzo_git_config(&net, &alice);
    hanzo_git_config(&net, &bob);

    // A signed push through hanzo:// lands on a node, and replicates.
    let work = alice.init("work");
    alice.commit(&work, "README", "hello");
    let pushed = alice.git_ok(&work, &["push", "--signed", "hanzo://demo", "main"]);
    let first = used_node(&pushed);
    let tip = alice.rev(&work, "HEAD");
    for m in &nodes {
        eventually(SETTLE, async || {
            alice
                .ls_remote(&m.url("demo"))
                .iter()
                .any(|(id, n)| *id == tip && n == "refs/heads/main")
                .then_some(())
        })
        .await;
    }

    // The first choice goes down: clone and a signed push still work, elsewhere.
    let down = nodes
        .iter()
        .position(|m| m.key().public().to_string() == first)
        .unwrap_or_else(|| panic!("{first} is none of the nodes"));
    nodes[down].stop().await;
    let up = &nodes[1 - down];
    let clone = bob.home.path().join("demo");
    let cloned = bob.git_ok(
        bob.home.path(),
        &["clone", "hanzo://demo", clone.to_str().unwrap()],
    );
    assert!(cloned.contains("is unavailable"), "{cloned}");
    assert_eq!(used_node(&cloned), up.key().public().to_string());
    assert_eq!(bob.rev(&clone, "HEAD"), tip);
    bob.commit(&clone, "feature", "bob's");
    let out = bob.git_ok(&clone, &["push", "--signed", "origin", "main"]);
    assert_eq!(used_node(&out), up.key().public().to_string());
    let bobs = bob.rev(&clone, "HEAD");
    assert!(
        bob.ls_remote(&up.url("demo"))
            .iter()
            .any(|(id, n)| *id == bobs && n == "refs/heads/main")
    );
    // The helper remembers the failure: the next run tries the live node first.
    let again = bob.git_ok(&clone, &["fetch", "origin"]);
    assert!(!again.contains("is unavailable"), "{again}");
}
