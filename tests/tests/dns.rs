//! pkarr DNS on a Mainline DHT of the devnet's own on loopback: nodes publish their
//! endpoints, a separate client resolves them (and follows a restart on a new port),
//! packets not signed by a node's key are never taken for it, and `hanzo://` clones
//! and signed pushes go through the chain and the DHT, failing over when a node is
//! down; the DNS server answers `dig` and DNS-over-HTTPS for operators' keys, and
//! refuses, drops or rate-limits the rest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures_util::StreamExt as _;
use hanzo_e2e::{cluster::Member, git::GitUser, *};
use hanzo_node::{
    acl::Member as Role,
    dns::{self, Endpoints, Resolver},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
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

/// `dig`'s output for `args` against the DNS server at `addr`.
fn dig(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("dig runs: install bind9-dnsutils (scripts/setup does)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A DNS query for `name` of type `kind`, on the wire.
fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m.to_vec().unwrap()
}

/// The TXT strings of `answer`'s records.
fn texts(answer: &[u8]) -> Vec<String> {
    let m = Message::from_vec(answer).unwrap();
    assert_eq!(m.metadata.id, 77);
    m.answers
        .iter()
        .filter_map(|rr| match &rr.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect()
}

/// `curl`'s body for `args`.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dig_and_doh_answer_for_operators_keys_and_bad_input_is_answered_or_dropped() {
    let net = Devnet::start().await;
    let nodes = net.cluster(2, 5).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    published(a).await;
    published(b).await;
    let server = a.node().dns_addr.expect("dns.server on in tests");
    let http = a.node().http_addr;
    let z32 = |m: &Member| dns::public_key(&m.key().public()).unwrap().to_z32();

    // Its own _git record, and its peer's (from the DHT), over UDP and TCP.
    for (m, tcp) in [(a, false), (b, false), (b, true)] {
        let name = format!("_git.{}", z32(m));
        let mut args = vec![name.as_str(), "TXT", "+short"];
        if tcp {
            args.push("+tcp");
        }
        let out = dig(server, &args);
        let url = format!("\"url=http://{}\"", m.node().http_addr);
        assert_eq!(out.trim(), url, "dig {args:?}");
    }
    let full = dig(server, &[&format!("_git.{}", z32(a)), "TXT"]);
    assert!(
        full.contains("status: NOERROR") && full.contains(" aa"),
        "{full}"
    );
    let ttl: u32 = full
        .lines()
        .find(|l| l.starts_with("_git.") && l.contains("TXT"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{full}"));
    assert!(ttl <= dns::TTL, "TTL {ttl} over the packet's {}", dns::TTL);

    // Not an operator's key, another zone, a name the packet lacks.
    let stranger = dns::public_key(&hanzo_node::keys::NodeKey::generate().public())
        .unwrap()
        .to_z32();
    let out = dig(server, &[&format!("_git.{stranger}"), "TXT"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(server, &["example.com", "A"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(server, &[&format!("_nothing.{}", z32(a)), "TXT"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");

    // DNS-over-HTTPS, GET and POST, as curl sends them.
    let q = query(&format!("_git.{}.", z32(b)), RecordType::TXT);
    let url = format!("http://{http}/dns-query?dns={}", URL_SAFE_NO_PAD.encode(&q));
    let want = vec![format!("url=http://{}", b.node().http_addr)];
    assert_eq!(
        texts(&curl(&["-H", "accept: application/dns-message", &url])),
        want
    );
    let body = a.dir.path().join("query.bin");
    std::fs::write(&body, &q).unwrap();
    let posted = curl(&[
        "-H",
        "content-type: application/dns-message",
        "--data-binary",
        &format!("@{}", body.display()),
        &format!("http://{http}/dns-query"),
    ]);
    assert_eq!(texts(&posted), want);
    let refused = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://{http}/dns-query?dns=!!"),
    ]);
    assert_eq!(refused, b"400");

    // The pkarr relay: b's packet as pkarr clients fetch it; a forged one and an
    // older one refused, a newer one signed by b's key taken.
    let relay = format!("http://{http}/pkarr/{}", z32(b));
    let payload = curl(&[&relay]);
    let b_key = dns::public_key(&b.key().public()).unwrap();
    let got = pkarr::SignedPacket::from_relay_payload(&b_key, &payload.clone().into()).unwrap();
    assert_eq!(
        dns::endpoints_of(&got).unwrap().git,
        Some(format!("http://{}", b.node().http_addr))
    );
    let put = |body: &[u8]| -> String {
        let file = a.dir.path().join("payload.bin");
        std::fs::write(&file, body).unwrap();
        let out = curl(&[
            "-X",
            "PUT",
            "-w",
            "\n%{http_code}",
            "--data-binary",
            &format!("@{}", file.display()),
            &relay,
        ]);
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut forged = payload.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let out = put(&forged);
    assert!(
        out.ends_with("400") && out.contains("no packet signed by"),
        "{out}"
    );
    let keypair = dns::keypair(&b.key());
    let endpoints = dns::endpoints_of(&got).unwrap();
    let older = pkarr::Timestamp::from(got.timestamp().as_u64() - 1_000_000);
    let (old, _) = dns::packet(&keypair, &endpoints, older).unwrap();
    let out = put(&old.to_relay_payload());
    assert!(
        out.ends_with("409") && out.contains("a newer packet"),
        "{out}"
    );
    let newer = pkarr::Timestamp::from(got.timestamp().as_u64() + 1);
    let (new, _) = dns::packet(&keypair, &endpoints, newer).unwrap();
    assert!(put(&new.to_relay_payload()).ends_with("204"));
    let fetched = curl(&[&relay]);
    let fetched = pkarr::SignedPacket::from_relay_payload(&b_key, &fetched.into()).unwrap();
    assert_eq!(fetched.timestamp(), newer);
    let out = String::from_utf8_lossy(&curl(&[
        "-w",
        "\n%{http_code}",
        &format!("http://{http}/pkarr/{stranger}"),
    ]))
    .into_owned();
    assert!(
        out.ends_with("403") && out.contains("not an active operator"),
        "{out}"
    );

    // Garbage, an oversized datagram, a response: no answer or FORMERR, no crash.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut oversized = q.clone();
    oversized.resize(6000, 0xff);
    for junk in [&b"\x00\x01"[..], &[0xffu8; 40][..], &oversized[..]] {
        socket.send_to(junk, server).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        }
    }
    // A flood from one address: most dropped (200 a second), the rest answered.
    let flood = 1000;
    for _ in 0..flood {
        socket.send_to(&q, server).unwrap();
    }
    let mut answered = 0;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while socket.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    assert!(
        answered > 0 && answered < flood,
        "{answered} of {flood} answered"
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hanzo_dns_dropped_total{reason=\"rate_limited\"}")),
        "{metrics}"
    );
    // The server keeps serving once the flood stops.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = dig(server, &[&format!("_git.{}", z32(a)), "TXT", "+short"]);
    assert!(out.contains("url=http://"), "{out}");
}

/// A fresh DHT client's view of `key`'s packet (no cache of an earlier lookup).
async fn on_dht(net: &Devnet, key: &pkarr::PublicKey) -> Option<pkarr::SignedPacket> {
    net.dht_client()
        .resolve(key, pkarr::ResolvePolicy::NetworkOnly)
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_nodes_records_outlive_the_dht_through_its_peers_until_it_leaves() {
    // Each DHT node holds 16 records; the flood below puts 48 others.
    let mut net = Devnet::start_with_small_dht(16).await;
    net.keep_interval = Some(Duration::from_secs(1));
    let mut nodes = net.cluster(3, 5).await;
    for m in &nodes {
        published(m).await;
    }
    let c_key = dns::public_key(&nodes[2].key().public()).unwrap();
    let c_z32 = c_key.to_z32();
    let c_http = nodes[2].node().http_addr;
    let last = on_dht(&net, &c_key).await.expect("c's packet on the DHT");
    // A record nobody keeps: the control.
    let control = pkarr::Keypair::random();
    let (control_packet, _) =
        dns::packet(&control, &Endpoints::default(), pkarr::Timestamp::now()).unwrap();
    net.dht_client().publish(&control_packet).await.unwrap();
    assert!(on_dht(&net, &control.public_key()).await.is_some());

    // a and b keep c's packet and count the DHT nodes holding it.
    let coverage = format!("node=\"{c_z32}\"");
    for m in &nodes[..2] {
        eventually(SETTLE, async || {
            (m.metric("hanzo_dns_kept_coverage", &coverage).await >= 1.0).then_some(())
        })
        .await;
    }

    // c stops; then the DHT's nodes fill up with 48 other records.
    nodes[2].stop().await;
    let mut flooder = mainline::Dht::builder();
    flooder
        .bootstrap(&net.dht.bootstrap)
        .bind_address(std::net::Ipv4Addr::LOCALHOST)
        .request_timeout(Duration::from_millis(100));
    let flooder = flooder.build().unwrap().as_async();
    assert!(flooder.bootstrapped().await, "the flooder joins the DHT");
    let puts = (0..48u8).map(|i| {
        let item = mainline::MutableItem::new(
            mainline::SigningKey::from_bytes(&[i.wrapping_add(1); 32]),
            b"filler",
            1,
            None,
        );
        flooder.put_mutable(item, None)
    });
    let stored: Vec<_> = futures_util::stream::iter(puts)
        .buffer_unordered(4)
        .collect()
        .await;
    for put in stored {
        put.expect("a filler record is stored");
    }

    // The record nobody put again is gone from every DHT node; c's, put again by
    // its peers, still resolves from a client that never saw it, unchanged.
    assert!(
        on_dht(&net, &control.public_key()).await.is_none(),
        "the control record outlived the flood: the DHT did not drop unkept records"
    );
    let kept = eventually(SETTLE, async || on_dht(&net, &c_key).await).await;
    assert!(kept.is_same_as(&last));
    assert_eq!(
        dns::endpoints_of(&kept).unwrap().git,
        Some(format!("http://{c_http}"))
    );
    // Both peers answer dig for it.
    for m in &nodes[..2] {
        let server = m.node().dns_addr.unwrap();
        let out = dig(server, &[&format!("_git.{c_z32}"), "TXT", "+short"]);
        assert_eq!(out.trim(), format!("\"url=http://{c_http}\""));
    }

    // A client that cannot reach the DHT resolves c through a peer's pkarr relay.
    let relay = format!("http://{}", nodes[0].node().http_addr);
    let no_dht = [("HANZO_DNS_BOOTSTRAP", "127.0.0.1:9")];
    let c_hex = nodes[2].key().public().to_string();
    let json = ok(&net.cli(
        &["resolve", &c_hex, "--json"],
        &[no_dht[0], ("HANZO_DNS_RELAYS", relay.as_str())],
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["git"], format!("http://{c_http}"));
    let err = fails(&net.cli(&["resolve", &c_hex], &no_dht));
    assert!(err.contains("dns.relays"), "{err}");

    // c comes back on another port: its new packet replaces the copies everywhere.
    nodes[2].restart(&net).await;
    let moved = nodes[2].node().http_addr;
    assert_ne!(moved, c_http);
    let url = format!("\"url=http://{moved}\"");
    for m in &nodes[..2] {
        let server = m.node().dns_addr.unwrap();
        let relay = format!("http://{}/pkarr/{c_z32}", m.node().http_addr);
        eventually(SETTLE, async || {
            let out = dig(server, &[&format!("_git.{c_z32}"), "TXT", "+short"]);
            let payload = curl(&[&relay]);
            let fetched = pkarr::SignedPacket::from_relay_payload(&c_key, &payload.into()).ok()?;
            (out.trim() == url && fetched.timestamp() > last.timestamp()).then_some(())
        })
        .await;
    }

    // c's operator unstakes below the minimum: a and b stop keeping its packet and
    // refuse its name.
    nodes[2].stop().await;
    net.client(7)
        .await
        .request_unstake(hanzo_node::acl::StakeRole::Operator, milli(1500))
        .await
        .unwrap();
    let block = net.confirm().await;
    for m in &nodes[..2] {
        m.node().synced_to(block).await;
        eventually(SETTLE, async || {
            let left = m.metric("hanzo_dns_kept_coverage", &coverage).await == 0.0
                && m.metric("hanzo_dns_kept_packets", "").await == 1.0;
            left.then_some(())
        })
        .await;
        let out = dig(
            m.node().dns_addr.unwrap(),
            &[&format!("_git.{c_z32}"), "TXT"],
        );
        assert!(out.contains("status: REFUSED"), "{out}");
    }
}
