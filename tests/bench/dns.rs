//! DNS benchmark (run by `scripts/bench-dns`): publish and resolve latency on a
//! Mainline DHT on loopback, through the node's `dns` module (sign the endpoints,
//! publish; resolve and parse them) against pkarr's client alone (publish a packet
//! built beforehand; resolve) in the same run, on the same DHT and client settings.
//! Every round uses fresh keys, and resolves through a second client, so that each
//! answer comes from the DHT rather than a cache. The two sides alternate.
//!
//! Then the DNS server answering from its cache against `dnsmasq` answering the same
//! TXT records from its config, in the same run: one load generator (concurrent UDP
//! clients, each sending the next query when the answer comes) asks both for the
//! same name for the same time, after checking that both give the same answer.
//!
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::time::{Duration, Instant};

use hanzo_e2e::{
    arg,
    bench::{Killed, free_addr, median, percentile},
};
use hanzo_node::{
    config::DnsConfig,
    dns::{self, Endpoints, Resolver},
    keys::NodeKey,
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};
use pkarr::{Keypair, ResolvePolicy, SignedPacket, Timestamp};

fn endpoints() -> Endpoints {
    Endpoints {
        git: Some("http://127.0.0.1:8680".into()),
        grpc: Some("http://127.0.0.1:8690".into()),
        p2p: vec![
            "/ip4/127.0.0.1/tcp/8681".into(),
            "/ip4/127.0.0.1/udp/8681/quic-v1".into(),
        ],
        chain_id: 31337,
        operator: Some(alloy::primitives::Address::repeat_byte(7)),
    }
}

#[tokio::main]
async fn main() {
    let rounds = arg("--rounds", 30);
    let seconds = arg("--dns-seconds", 5);
    let clients = arg("--dns-clients", 32);
    let timeout = Duration::from_millis(arg("--timeout-ms", 100));
    let dht = tokio::task::spawn_blocking(|| mainline::Testnet::builder(10).build())
        .await
        .unwrap()
        .unwrap();
    let config = DnsConfig {
        bootstrap: dht.bootstrap.clone(),
        bind: Some(std::net::Ipv4Addr::LOCALHOST),
        request_timeout: timeout,
        ..DnsConfig::default()
    };
    let publisher = dns::client(&config).unwrap();
    let reader = dns::client(&config).unwrap();
    let resolver = Resolver::new(reader.clone());

    let (mut ours_pub, mut ours_res, mut base_pub, mut base_res) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                // The node's path: sign the endpoints, publish; resolve, parse.
                let key = NodeKey::generate();
                let t = Instant::now();
                let (packet, _) =
                    dns::packet(&dns::keypair(&key), &endpoints(), Timestamp::now()).unwrap();
                publisher.publish(&packet).await.unwrap();
                ours_pub.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                let (got, _) = resolver.endpoints(&key.public()).await.unwrap();
                ours_res.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(got, endpoints());
            } else {
                // pkarr alone, with a packet of the same records built beforehand.
                let key = Keypair::random();
                let (packet, _) = dns::packet(&key, &endpoints(), Timestamp::now()).unwrap();
                let packet = SignedPacket::deserialize(&packet.serialize()).unwrap();
                let t = Instant::now();
                publisher.publish(&packet).await.unwrap();
                base_pub.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                reader
                    .resolve(&key.public_key(), ResolvePolicy::NetworkOnly)
                    .await
                    .unwrap();
                base_res.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    let (op, or, bp, br) = (
        median(ours_pub),
        median(ours_res),
        median(base_pub),
        median(base_res),
    );
    println!(
        "{rounds} rounds, 10-node DHT on loopback, request timeout {} ms (medians)",
        timeout.as_millis()
    );
    println!(
        "publish: node {op:.1} ms, pkarr alone {bp:.1} ms; ratio {:.2}",
        op / bp
    );
    println!(
        "resolve: node {or:.1} ms, pkarr alone {br:.1} ms; ratio {:.2}",
        or / br
    );
    println!("publish_ms={op:.1}");
    println!("publish_baseline_ms={bp:.1}");
    println!("publish_ratio={:.2}", op / bp);
    println!("resolve_ms={or:.1}");
    println!("resolve_baseline_ms={br:.1}");
    println!("resolve_ratio={:.2}", or / br);

    // The DNS server from its cache, and dnsmasq with the same records.
    let key = Keypair::random();
    let (packet, _) = dns::packet(&key, &endpoints(), Timestamp::now()).unwrap();
    publisher.publish(&packet).await.unwrap();
    let ours = dns_server(&config, &key).await;
    let theirs = dnsmasq(&packet);
    let name = format!("_git.{}.", key.public_key().to_z32());
    let (a, b) = (ask(ours.0, &name).await, ask(theirs.1, &name).await);
    assert_eq!(a, vec![format!("url={}", endpoints().git.unwrap())]);
    assert_eq!(a, b, "the node and dnsmasq answer differently");
    let span = Duration::from_secs(seconds);
    let clients = usize::try_from(clients).unwrap();
    let (nq, mut nl) = load(ours.0, &name, clients, span).await;
    let (dq, mut dl) = load(theirs.1, &name, clients, span).await;
    let (n99, d99) = (percentile(&mut nl, 0.99), percentile(&mut dl, 0.99));
    println!(
        "DNS over UDP, {clients} clients for {seconds} s each: node {nq:.0} q/s (p99 {n99:.2} ms), dnsmasq {dq:.0} q/s (p99 {d99:.2} ms); ratio {:.2}",
        nq / dq
    );
    println!("dns_qps={nq:.0}");
    println!("dns_p99_ms={n99:.2}");
    println!("dns_baseline_qps={dq:.0}");
    println!("dns_baseline_p99_ms={d99:.2}");
    println!("dns_qps_ratio={:.2}", nq / dq);
}

/// The node's DNS server on `config`'s DHT, as a node runs it (only active
/// operators' keys: `key` is one), with no rate limit worth the name; its address
/// (and what keeps it running).
async fn dns_server(
    config: &DnsConfig,
    key: &Keypair,
) -> (
    std::net::SocketAddr,
    (tempfile::TempDir, tokio_util::sync::CancellationToken),
) {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(hanzo_node::store::Store::open(dir.path()).unwrap());
    let mut snapshot = hanzo_node::acl::Snapshot::default();
    let operator = alloy::primitives::Address::repeat_byte(7);
    let node = hanzo_node::keys::NodeId(key.public_key().to_bytes());
    snapshot.state.operators.insert(
        operator,
        hanzo_node::acl::Operator {
            node_key: node,
            endpoint: String::new(),
            balance: hanzo_node::acl::Balance::default(),
        },
    );
    snapshot.state.node_keys.insert(node, operator);
    let (acl, _) = hanzo_node::acl::Acl::new(snapshot);
    let registry = hanzo_node::metrics::Registry::default();
    let keeper =
        dns::keep::Keeper::open(NodeKey::generate().public(), acl.clone(), store, &registry);
    let server_config = hanzo_node::config::DnsServerConfig {
        enabled: true,
        rate_limit: u32::MAX,
        ..Default::default()
    };
    let server = dns::server::Server::new(
        &server_config,
        (dns::client(config).unwrap(), keeper),
        acl,
        &registry,
    )
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (addr, _task) = server
        .bind("127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .unwrap();
    (addr, (dir, cancel))
}

/// dnsmasq answering the TXT records of `packet` (and nothing else: no upstream, no
/// hosts file); the process (with its config's directory) and its address.
fn dnsmasq(packet: &SignedPacket) -> ((Killed, tempfile::TempDir), std::net::SocketAddr) {
    let addr = free_addr();
    let zone = packet.public_key().to_z32();
    let mut conf = String::new();
    for rr in packet.all_resource_records() {
        if let pkarr::dns::rdata::RData::TXT(t) = &rr.rdata {
            let text: Vec<String> = t
                .iter_raw()
                .map(|(k, v)| {
                    let k = String::from_utf8_lossy(k);
                    match v {
                        Some(v) => format!("\"{k}={}\"", String::from_utf8_lossy(v)),
                        None => format!("\"{k}\""),
                    }
                })
                .collect();
            let name = rr.name.to_string();
            let label = name.trim_end_matches('.').trim_end_matches(zone.as_str());
            conf.push_str(&format!("txt-record={label}{zone},{}\n", text.join(",")));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dnsmasq.conf");
    std::fs::write(&file, conf).unwrap();
    let child = std::process::Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--pid-file",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--cache-size=0",
            &format!("--port={}", addr.port()),
            &format!("--conf-file={}", file.display()),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq runs: install dnsmasq-base (scripts/setup does)");
    std::thread::sleep(Duration::from_millis(300));
    ((Killed(child), dir), addr)
}

/// A TXT query for `name`, id `id`.
fn txt_query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).unwrap(),
        RecordType::TXT,
    ));
    m.to_vec().unwrap()
}

/// The TXT strings `server` answers for `name`.
async fn ask(server: std::net::SocketAddr, name: &str) -> Vec<String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket.send(&txt_query(name, 1)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let mut texts: Vec<String> = Message::from_vec(&buf[..n])
        .unwrap()
        .answers
        .iter()
        .filter_map(|rr| match &rr.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    texts.sort();
    texts
}

/// `clients` UDP clients asking `server` for `name` for `span`, each sending its
/// next query when the answer comes (a lost one counts after 1 s): queries answered
/// per second, and every latency in ms.
async fn load(
    server: std::net::SocketAddr,
    name: &str,
    clients: usize,
    span: Duration,
) -> (f64, Vec<f64>) {
    let end = Instant::now() + span;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let name = name.to_owned();
            tokio::spawn(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                socket.connect(server).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let mut latencies = Vec::new();
                let mut id = u16::try_from(c).unwrap();
                while Instant::now() < end {
                    id = id.wrapping_add(1);
                    let t = Instant::now();
                    socket.send(&txt_query(&name, id)).await.unwrap();
                    // Answers to an earlier, timed-out query are skipped by id.
                    let answered = tokio::time::timeout(Duration::from_secs(1), async {
                        loop {
                            let n = socket.recv(&mut buf).await.unwrap();
                            if n >= 2 && buf[..2] == id.to_be_bytes() {
                                return;
                            }
                        }
                    })
                    .await;
                    if answered.is_ok() {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    #[allow(clippy::cast_precision_loss)]
    let qps = all.len() as f64 / span.as_secs_f64();
    (qps, all)
}
