//! What an operator's monitoring sees: the EigenLayer node API answering as the spec
//! says, a real Prometheus scraping a real node with the shipped alert rules loaded
//! and every metric the shipped Grafana dashboard uses present, and `promtool`'s
//! unit tests of the alert rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use hanzo_e2e::{bench, rpc, *};
use hanzo_node::rpc::proto::{GetStatusRequest, node_service_client::NodeServiceClient};
use serde_json::Value;

/// (status, body) of `GET path` on the node's HTTP listener.
async fn get(node: &hanzo_node::node::Node, path: &str) -> (u16, String) {
    let resp = http_get(node.http_addr, path).await;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eigenlayer_node_api_reports_the_parts_as_the_spec_says() {
    let net = Devnet::start().await;
    let node = net.node().await;
    // Dev account `account` registers node key `key` with 2 ETH; the node sees it.
    let register = async |account: usize, key: hanzo_node::keys::NodeId| {
        let endpoint = format!("127.0.0.1:{}", 9000 + account);
        let r = net
            .client(account)
            .await
            .register_operator(key.to_b256(), &endpoint, ether(2))
            .await
            .unwrap();
        net.mine(2).await;
        node.synced_to(r.block_number.unwrap()).await;
    };
    register(1, net.node_key().public()).await;

    let (code, body) = get(&node, "/eigen/node/spec-version").await;
    assert_eq!(
        (code, json(&body)),
        (200, serde_json::json!({"api_version": "v0.0.1"}))
    );
    let (code, body) = get(&node, "/eigen/node/version").await;
    assert_eq!(code, 200);
    let version = format!("hanzo-node/v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(json(&body)["version"], version.as_str());

    // Healthy once every part is up (DNS: once its first packet is on the DHT).
    eventually(Duration::from_secs(30), async || {
        (get(&node, "/eigen/node/health").await.0 == 200).then_some(())
    })
    .await;
    let (code, body) = get(&node, "/eigen/node/services").await;
    assert_eq!(code, 200);
    let services = json(&body)["services"].as_array().unwrap().clone();
    let ids: Vec<&str> = services.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["chain-sync", "git", "p2p", "rpc", "dns", "deploy"],
        "{body}"
    );
    for s in &services {
        assert_eq!(s["status"], "Up", "{s}");
        assert!(!s["name"].as_str().unwrap().is_empty() && s["description"].is_string());
    }
    assert_eq!(
        get(&node, "/eigen/node/services/chain-sync/health").await.0,
        200
    );
    let (code, body) = get(&node, "/eigen/node/services/indexer/health").await;
    assert_eq!(code, 404, "{body}");
    // A version the node does not serve: the spec's 404 and message.
    let (code, body) = get(&node, "/eigen/node/health?version=v2.0.0").await;
    assert_eq!(
        (code, json(&body)),
        (404, serde_json::json!({"message": "API version not found"}))
    );
    assert_eq!(get(&node, "/eigen/node/health?version=0.0.1").await.0, 200);

    let (_, metrics) = get(&node, "/metrics").await;
    for line in [
        "eigen_registered_stakes{quorum_number=\"0\",quorum_name=\"operators\"} 2.0\n",
        "eigen_performance_score 100.0\n",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("eigen_rpc_request_total{method=\"eth_getLogs\",client_version=\"anvil/"),
        "{metrics}"
    );

    // Another operator the node cannot reach: p2p is down, the node partially healthy.
    register(2, hanzo_node::keys::NodeKey::generate().public()).await;
    assert_eq!(get(&node, "/eigen/node/services/p2p/health").await.0, 503);
    assert_eq!(get(&node, "/eigen/node/health").await.0, 206);
    let (_, body) = get(&node, "/eigen/node/services").await;
    assert!(
        body.contains("0 of 1 other operators' nodes connected"),
        "{body}"
    );
    let (_, metrics) = get(&node, "/metrics").await;
    assert!(
        metrics.contains("hanzo_p2p_operators_other 1.0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("eigen_performance_score 100.0\n"),
        "{metrics}"
    );
    node.shutdown().await;
}

fn curl_json(url: &str) -> Option<Value> {
    let out = Command::new("curl").args(["-sf", url]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Every metric name in the dashboard's queries (`hanzo_*`, `eigen_*`), with the
/// suffixes Prometheus adds to counters and histograms taken off.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = repo_root().join("ops/grafana/hanzo-node.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("hanzo_") || word.starts_with("eigen_") {
                    let base = ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    names.insert(base.to_owned());
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_node_with_the_shipped_rules_and_dashboard() {
    let (prometheus, promtool) = ("/usr/bin/prometheus", "/usr/bin/promtool");
    for bin in [prometheus, promtool] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: scripts/setup installs Debian's prometheus package"
        );
    }
    let rules = repo_root().join("ops/prometheus");
    // The alert rules are valid and their unit tests fire and clear every alert.
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(&rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let net = Devnet::start().await;
    let mut config = net.config();
    // A model, so the inference metrics exist (the upstream is never called).
    config.inference.models = vec![hanzo_node::config::ModelConfig {
        url: Some("http://127.0.0.1:9/v1".into()),
        connect_retries: 0,
        ..hanzo_node::config::ModelConfig::new("chat", hanzo_node::config::ModelBackend::Openai)
    }];
    let (node, ch) = rpc::served(&net, config).await;
    // One call without signing in: the gRPC metrics have a call and a refusal.
    let status = NodeServiceClient::new(ch)
        .get_status(GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n  - job_name: hanzo-node\n    static_configs:\n      - targets: ['{addr}']\n",
            rules = rules.join("alerts.yml").display(),
            addr = node.http_addr,
        ),
    )
    .unwrap();
    let port = bench::free_addr().port();
    let _server = bench::Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");

    // The scrape succeeds.
    eventually(Duration::from_secs(60), async || {
        let v = curl_json(&format!("{api}/query?query=up%7Bjob%3D%22hanzo-node%22%7D"))?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    })
    .await;
    // The rules are loaded and evaluate without errors.
    let rule_groups = eventually(Duration::from_secs(30), async || {
        let v = curl_json(&format!("{api}/rules"))?;
        let groups = v["data"]["groups"].as_array()?.clone();
        let evaluated = groups.iter().all(|g| {
            g["rules"].as_array().is_some_and(|r| {
                r.iter()
                    .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
            })
        });
        (!groups.is_empty() && evaluated).then_some(groups)
    })
    .await;
    let loaded: Vec<&Value> = rule_groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 11);
    for r in &loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // Every metric the dashboard shows is one Prometheus has from the node.
    let scraped = eventually(Duration::from_secs(30), async || {
        let v = curl_json(&format!(
            "{api}/targets/metadata?match_target=%7Bjob%3D%22hanzo-node%22%7D"
        ))?;
        let names: BTreeSet<String> = v["data"]
            .as_array()?
            .iter()
            .filter_map(|m| m["metric"].as_str().map(str::to_owned))
            .collect();
        (!names.is_empty()).then_some(names)
    })
    .await;
    let wanted = dashboard_metrics();
    assert!(wanted.len() > 20, "{wanted:?}");
    let missing: Vec<&String> = wanted.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the node does not export: {missing:?}"
    );
    node.shutdown().await;
}

/// The shipped systemd unit passes `systemd-analyze verify` without a warning (a typo
/// in a directive only warns), with the binary this build made, and its hardening
/// keeps systemd's exposure score at 4.5 or below ("OK").
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("ops/systemd/hanzo-node.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/hanzo-node "),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hanzo-node.service");
    let bin = node_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/hanzo-node", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=45"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("Overall exposure level for hanzo-node.service"),
        "{said}"
    );
}
