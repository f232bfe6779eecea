//! The `hanzo-node` binary against a real anvil: init, register, identities, repos,
//! `run` with its HTTP endpoints, `acl show`, and the errors a user meets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use hanzo_e2e::{bench, *};
use hanzo_node::keys::SshKey;

const PASSWORD: (&str, &str) = ("HANZO_PASSWORD", "correct horse");

/// A plain HTTP/1.0 GET, returning (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

#[tokio::test]
async fn operator_workflow_through_the_binary() {
    let net = Devnet::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("node");
    let dir_s = dir.to_str().unwrap();
    let operator_key = format!("0x{}", alloy::hex::encode(net.dev_key(3).to_bytes()));
    let data = ("HANZO_DATA_DIR", dir_s);

    // init: keys and config, no prompts.
    let out = ok(&net.cli(
        &["init"],
        &[data, PASSWORD, ("HANZO_PRIVATE_KEY", &operator_key)],
    ));
    assert!(out.contains(&net.dev_address(3).to_string()), "{out}");
    for f in ["node.key", "operator.json", "config.toml"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let err = fails(&net.cli(&["init"], &[data, PASSWORD]));
    assert!(err.contains("refusing to overwrite"), "{err}");
    std::fs::copy(
        net.dir.path().join("deployment.json"),
        dir.join("deployment.json"),
    )
    .unwrap();

    // config --dump shows flags over env over file.
    let dump = ok(&net.cli(&["config", "--dump", "--chain.confirmations", "9"], &[data]));
    assert!(dump.contains("confirmations = 9"), "{dump}");
    assert!(dump.contains(&net.anvil.endpoint()), "{dump}");

    // Too little stake: both amounts named.
    let err = fails(&net.cli(
        &["operator", "register", "--stake", "0.5"],
        &[data, PASSWORD],
    ));
    assert!(
        err.contains("stake 0.5 ETH is below the minimum 1 ETH"),
        "{err}"
    );
    // Wrong keystore password.
    let err = fails(&net.cli(
        &["operator", "register", "--stake", "2"],
        &[data, ("HANZO_PASSWORD", "nope")],
    ));
    assert!(err.contains("wrong password"), "{err}");
    // The password from a file, as a systemd credential hands it over: read, and
    // refused with the fix when the file is missing.
    let pw = home.path().join("password");
    let pw_s = pw.to_str().unwrap();
    std::fs::write(&pw, "nope\n").unwrap();
    let err = fails(&net.cli(
        &[
            "operator",
            "register",
            "--stake",
            "2",
            "--password-file",
            pw_s,
        ],
        &[data],
    ));
    assert!(err.contains("wrong password"), "{err}");
    let err = fails(&net.cli(
        &["operator", "register", "--stake", "2"],
        &[data, ("HANZO_PASSWORD_FILE", "/nonexistent/password")],
    ));
    assert!(
        err.contains("cannot read the keystore password file /nonexistent/password"),
        "{err}"
    );
    std::fs::write(&pw, "correct horse\n").unwrap();
    ok(&net.cli(
        &[
            "operator",
            "register",
            "--stake",
            "2ETH",
            "--endpoint",
            "127.0.0.1:7000",
        ],
        &[data, ("HANZO_PASSWORD_FILE", pw_s)],
    ));
    ok(&net.cli(
        &["operator", "set-endpoint", "127.0.0.1:7001"],
        &[data, PASSWORD],
    ));
    let status = ok(&net.cli(&["operator", "status", "--json"], &[data, PASSWORD]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["active"], true);

    // An identity with an SSH key from a .pub file, and a repo.
    let key = SshKey([0x42; 32]);
    let pub_file = home.path().join("id_ed25519.pub");
    std::fs::write(&pub_file, format!("{} carol@laptop\n", key.to_line())).unwrap();
    let pub_s = pub_file.to_str().unwrap();
    ok(&net.cli(&["identity", "mint", "carol"], &[data, PASSWORD]));
    ok(&net.cli(&["identity", "add-key", "carol", pub_s], &[data, PASSWORD]));
    let shown = ok(&net.cli(&["identity", "show", "carol", "--json"], &[data]));
    assert!(shown.contains(&key.fingerprint()), "{shown}");
    ok(&net.cli(
        &["repo", "create", "demo", "--owner", "carol"],
        &[data, PASSWORD],
    ));
    ok(&net.cli(
        &["repo", "add-committer", "demo", "carol"],
        &[data, PASSWORD],
    ));
    let repo: serde_json::Value =
        serde_json::from_str(&ok(&net.cli(&["repo", "show", "demo", "--json"], &[data]))).unwrap();
    assert_eq!(repo["committers"], serde_json::json!(["carol"]));
    assert_eq!(repo["owner"], "carol");
    // The repo's settings on chain: a default branch and a ref rule, then none.
    ok(&net.cli(
        &["repo", "default-branch", "demo", "unstable"],
        &[data, PASSWORD],
    ));
    ok(&net.cli(
        &[
            "repo",
            "rule",
            "demo",
            "refs/tags/v*",
            "--signers",
            "carol",
            "--threshold",
            "1",
        ],
        &[data, PASSWORD],
    ));
    let repo: serde_json::Value =
        serde_json::from_str(&ok(&net.cli(&["repo", "show", "demo", "--json"], &[data]))).unwrap();
    assert_eq!(repo["default_branch"], "unstable");
    assert_eq!(
        repo["rules"],
        serde_json::json!([{"pattern": "refs/tags/v*", "signers": ["carol"], "threshold": 1}])
    );
    let err = fails(&net.cli(
        &[
            "repo",
            "rule",
            "demo",
            "refs/heads/main",
            "--signers",
            "carol",
            "--threshold",
            "2",
        ],
        &[data, PASSWORD],
    ));
    assert!(err.contains("InvalidThreshold"), "{err}");
    ok(&net.cli(
        &["repo", "rule", "demo", "refs/tags/v*", "--remove"],
        &[data, PASSWORD],
    ));
    ok(&net.cli(&["repo", "default-branch", "demo", ""], &[data, PASSWORD]));
    let shown = ok(&net.cli(&["repo", "show", "demo"], &[data]));
    assert!(
        !shown.contains("rule") && !shown.contains("default branch"),
        "{shown}"
    );

    // Bad input, each with its reason.
    let err = fails(&net.cli(
        &["repo", "add-committer", "demo", "nobody"],
        &[data, PASSWORD],
    ));
    assert!(err.contains("no identity with handle \"nobody\""), "{err}");
    let err = fails(&net.cli(&["repo", "show", "nope"], &[data]));
    assert!(err.contains("no repo named \"nope\""), "{err}");
    let bad_pub = home.path().join("bad.pub");
    std::fs::write(&bad_pub, "ssh-rsa AAAAB3NzaC1yc2E= x\n").unwrap();
    let err = fails(&net.cli(
        &["identity", "add-key", "carol", bad_pub.to_str().unwrap()],
        &[data, PASSWORD],
    ));
    assert!(err.contains("malformed SSH public key"), "{err}");
    let mut other_chain = net.deployment.clone();
    other_chain.chain_id = 1;
    let other = home.path().join("mainnet.json");
    other_chain.save(&other).unwrap();
    let err = fails(&net.cli(
        &[
            "identity",
            "show",
            "carol",
            "--chain.deployment",
            other.to_str().unwrap(),
        ],
        &[data],
    ));
    assert!(err.contains("chain id mismatch"), "{err}");
    let err = fails(&net.cli(
        &[
            "identity",
            "show",
            "carol",
            "--chain.rpc-url",
            "http://127.0.0.1:1",
        ],
        &[data],
    ));
    assert!(err.contains("cannot reach the chain RPC"), "{err}");

    // run: the node syncs; /readiness, /metrics and `acl show` reflect the chain.
    let http = format!("127.0.0.1:{}", bench::free_addr().port());
    let child = Command::new(node_bin())
        .args([
            "run",
            "--http.listen",
            &http,
            "--chain.poll-interval",
            "50ms",
            "--p2p.listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("HANZO_DATA_DIR", &dir)
        .env("HANZO_CHAIN_RPC_URL", net.anvil.endpoint())
        .envs(net.node_env())
        .env("HANZO_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _running = bench::Killed(child);
    net.mine(2).await;
    let head = net.head().await;
    let acl = eventually(Duration::from_secs(30), async || {
        let out = net.cli(&["acl", "show", "--json"], &[data]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["block"]["number"].as_u64()? + 2 >= head).then_some(v)
    })
    .await;
    assert_eq!(
        acl["operators"][0]["address"],
        net.dev_address(3).to_string()
    );
    assert_eq!(acl["operators"][0]["stake"], "2 ETH");
    assert_eq!(acl["operators"][0]["endpoint"], "127.0.0.1:7001");
    assert_eq!(acl["operators"][0]["active"], true);
    assert_eq!(acl["identities"][0]["handle"], "carol");
    assert_eq!(acl["repos"][0]["committers"], serde_json::json!(["carol"]));

    let (code, body) = eventually(Duration::from_secs(10), async || {
        http_get(&http, "/readiness").filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(&http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("hanzo_chain_synced_block"), "{metrics}");
    assert!(metrics.contains("hanzo_acl_age_seconds"), "{metrics}");
    assert_eq!(http_get(&http, "/liveness").unwrap().0, 200);
    let (code, body) = http_get(&http, "/acl").unwrap();
    assert_eq!(code, 200);
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        served["operators"], acl["operators"],
        "GET /acl and `acl show` disagree"
    );
    assert!(Path::new(&dir).join("db").exists());
}
