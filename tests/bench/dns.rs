//! DNS benchmark (run by `scripts/bench-dns`): publish and resolve latency on a
//! Mainline DHT on loopback, through the node's `dns` module (sign the endpoints,
//! publish; resolve and parse them) against pkarr's client alone (publish a packet
//! built beforehand; resolve) in the same run, on the same DHT and client settings.
//! Every round uses fresh keys, and resolves through a second client, so that each
//! answer comes from the DHT rather than a cache. The two sides alternate.
//!
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::time::{Duration, Instant};

use hanzo_e2e::{arg, bench::median};
use hanzo_node::{
    config::DnsConfig,
    dns::{self, Endpoints, Resolver},
    keys::NodeKey,
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
}
