//! The node as a backend for web pages and other languages, against a real node:
//! CORS preflights from allowed and foreign origins on gRPC-Web and the HTTP API, a
//! refusal a gRPC-Web client reads, reflection v1alpha; then the TypeScript client's
//! tests (Node's test runner) and the dashboard in headless Chromium, both signing in
//! with viem as wallets do. Needs `scripts/setup` (npm packages, the built client and
//! dashboard, Debian's chromium); without them the tests fail and say so.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::{Command, Output};

use hanzo_e2e::{
    rpc::{bearer, list_services, served, session},
    *,
};
use hanzo_node::{
    config::{ModelBackend, ModelConfig},
    inference::local::write_random,
    node::Node,
    rpc::proto::{DeployRequest, DeploySpec, ServiceSpec, node_service_client::NodeServiceClient},
};

/// The headers of `curl -i` output, lowercased names, and the status code.
fn curl(args: &[&str]) -> (u16, Vec<(String, String)>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs (scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let headers = lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn preflight(url: &str, origin: &str) -> (u16, Vec<(String, String)>) {
    curl(&[
        "-X",
        "OPTIONS",
        "-H",
        &format!("Origin: {origin}"),
        "-H",
        "Access-Control-Request-Method: POST",
        "-H",
        "Access-Control-Request-Headers: authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
        url,
    ])
}

/// A node allowing `https://app.example`, serving a small local embedding model
/// (random weights) kept in `models`.
async fn node(net: &Devnet, models: &std::path::Path) -> (Node, tonic::transport::Channel) {
    let words = [
        "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "bird", "flew",
    ];
    write_random(&models.join("mini"), &words, 32, 2, 4, 64, 11).unwrap();
    let mut config = net.config();
    config.rpc.origins = vec!["https://app.example".into()];
    config.inference.models = vec![ModelConfig {
        path: Some(models.join("mini")),
        ..ModelConfig::new("mini", ModelBackend::Local)
    }];
    served(net, config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browsers_get_cors_answers_and_read_refusals() {
    let net = Devnet::start().await;
    let models = tempfile::tempdir().unwrap();
    let (node, _ch) = node(&net, models.path()).await;
    let grpc = format!(
        "http://{}/hanzo.node.v1.NodeService/GetStatus",
        node.rpc_addr.unwrap()
    );
    let api = format!("http://{}/v1/models", node.http_addr);

    // An allowed origin's preflight is answered, before authentication, on both
    // listeners.
    for url in [&grpc, &api] {
        let (status, h) = preflight(url, "https://app.example");
        assert_eq!(status, 200, "{url}: {h:?}");
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some("https://app.example"),
            "{url}"
        );
        let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
        for name in [
            "authorization",
            "content-type",
            "x-grpc-web",
            "grpc-timeout",
            "connect-protocol-version",
        ] {
            assert!(allowed.contains(name), "{url}: {name} not in {allowed}");
        }
        assert!(
            header(&h, "access-control-allow-methods").is_some_and(|m| m.contains("POST")),
            "{url}: {h:?}"
        );
    }
    // A foreign origin gets no CORS grant, so its page cannot read anything.
    let (_, h) = preflight(&grpc, "https://phish.example");
    assert_eq!(header(&h, "access-control-allow-origin"), None, "{h:?}");

    // A gRPC-Web call without a token: a trailers-only refusal, in gRPC-Web form, with
    // the status headers exposed to the page.
    let (status, h) = curl(&[
        "-X",
        "POST",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Content-Type: application/grpc-web+proto",
        "-H",
        "X-Grpc-Web: 1",
        "--data-binary",
        "@-",
        &grpc,
    ]);
    assert_eq!(status, 200, "{h:?}");
    assert_eq!(
        header(&h, "content-type"),
        Some("application/grpc-web+proto"),
        "{h:?}"
    );
    assert_eq!(header(&h, "grpc-status"), Some("16"), "{h:?}");
    assert!(
        header(&h, "grpc-message").is_some_and(|m| m.contains("needs%20a%20signed-in%20caller")),
        "{h:?}"
    );
    let exposed = header(&h, "access-control-expose-headers").unwrap_or_default();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    // Reflection v1alpha beside v1, as older clients (grpcurl, Python's
    // grpcio-reflection) ask for it.
    for protocol in ["grpc-v1", "grpc-v1alpha"] {
        let listed = list_services(node.rpc_addr.unwrap(), protocol);
        assert!(
            listed.lines().any(|l| l == "hanzo.node.v1.NodeService"),
            "{protocol}: {listed}"
        );
    }
}

/// `node <args>` in `dir` with `env`, its output echoed.
fn node_js(dir: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let dir = repo_root().join(dir);
    let out = Command::new("node")
        .args(args)
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs (the machine's Node.js)");
    eprintln!(
        "node {} in {}:\n{}\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_typescript_client_and_the_dashboard_work_against_a_real_node() {
    for built in ["client-ts/dist/index.js", "dashboard/dist/app.js"] {
        assert!(
            repo_root().join(built).exists(),
            "{built} is missing: run scripts/setup, which builds the TypeScript client and the dashboard"
        );
    }
    let net = Devnet::start().await;
    // Account 3 holds caller stake; account 4 holds none.
    net.stake_caller(3).await;
    let (alice, _) = net.alice_with_demo().await;
    let models = tempfile::tempdir().unwrap();
    let (node, ch) = node(&net, models.path()).await;

    // A signed push, for the dashboard's repos and who signed them.
    let work = alice.init("demo");
    alice.commit(&work, "README", "hello");
    alice.git_ok(
        &work,
        &[
            "push",
            "--signed",
            &format!("http://{}/demo.git", node.http_addr),
            "main",
        ],
    );
    // A deployment of the caller's, whose logs the dashboard follows.
    let token = session(&ch, &net.dev_key(3)).await;
    NodeServiceClient::new(ch)
        .deploy(bearer(
            DeployRequest {
                spec: Some(DeploySpec {
                    name: "dash".into(),
                    services: vec![ServiceSpec {
                        name: "echo".into(),
                        command: "sh".into(),
                        args: vec![
                            "-c".into(),
                            "echo hello from the dashboard; sleep 600".into(),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("deploy");

    let key = |i| net.dev_key(i).to_bytes().to_string();
    let env = [
        (
            "HANZO_GRPC_URL",
            format!("http://{}", node.rpc_addr.unwrap()),
        ),
        ("HANZO_HTTP_URL", format!("http://{}", node.http_addr)),
        ("HANZO_CALLER_KEY", key(3)),
        ("HANZO_STRANGER_KEY", key(4)),
        ("HANZO_CONTAINER", "echo-1".into()),
        (
            "HANZO_ARTIFACTS",
            repo_root()
                .join("target/web-artifacts")
                .display()
                .to_string(),
        ),
    ];
    let client = node_js(
        "client-ts",
        &["--test", "--test-reporter=spec", "test/"],
        &env,
    );
    assert!(
        client.status.success(),
        "the TypeScript client's tests failed (output above)"
    );
    let browser = node_js("dashboard", &["test/browser.mjs"], &env);
    assert!(
        browser.status.success(),
        "the dashboard's browser test failed (output above)"
    );
}
