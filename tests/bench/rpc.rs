//! gRPC benchmark (run by `scripts/bench-rpc`): concurrent clients on loopback
//! against a node started in this process.
//!
//! * `GetHealth` (no sign-in) on the node's listener: throughput, p50, p99.
//! * `GetStatus` with a session token on the node's listener (auth layer: token,
//!   role and stake from the live ACL, rate limit), against the same handler served
//!   on a second listener without the auth layer, with the caller attached as the
//!   layer would, in the same run.
//! * One client, one call at a time: `GetHealth`, `GetStatus` and `ListOperators`
//!   (six operators on chain: a reply of more than a kilobyte) on the node, and the
//!   latter two on a listener that keeps Nagle's algorithm on (the node before it set
//!   `TCP_NODELAY`), where a reply's trailers wait for the client's delayed ACK.
//! * `Deploy` of a one-process service on the process runtime from 4 clients (each
//!   removed again), against spawning the same process with `tokio::process`.
//! * The sandbox's cost: `true` run to its exit through the process runtime's
//!   sandbox (cgroup, rlimits, bubblewrap, uid drop) against a bare spawn of `true`.
//! * `Deploy` of a busybox container on the docker runtime (a real dockerd, started
//!   as the tests start it), each removed again.
//!
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use hanzo_e2e::{
    Devnet, arg,
    bench::percentile,
    ether, milli,
    rpc::{bearer, connect, sign_in_request},
};
use hanzo_node::{
    acl::Role,
    node::Node,
    rpc::{
        self, Caller,
        proto::{
            DeployRequest, DeploySpec, DeploymentRef, GetHealthRequest, GetStatusRequest,
            ListOperatorsRequest, ServiceSpec, auth_service_client::AuthServiceClient,
            chain_service_client::ChainServiceClient, node_service_client::NodeServiceClient,
        },
    },
};
use tonic::{Request, transport::Channel};

struct Run {
    calls: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` tasks call `call` for `duration`.
async fn load<F, Fut>(clients: usize, duration: Duration, call: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while start.elapsed() < duration {
                let t = Instant::now();
                assert!(call().await, "a call failed");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    Run {
        calls: all.len(),
        secs,
        p50_ms: percentile(&mut all, 0.5),
        p99_ms: percentile(&mut all, 0.99),
    }
}

/// `msg` with `authorization: <token>` when there is one.
fn authorized<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", t.parse().unwrap());
    }
    req
}

#[allow(clippy::cast_precision_loss)]
fn rate(r: &Run) -> f64 {
    r.calls as f64 / r.secs
}

const DEPLOYS: usize = 100;
const SPAWNS: usize = 100;
const DOCKER_DEPLOYS: usize = 30;
const SEQUENTIAL: usize = 200;

/// Start-to-exit of `true` through the sandbox and bare, `SPAWNS` times each,
/// alternating.
async fn sandbox_spawns(config: &hanzo_node::config::DeployConfig) -> (Run, Run) {
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = hanzo_node::deploy::Sandbox::new(config, &scratch.path().join("trial"))
        .await
        .unwrap();
    let dir = scratch.path().join("work");
    std::fs::create_dir_all(&dir).unwrap();
    sandbox.own(&dir).unwrap();
    let limits = hanzo_node::deploy::Limits {
        memory_bytes: 64 << 20,
        pids: 64,
        open_files: 256,
        cpu_millis: 0,
    };
    let (mut boxed, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..SPAWNS {
        let t = Instant::now();
        let out = sandbox
            .command(&dir, &[], None, None, &limits, "true", &[])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        boxed.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let out = tokio::process::Command::new("true").output().await.unwrap();
        assert!(out.status.success());
        bare.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (ms_run(boxed), ms_run(bare))
}

fn ms_run(mut v: Vec<f64>) -> Run {
    Run {
        calls: v.len(),
        secs: 0.0,
        p50_ms: percentile(&mut v, 0.50),
        p99_ms: percentile(&mut v, 0.99),
    }
}

/// Deploy latency of a busybox container on the docker runtime, one client; and the
/// same work with the stock docker CLI (a network of its own, then `docker run -d` on
/// it), in the same run.
async fn docker_deploys(net: &Devnet) -> (Run, Run) {
    let engine = hanzo_e2e::docker::engine();
    let mut config = net.config();
    config.data_dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(
        net.dir.path().join("node.key"),
        config.data_dir.join("node.key"),
    )
    .unwrap();
    std::fs::copy(
        net.dir.path().join("deployment.json"),
        config.data_dir.join("deployment.json"),
    )
    .unwrap();
    config.deploy.runtime = hanzo_node::config::DeployRuntime::Docker;
    config.deploy.docker_host = Some(engine.host.clone());
    config.deploy.stop_grace = Duration::from_secs(1);
    let node = Node::start(config).await.unwrap();
    node.synced_to(net.confirm().await).await;
    let ch = connect(node.rpc_addr.unwrap()).await;
    let token = hanzo_e2e::rpc::session(&ch, &net.dev_key(3)).await;
    let mut api = NodeServiceClient::new(ch);
    let mut times = Vec::new();
    for i in 0..DOCKER_DEPLOYS {
        let spec = DeploySpec {
            name: format!("bench-docker-{i}"),
            services: vec![ServiceSpec {
                name: "sleeper".into(),
                image: hanzo_e2e::docker::BUSYBOX.into(),
                command: "sleep".into(),
                args: vec!["60".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = Instant::now();
        api.deploy(bearer(
            DeployRequest {
                spec: Some(spec),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        api.remove(bearer(
            DeploymentRef {
                deployment: format!("bench-docker-{i}"),
            },
            &token,
        ))
        .await
        .unwrap();
    }
    node.shutdown().await;
    let mut cli = Vec::new();
    for i in 0..DOCKER_DEPLOYS {
        let (net_name, name) = (format!("bench-net-{i}"), format!("bench-cli-{i}"));
        let t = Instant::now();
        engine.docker(&["network", "create", &net_name]);
        engine.docker(&[
            "run",
            "-d",
            "--network",
            &net_name,
            "--name",
            &name,
            hanzo_e2e::docker::BUSYBOX,
            "sleep",
            "60",
        ]);
        cli.push(t.elapsed().as_secs_f64() * 1000.0);
        engine.docker(&["rm", "--force", &name]);
        engine.docker(&["network", "rm", &net_name]);
    }
    (ms_run(times), ms_run(cli))
}

/// Deploy latency through the node (each deployment removed again), and the
/// latency of spawning the same process directly.
async fn deploys(addr: std::net::SocketAddr, token: &str) -> (Run, Run) {
    let ch = connect(addr).await;
    let spec = |i: usize| DeploySpec {
        name: format!("bench-{i}"),
        services: vec![ServiceSpec {
            name: "sleeper".into(),
            command: "sleep".into(),
            args: vec!["60".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let per_client = DEPLOYS / 4;
    let mut tasks = Vec::new();
    for c in 0..4 {
        let (ch, token) = (ch.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut api = NodeServiceClient::new(ch);
            let mut times = Vec::new();
            for i in c * per_client..(c + 1) * per_client {
                let t = Instant::now();
                api.deploy(bearer(
                    DeployRequest {
                        spec: Some(spec(i)),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap();
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                api.remove(bearer(
                    DeploymentRef {
                        deployment: format!("bench-{i}"),
                    },
                    &token,
                ))
                .await
                .unwrap();
            }
            times
        }));
    }
    let mut deploy = Vec::new();
    for t in tasks {
        deploy.extend(t.await.unwrap());
    }
    let mut spawn = Vec::new();
    for _ in 0..DEPLOYS {
        let t = Instant::now();
        let mut child = tokio::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        spawn.push(t.elapsed().as_secs_f64() * 1000.0);
        child.kill().await.unwrap();
    }
    (ms_run(deploy), ms_run(spawn))
}

#[tokio::main]
async fn main() {
    let clients = usize::try_from(arg("--clients", 32)).unwrap();
    let duration = Duration::from_secs(arg("--secs", 5));
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    // Operators on chain, so ListOperators answers with more than a kilobyte.
    for i in 4..10 {
        net.client(i)
            .await
            .register_operator(
                alloy::primitives::B256::from(hanzo_node::keys::NodeKey::generate().public().0),
                &format!(
                    "http://127.0.0.1:{} /ip4/127.0.0.1/tcp/{}",
                    8000 + i,
                    9000 + i
                ),
                ether(2),
            )
            .await
            .unwrap();
    }
    let mut config = net.config();
    // The limit is not what is measured.
    config.rpc.base_rate = 1e9;
    config.rpc.max_rate = 1e9;
    config.deploy.stop_grace = Duration::from_secs(1);
    let node = Node::start(config).await.unwrap();
    node.synced_to(net.confirm().await).await;
    let addr = node.rpc_addr.unwrap();

    // Sign in as a staked caller.
    let key = net.dev_key(3);
    let auth = AuthServiceClient::new(connect(addr).await);
    let session = auth
        .clone()
        .sign_in(sign_in_request(auth, &key, None).await)
        .await
        .unwrap()
        .into_inner();
    let token: Arc<str> = format!("Bearer {}", session.token).into();

    // The same handlers without the auth layer, on a second listener.
    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_addr = bare.local_addr().unwrap();
    let caller = Caller {
        address: key.address(),
        role: Role::Caller,
        stake: milli(500),
        rate: 1e9,
        scope: rpc::auth::Scope::ALL,
        session: None,
    };
    let (deploy, spawn) = deploys(addr, &session.token).await;
    let (boxed, unboxed) = sandbox_spawns(&net.config().deploy).await;
    let (docker, docker_cli) = docker_deploys(&net).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(rpc::serve_unauthenticated(
        bare,
        node.rpc.clone().unwrap(),
        caller.clone(),
        true,
        cancel.clone(),
    ));
    // The same again with Nagle's algorithm on, as the node served before it set
    // TCP_NODELAY: the baseline of the sequential latencies.
    let nagle = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nagle_addr = nagle.local_addr().unwrap();
    tokio::spawn(rpc::serve_unauthenticated(
        nagle,
        node.rpc.clone().unwrap(),
        caller,
        false,
        cancel.clone(),
    ));

    let node_ch = connect(addr).await;
    let bare_ch = connect(bare_addr).await;
    let health = {
        let ch = node_ch.clone();
        load(clients, duration, move || {
            let mut c = NodeServiceClient::new(ch.clone());
            async move { c.get_health(GetHealthRequest {}).await.is_ok() }
        })
        .await
    };
    let status = |ch: Channel, token: Option<Arc<str>>| {
        move || {
            let mut c = NodeServiceClient::new(ch.clone());
            let token = token.clone();
            async move {
                let mut req = Request::new(GetStatusRequest {});
                if let Some(t) = token {
                    req.metadata_mut()
                        .insert("authorization", t.parse().unwrap());
                }
                c.get_status(req).await.is_ok()
            }
        }
    };
    // Alternate, so neither side always runs on a warmer machine.
    let authed = load(
        clients,
        duration,
        status(node_ch.clone(), Some(token.clone())),
    )
    .await;
    let unauthed = load(clients, duration, status(bare_ch.clone(), None)).await;
    let authed2 = load(
        clients,
        duration,
        status(node_ch.clone(), Some(token.clone())),
    )
    .await;
    let unauthed2 = load(clients, duration, status(bare_ch, None)).await;
    // One client, one call at a time: a reply big enough to be written in two pieces
    // (ListOperators with 6 operators) must not wait for the client's delayed ACK.
    let seq = |ch: Channel, token: Option<Arc<str>>, method: &'static str| async move {
        let (mut node, mut chain) = (
            NodeServiceClient::new(ch.clone()),
            ChainServiceClient::new(ch),
        );
        let mut lat = Vec::new();
        for _ in 0..SEQUENTIAL {
            let t = Instant::now();
            match method {
                "health" => drop(node.get_health(GetHealthRequest {}).await.unwrap()),
                "status" => drop(
                    node.get_status(authorized(GetStatusRequest {}, token.as_deref()))
                        .await
                        .unwrap(),
                ),
                _ => {
                    let r = chain
                        .list_operators(authorized(ListOperatorsRequest {}, token.as_deref()))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(r.operators.len(), 6);
                }
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms_run(lat)
    };
    let health_seq = seq(node_ch.clone(), None, "health").await;
    let status_seq = seq(node_ch.clone(), Some(token.clone()), "status").await;
    let operators_seq = seq(node_ch.clone(), Some(token.clone()), "operators").await;
    let nagle_ch = connect(nagle_addr).await;
    let nagle_status_seq = seq(nagle_ch.clone(), None, "status").await;
    let nagle_operators_seq = seq(nagle_ch, None, "operators").await;
    cancel.cancel();

    let a = (rate(&authed) + rate(&authed2)) / 2.0;
    let u = (rate(&unauthed) + rate(&unauthed2)) / 2.0;
    println!(
        "{clients} concurrent clients, {}s per run, loopback, debug build",
        duration.as_secs()
    );
    println!(
        "GetHealth: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        rate(&health),
        health.p50_ms,
        health.p99_ms
    );
    println!(
        "GetStatus with a session token: {a:.0} calls/s (p50 {:.2} ms, p99 {:.2} ms); same handler without the auth layer: {u:.0} calls/s (p50 {:.2} ms, p99 {:.2} ms); ratio {:.2}",
        authed2.p50_ms,
        authed2.p99_ms,
        unauthed2.p50_ms,
        unauthed2.p99_ms,
        a / u
    );
    println!(
        "Sequential calls, one client, {SEQUENTIAL} each: GetHealth p50 {:.2} ms; GetStatus p50 {:.2} ms (p99 {:.2} ms); ListOperators (6 operators) p50 {:.2} ms (p99 {:.2} ms). The same handlers on a server keeping Nagle's algorithm on (the node before TCP_NODELAY): GetStatus p50 {:.2} ms, ListOperators p50 {:.2} ms",
        health_seq.p50_ms,
        status_seq.p50_ms,
        status_seq.p99_ms,
        operators_seq.p50_ms,
        operators_seq.p99_ms,
        nagle_status_seq.p50_ms,
        nagle_operators_seq.p50_ms
    );
    println!(
        "Deploy of a one-process service (process runtime), {DEPLOYS} deploys from 4 clients: p50 {:.2} ms, p99 {:.2} ms; spawning the same process with tokio::process: p50 {:.2} ms, p99 {:.2} ms",
        deploy.p50_ms, deploy.p99_ms, spawn.p50_ms, spawn.p99_ms
    );
    println!(
        "`true` to its exit through the sandbox, {SPAWNS} times: p50 {:.2} ms, p99 {:.2} ms; bare spawn: p50 {:.2} ms, p99 {:.2} ms",
        boxed.p50_ms, boxed.p99_ms, unboxed.p50_ms, unboxed.p99_ms
    );
    println!(
        "Deploy of a busybox container (docker runtime, dockerd on this machine), {DOCKER_DEPLOYS} deploys: p50 {:.2} ms, p99 {:.2} ms; stock docker CLI, `network create` + `run -d` on it: p50 {:.2} ms, p99 {:.2} ms",
        docker.p50_ms, docker.p99_ms, docker_cli.p50_ms, docker_cli.p99_ms
    );
    println!("health_rps={:.0}", rate(&health));
    println!("health_p50_ms={:.2}", health.p50_ms);
    println!("health_p99_ms={:.2}", health.p99_ms);
    println!("auth_rps={a:.0}");
    println!("noauth_rps={u:.0}");
    println!("auth_throughput_ratio={:.2}", a / u);
    println!("auth_p99_ms={:.2}", authed2.p99_ms);
    println!("health_seq_p50_ms={:.2}", health_seq.p50_ms);
    println!("status_seq_p50_ms={:.2}", status_seq.p50_ms);
    println!("operators_seq_p50_ms={:.2}", operators_seq.p50_ms);
    println!("status_seq_nagle_p50_ms={:.2}", nagle_status_seq.p50_ms);
    println!(
        "operators_seq_nagle_p50_ms={:.2}",
        nagle_operators_seq.p50_ms
    );
    println!("deploy_p50_ms={:.2}", deploy.p50_ms);
    println!("deploy_p99_ms={:.2}", deploy.p99_ms);
    println!("spawn_p99_ms={:.2}", spawn.p99_ms);
    println!("sandbox_spawn_p50_ms={:.2}", boxed.p50_ms);
    println!("bare_spawn_p50_ms={:.2}", unboxed.p50_ms);
    println!("sandbox_spawn_ratio={:.2}", boxed.p50_ms / unboxed.p50_ms);
    println!("docker_deploy_p50_ms={:.2}", docker.p50_ms);
    println!("docker_deploy_p99_ms={:.2}", docker.p99_ms);
    println!("docker_cli_p99_ms={:.2}", docker_cli.p99_ms);
    node.shutdown().await;
}
