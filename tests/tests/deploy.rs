//! Workloads over gRPC against a real node: a staked caller deploys shell services
//! on the process runtime, reads their logs and events, execs into them, scales,
//! stops and removes them; another caller cannot see or touch them; they come back
//! after a node restart; health checks restart a sick replica; a caller whose stake
//! goes loses its open streams.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{collections::HashMap, time::Duration};

use hanzo_e2e::{
    rpc::{bearer, connect, served, session},
    *,
};
use hanzo_node::{
    acl::StakeRole,
    deploy::{Principal, State},
    node::Node,
    rpc::proto::{
        ContainerRef, ContainerState, DeployRequest, DeploySpec, DeploymentRef, EventKind,
        ExecInput, ExecStart, GetEventsRequest, GetLogsRequest, HealthCheck, ListContainersRequest,
        ListContainersResponse, ListOwnedRequest, NetworkRef, RestartPolicy, ScaleRequest,
        ServiceSpec, VolumeRef, exec_input::Input, exec_output::Output,
        node_service_client::NodeServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};

type Api = NodeServiceClient<Channel>;

fn service(name: &str, script: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

fn volume(name: &str) -> VolumeRef {
    VolumeRef { name: name.into() }
}

fn network(name: &str) -> NetworkRef {
    NetworkRef { name: name.into() }
}

async fn list(api: &mut Api, token: &str, deployment: &str) -> ListContainersResponse {
    api.list_containers(bearer(
        ListContainersRequest {
            deployment: deployment.into(),
        },
        token,
    ))
    .await
    .unwrap()
    .into_inner()
}

/// Container name → pid of `service`'s replicas, once there are `n` and all run.
async fn running(
    api: &mut Api,
    token: &str,
    deployment: &str,
    service: &str,
    n: usize,
) -> HashMap<String, u32> {
    eventually(Duration::from_secs(20), async || {
        let l = list(api, token, deployment).await;
        let mine: Vec<_> = l
            .containers
            .iter()
            .filter(|c| c.service == service)
            .collect();
        let all_up = mine.len() == n
            && mine
                .iter()
                .all(|c| c.state() == ContainerState::Running && c.pid != 0);
        all_up.then(|| mine.iter().map(|c| (c.container.clone(), c.pid)).collect())
    })
    .await
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Reads the stream until `want` returns true on an item, at most 30 s.
async fn until<T: std::fmt::Debug>(
    what: &str,
    stream: &mut tonic::Streaming<T>,
    mut want: impl FnMut(&T) -> bool,
) -> Vec<T> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = stream.next().await {
            let item = item.unwrap();
            let done = want(&item);
            seen.push(item);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "{what}: not seen within 30 s; saw {seen:#?}"
    );
    seen
}

async fn exec(
    api: &mut Api,
    token: &str,
    deployment: &str,
    container: &str,
    command: &[&str],
    stdin: &[u8],
) -> Result<(String, String, i32), Status> {
    let start = ExecInput {
        input: Some(Input::Start(ExecStart {
            deployment: deployment.into(),
            container: container.into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })),
    };
    let inputs = vec![
        start,
        ExecInput {
            input: Some(Input::Stdin(stdin.to_vec())),
        },
        ExecInput {
            input: Some(Input::StdinEof(true)),
        },
    ];
    let mut out = api
        .exec_in_container(bearer(tokio_stream::iter(inputs), token))
        .await?
        .into_inner();
    let (mut stdout, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(item) = out.next().await {
        match item?.output {
            Some(Output::Stdout(b)) => stdout.extend(b),
            Some(Output::Stderr(b)) => stderr.extend(b),
            Some(Output::ExitCode(c)) => code = Some(c),
            None => {}
        }
    }
    Ok((
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
        code.expect("an exit code ends the stream"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staked_caller_deploys_operates_and_alone_owns_a_service_that_survives_a_restart() {
    let net = Devnet::start().await;
    for i in [3, 5] {
        net.stake_caller(i).await;
    }
    let mut config = net.config();
    config.deploy.keep_alive = Duration::from_secs(1);
    config.deploy.stop_grace = Duration::from_secs(2);
    let (node, ch) = served(&net, config.clone()).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let (owner, other) = (net.dev_key(3), net.dev_key(5));
    let token = session(&ch, &owner).await;
    let other_token = session(&ch, &other).await;

    let mut ticker = service(
        "ticker",
        r#"i=0; while true; do echo "tick $i $GREETING $TOKEN"; i=$((i+1)); sleep 0.2; done"#,
    );
    ticker.env.insert("GREETING".into(), "hello".into());
    ticker
        .secret_env
        .insert("TOKEN".into(), "s3cret-value".into());
    let crasher = ServiceSpec {
        restart: RestartPolicy::OnFailure.into(),
        ..service("crasher", "echo starting; exit 3")
    };
    let spec = DeploySpec {
        name: "demo".into(),
        services: vec![ticker, crasher],
        ..Default::default()
    };

    // Without a session: told to sign in.
    let e = api
        .deploy(DeployRequest {
            spec: Some(spec.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let deployed = api
        .deploy(bearer(
            DeployRequest {
                spec: Some(spec.clone()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(deployed.name, "demo");
    assert_eq!(deployed.owner, owner.address().to_checksum(None));
    let id = deployed.deployment.clone();
    let mut names: Vec<_> = deployed
        .containers
        .iter()
        .map(|c| c.container.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["crasher-1", "ticker-1"]);

    // Its output, env and secret reach the log stream.
    let mut logs = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: "demo".into(),
                container: "ticker-1".into(),
                follow: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = until("ticker logs", &mut logs, |l| l.line.starts_with(b"tick 2 ")).await;
    let last = seen.last().unwrap();
    assert_eq!(last.line, b"tick 2 hello s3cret-value");
    assert_eq!(last.container, "ticker-1");
    assert!(seen.iter().all(|l| l.container == "ticker-1"));
    drop(logs);

    // The crasher exits 3 and is restarted (0.5 s, then 1 s, 2 s… apart); the idle
    // gaps between its lines carry keep-alives.
    let mut events = api
        .get_events(bearer(
            GetEventsRequest {
                deployment: id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = until("crasher restarted twice", &mut events, |e| {
        e.container == "crasher-1"
            && e.kind() == EventKind::Restarted
            && e.detail.starts_with("restart 2")
    })
    .await;
    assert!(
        seen.iter().any(|e| e.container == "crasher-1"
            && e.kind() == EventKind::Exited
            && e.exit_code == 3)
    );
    assert!(
        seen.iter()
            .any(|e| e.container == "ticker-1" && e.kind() == EventKind::Started)
    );
    let mut crash_logs = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: id.clone(),
                container: "crasher-1".into(),
                follow: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = until("keep-alive", &mut crash_logs, |l| l.keep_alive).await;
    assert!(seen.iter().any(|l| l.line == b"starting"), "{seen:?}");
    drop(crash_logs);
    let crasher = api
        .inspect_container(bearer(
            ContainerRef {
                deployment: "demo".into(),
                container: "crasher-1".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(crasher.restarts >= 2, "{crasher:?}");
    assert_eq!(crasher.exit_code, 3);

    // Exec: stdin in, stdout and stderr out, the exit code last, in the service's env.
    let (stdout, stderr, code) = exec(
        &mut api,
        &token,
        "demo",
        "ticker-1",
        &[
            "sh",
            "-c",
            "read x; echo \"got $x as $HANZO_CONTAINER with $GREETING\"; echo oops >&2; exit 7",
        ],
        b"abc\n",
    )
    .await
    .unwrap();
    assert_eq!(stdout, "got abc as ticker-1 with hello\n");
    assert_eq!(stderr, "oops\n");
    assert_eq!(code, 7);

    // Scale to 3.
    let scaled = api
        .scale(bearer(
            ScaleRequest {
                deployment: "demo".into(),
                service: "ticker".into(),
                replicas: 3,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        scaled
            .containers
            .iter()
            .filter(|c| c.service == "ticker")
            .count(),
        3
    );
    let pids = running(&mut api, &token, "demo", "ticker", 3).await;
    assert!(pids.values().all(|p| alive(*p)));
    let seen = until("scaled event", &mut events, |e| {
        e.kind() == EventKind::Scaled
    })
    .await;
    assert_eq!(seen.last().unwrap().detail, "ticker: 1 → 3 replicas");

    // Another caller sees nothing and can touch nothing, by name or by id.
    assert!(list(&mut api, &other_token, "").await.containers.is_empty());
    for target in ["demo", id.as_str()] {
        let e = api
            .stop(bearer(
                DeploymentRef {
                    deployment: target.into(),
                },
                &other_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(
            e.message().contains(&other.address().to_string()),
            "{}",
            e.message()
        );
        let e = api
            .get_logs(bearer(
                GetLogsRequest {
                    deployment: target.into(),
                    ..Default::default()
                },
                &other_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = exec(&mut api, &other_token, target, "ticker-1", &["true"], b"")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
    }

    // The secret is not in the database in the clear.
    let db = config.db_path();
    for f in std::fs::read_dir(&db).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            !bytes.windows(12).any(|w| w == b"s3cret-value"),
            "secret in the clear in {}",
            f.path().display()
        );
    }

    // A node restart stops the replicas and brings them back.
    drop(events);
    let before_restart = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    node.shutdown().await;
    assert!(
        pids.values().all(|p| !alive(*p)),
        "replicas outlived the node"
    );
    let (node, ch) = served(&net, config.clone()).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &owner).await;
    let after = running(&mut api, &token, "demo", "ticker", 3).await;
    // Logs and events from before the restart are still there.
    let old_lines = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: "demo".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let old_lines = until("a line from before the restart", &mut { old_lines }, |l| {
        l.at < before_restart && l.line.starts_with(b"tick ")
    })
    .await;
    assert!(!old_lines.is_empty());
    let mut old_events = api
        .get_events(bearer(
            GetEventsRequest {
                deployment: "demo".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    until("an event from before the restart", &mut old_events, |e| {
        e.at < before_restart && e.kind() == EventKind::Scaled
    })
    .await;
    let mut logs = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: "demo".into(),
                container: "ticker-3".into(),
                follow: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = until("ticker-3 after restart", &mut logs, |l| {
        l.line.starts_with(b"tick 1 ")
    })
    .await;
    assert_eq!(seen.last().unwrap().line, b"tick 1 hello s3cret-value");

    // Stop: every replica ends and shows stopped, and stays so across a restart.
    let stopped = api
        .stop(bearer(
            DeploymentRef {
                deployment: "demo".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stopped
            .containers
            .iter()
            .all(|c| c.state() == ContainerState::Stopped && c.pid == 0)
    );
    assert!(
        after.values().all(|p| !alive(*p)),
        "a replica survived Stop"
    );
    let e = exec(&mut api, &token, "demo", "ticker-1", &["true"], b"")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Remove: gone from the list, the store and the disk.
    api.remove(bearer(
        DeploymentRef {
            deployment: id.clone(),
        },
        &token,
    ))
    .await
    .unwrap();
    assert!(list(&mut api, &token, "").await.containers.is_empty());
    assert!(!config.deploy_path().join(&id).exists());
    let e = api
        .inspect_container(bearer(
            ContainerRef {
                deployment: "demo".into(),
                container: "ticker-1".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    node.shutdown().await;
    let node = Node::start(config).await.unwrap();
    let ch = connect(node.rpc_addr.unwrap()).await;
    let token = session(&ch, &owner).await;
    let mut api = NodeServiceClient::new(ch);
    assert!(list(&mut api, &token, "").await.containers.is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sick_replicas_restart_bad_specs_are_refused_and_unstaking_closes_streams() {
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let mut config = net.config();
    config.deploy.max_replicas_per_caller = 4;
    config.deploy.stop_grace = Duration::from_secs(1);
    let (node, ch) = served(&net, config).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let key = net.dev_key(3);
    let token = session(&ch, &key).await;
    let deploy = async |api: &mut Api, spec: DeploySpec| {
        api.deploy(bearer(
            DeployRequest {
                spec: Some(spec),
                ..Default::default()
            },
            &token,
        ))
        .await
    };

    // Bad specs: each refused with what to change.
    let bad = [
        (
            service("Web", "true"),
            "Bad",
            Code::InvalidArgument,
            "must be 1 to 63 of a-z",
        ),
        (
            ServiceSpec {
                command: "no-such-program-here".into(),
                ..service("web", "")
            },
            "bad",
            Code::InvalidArgument,
            "is not on the sandbox's PATH",
        ),
        (
            ServiceSpec {
                image: "nginx:latest".into(),
                ..service("web", "true")
            },
            "bad",
            Code::FailedPrecondition,
            "process runtime",
        ),
        (
            ServiceSpec {
                replicas: 5,
                ..service("web", "sleep 100")
            },
            "bad",
            Code::ResourceExhausted,
            "at most 4 per caller",
        ),
    ];
    for (s, name, code, needle) in bad {
        let e = deploy(
            &mut api,
            DeploySpec {
                name: name.into(),
                services: vec![s],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{}", e.message());
    }
    assert!(list(&mut api, &token, "").await.containers.is_empty());

    // A replica whose health check fails twice is marked unhealthy and restarted.
    let sick = ServiceSpec {
        health_check: Some(HealthCheck {
            command: vec!["test".into(), "-f".into(), "ready".into()],
            interval_secs: 1,
            timeout_secs: 1,
            retries: 2,
            ..Default::default()
        }),
        ..service("sick", "sleep 1000")
    };
    deploy(
        &mut api,
        DeploySpec {
            name: "health".into(),
            services: vec![sick],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut events = api
        .get_events(bearer(
            GetEventsRequest {
                deployment: "health".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen = until("restarted for health", &mut events, |e| {
        e.kind() == EventKind::Restarted
    })
    .await;
    let unhealthy = seen
        .iter()
        .find(|e| e.kind() == EventKind::Unhealthy)
        .expect("unhealthy before the restart");
    assert!(
        unhealthy.detail.contains("failed 2 times"),
        "{}",
        unhealthy.detail
    );

    // A stream open when the caller unstakes is closed with the reason.
    net.client(3)
        .await
        .request_unstake(StakeRole::Caller, milli(500))
        .await
        .unwrap();
    node.synced_to(net.confirm().await).await;
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the stream ended without a reason"),
            }
        }
    })
    .await
    .expect("the stream was closed");
    assert_eq!(end.code(), Code::PermissionDenied);
    assert!(
        end.message().contains("below the minimum"),
        "{}",
        end.message()
    );

    // Its workloads stop too: the node no longer serves that address.
    let deployer = node.deployer.clone().unwrap();
    let everyone = Principal {
        address: key.address(),
        admin: true,
    };
    eventually(Duration::from_secs(20), async || {
        let all = deployer.list(&everyone, Some("health")).unwrap();
        all[0]
            .containers
            .iter()
            .all(|c| c.state == State::Stopped && c.pid.is_none())
            .then_some(())
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_left_by_a_killed_node_are_reaped_and_started_again() {
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let rpc = hanzo_e2e::bench::free_addr();
    let env = [("HANZO_RPC_LISTEN", rpc.to_string())];
    let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut p = net.spawn_operator(6, &env).await;
    net.confirm().await;
    let key = net.dev_key(3);
    let signed_in = async || {
        eventually(Duration::from_secs(30), async || {
            let ch = Channel::from_shared(format!("http://{rpc}"))
                .unwrap()
                .connect()
                .await
                .ok()?;
            let mut auth =
                hanzo_node::rpc::proto::auth_service_client::AuthServiceClient::new(ch.clone());
            let req = hanzo_e2e::rpc::sign_in_request(auth.clone(), &key, None).await;
            let token = auth.sign_in(req).await.ok()?.into_inner().token;
            Some((NodeServiceClient::new(ch), token))
        })
        .await
    };
    let (mut api, token) = signed_in().await;
    api.deploy(bearer(
        DeployRequest {
            spec: Some(DeploySpec {
                name: "survivor".into(),
                services: vec![service("sleeper", "sleep 1000")],
                ..Default::default()
            }),
            ..Default::default()
        },
        &token,
    ))
    .await
    .unwrap();
    let before = running(&mut api, &token, "survivor", "sleeper", 1).await;
    let old = before["sleeper-1"];

    // SIGKILL: the node cannot stop its replica, which outlives it.
    p.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(old), "the replica runs on after the node is killed");

    // The node comes back: it kills the orphan, then starts the deployment again.
    net.respawn(&mut p, &env);
    let (mut api, token) = signed_in().await;
    let after = running(&mut api, &token, "survivor", "sleeper", 1).await;
    assert_ne!(after["sleeper-1"], old);
    assert!(!alive(old), "the orphan of the killed node was reaped");
    assert!(alive(after["sleeper-1"]));
    api.stop(bearer(
        DeploymentRef {
            deployment: "survivor".into(),
        },
        &token,
    ))
    .await
    .unwrap();
    assert!(!alive(after["sleeper-1"]));
}

/// A node with the docker runtime refuses to start without an engine and says how to
/// fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docker_runtime_without_an_engine_says_why() {
    let net = Devnet::start().await;
    let mut config = net.config();
    config.deploy.runtime = hanzo_node::config::DeployRuntime::Docker;
    config.deploy.docker_host = Some("unix:///nonexistent/docker.sock".into());
    let Err(e) = Node::start(config).await else {
        panic!("a node with the docker runtime started without an engine");
    };
    let msg = e.to_string();
    assert!(msg.contains("Docker engine"), "{msg}");
    assert!(msg.contains("runtime = \"process\""), "{msg}");
}

/// A compose app on the docker runtime, against a real engine (the tests start their
/// own dockerd): a busybox httpd on a published port answers from the host, a worker
/// that waits for it to be healthy writes to a named volume that survives `down` and
/// `up`; logs and exec work; another caller sees and touches none of it; what the
/// node does not do is refused before anything changes; containers a killed node left
/// are removed when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compose_app_runs_on_docker_and_is_its_owners_alone() {
    let engine = hanzo_e2e::docker::engine();
    let net = Devnet::start().await;
    for i in [3, 5] {
        net.stake_caller(i).await;
    }
    let mut config = net.config();
    config.deploy.runtime = hanzo_node::config::DeployRuntime::Docker;
    config.deploy.docker_host = Some(engine.host.clone());
    config.deploy.stop_grace = Duration::from_secs(1);
    config.deploy.max_volumes_per_caller = 2;
    // A container of this node's that a killed run left behind.
    let node_label = hex::encode(&net.node_key().public().0[..8]);
    engine.docker(&[
        "run",
        "-d",
        "--name",
        "hanzo-leftover-web-1",
        "--label",
        &format!("hanzo.node={node_label}"),
        hanzo_e2e::docker::BUSYBOX,
        "sleep",
        "1000",
    ]);
    let (node, ch) = served(&net, config.clone()).await;
    assert!(
        !engine
            .containers(true)
            .contains(&"hanzo-leftover-web-1".to_owned()),
        "the leftover container was removed at start"
    );
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let other = session(&ch, &net.dev_key(5)).await;

    let port = hanzo_e2e::bench::free_addr().port();
    let compose = format!(
        r#"
name: shop
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo hello-from-web > /tmp/index.html; echo web up; exec httpd -f -p 80 -h /tmp"]
    ports: ["127.0.0.1:{port}:80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 5
  worker:
    image: {image}
    command: sh -c 'echo run >> /data/runs; echo worker saw $$(wget -q -O- http://web/); sleep 1000'
    volumes: ["data:/data"]
    depends_on:
      web: {{condition: service_healthy}}
    labels: {{tier: batch}}
volumes:
  data:
"#,
        image = hanzo_e2e::docker::BUSYBOX
    );
    let up = async |api: &mut Api, token: &str, compose: &str| {
        api.deploy(bearer(
            DeployRequest {
                compose: compose.into(),
                ..Default::default()
            },
            token,
        ))
        .await
    };
    let deployed = up(&mut api, &token, &compose).await.unwrap().into_inner();
    let id = deployed.status.unwrap().deployment;
    running(&mut api, &token, "shop", "web", 1).await;
    running(&mut api, &token, "shop", "worker", 1).await;

    // The published port answers from the host.
    let page = eventually(Duration::from_secs(20), async || {
        let out = std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert_eq!(page, "hello-from-web\n");

    // The worker started after web was healthy, and reached it by service name.
    let mut logs = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: "shop".into(),
                follow: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    until("worker reaches web", &mut logs, |l| {
        l.line == b"worker saw hello-from-web"
    })
    .await;
    let (runs, _, code) = exec(
        &mut api,
        &token,
        "shop",
        "worker-1",
        &["cat", "/data/runs"],
        b"",
    )
    .await
    .unwrap();
    assert_eq!((runs.as_str(), code), ("run\n", 0));

    // Docker shows the two containers, on the deployment's own network, labelled.
    let names = engine.containers_of(&node_label, false);
    let want = [format!("hanzo-{id}-web-1"), format!("hanzo-{id}-worker-1")];
    assert_eq!(names, want);
    let inspect = engine.docker(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}} {{json .NetworkSettings.Networks}}",
        &want[1],
    ]);
    assert!(inspect.contains("\"tier\":\"batch\""), "{inspect}");
    assert!(
        inspect.contains(&format!("hanzo-{id}-default")),
        "{inspect}"
    );

    // Another caller sees none of it and cannot touch it.
    let theirs = list(&mut api, &other, "").await;
    assert!(theirs.containers.is_empty(), "{theirs:?}");
    let e = exec(&mut api, &other, &id, "worker-1", &["true"], b"")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = api
        .remove(bearer(
            DeploymentRef {
                deployment: id.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Volumes and networks are the owner's: listed with their users, kept while in
    // use, unseen and untouchable by others, within the owner's quota.
    let vols = api
        .list_volumes(bearer(ListOwnedRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(
        (vols[0].name.as_str(), vols[0].used_by.clone()),
        ("data", vec!["shop".to_owned()])
    );
    let theirs = api
        .list_volumes(bearer(ListOwnedRequest {}, &other))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(theirs.is_empty(), "{theirs:?}");
    let e = api
        .remove_volume(bearer(volume("data"), &other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = api
        .remove_volume(bearer(volume("data"), &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("used by deployment shop"),
        "{}",
        e.message()
    );
    api.create_volume(bearer(volume("extra"), &token))
        .await
        .unwrap();
    let e = api
        .create_volume(bearer(volume("more"), &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("at most 2 per caller"),
        "{}",
        e.message()
    );
    api.remove_volume(bearer(volume("extra"), &token))
        .await
        .unwrap();
    let made = api
        .create_network(bearer(network("backend"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.name, "backend");
    let nets = api
        .list_networks(bearer(ListOwnedRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["backend"]
    );
    let e = api
        .create_network(bearer(network("default"), &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    api.remove_network(bearer(network("backend"), &token))
        .await
        .unwrap();

    // Refused before anything changes, each with its reason.
    let refused = [
        (
            compose.replace("    labels:", "    privileged: true\n    labels:"),
            "privileged",
        ),
        (
            compose.replace("[\"data:/data\"]", "[\"/etc:/data\"]"),
            "host bind mounts are refused",
        ),
        (
            compose.replace(hanzo_e2e::docker::BUSYBOX, "hanzo-test/nowhere:1"),
            "cannot pull image hanzo-test/nowhere:1",
        ),
        (
            compose.replace(&format!(":{port}:80"), ":80:80"),
            "below 1024",
        ),
        ("just: text\n".into(), "not a compose file"),
        (
            format!("# {}\n{compose}", "x".repeat(300 << 10)),
            "at most 262144",
        ),
    ];
    for (bad, why) in refused {
        let e = up(&mut api, &token, &bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
    // 10 MB does not pass the gRPC message limit.
    let huge = format!("# {}\n{compose}", "x".repeat(10 << 20));
    let e = up(&mut api, &token, &huge).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = compose.replace("name: shop", "name: other-shop").replace(
        &format!(":{port}:80"),
        &format!(":{}:80", taken.local_addr().unwrap().port()),
    );
    let e = up(&mut api, &token, &busy).await.unwrap_err();
    assert!(e.message().contains("is not free"), "{}", e.message());
    assert_eq!(
        engine.containers_of(&node_label, false),
        want,
        "nothing changed"
    );

    // down, then up: the volume's content survives.
    api.remove(bearer(
        DeploymentRef {
            deployment: "shop".into(),
        },
        &token,
    ))
    .await
    .unwrap();
    assert!(
        engine.containers_of(&node_label, true).is_empty(),
        "down removes the containers"
    );
    up(&mut api, &token, &compose).await.unwrap();
    running(&mut api, &token, "shop", "worker", 1).await;
    let runs = eventually(Duration::from_secs(20), async || {
        let (runs, _, _) = exec(
            &mut api,
            &token,
            "shop",
            "worker-1",
            &["cat", "/data/runs"],
            b"",
        )
        .await
        .ok()?;
        (runs == "run\nrun\n").then_some(runs)
    })
    .await;
    assert_eq!(runs, "run\nrun\n");

    // Exec beside the app.
    let (tty, _, code) = exec(&mut api, &token, "shop", "web-1", &["echo", "ok"], b"")
        .await
        .unwrap();
    assert_eq!((tty.as_str(), code), ("ok\n", 0));
    let stopped = api
        .stop(bearer(
            DeploymentRef {
                deployment: "shop".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stopped
            .containers
            .iter()
            .all(|c| c.state() == ContainerState::Stopped)
    );
    assert!(
        engine.containers_of(&node_label, false).is_empty(),
        "stop stops the containers"
    );

    // The owner unstakes: its containers stop.
    up(&mut api, &token, &compose).await.unwrap();
    running(&mut api, &token, "shop", "worker", 1).await;
    net.client(3)
        .await
        .request_unstake(StakeRole::Caller, milli(500))
        .await
        .unwrap();
    node.synced_to(net.confirm().await).await;
    eventually(Duration::from_secs(20), async || {
        engine
            .containers_of(&node_label, false)
            .is_empty()
            .then_some(())
    })
    .await;
    node.shutdown().await;
}

/// The process runtime's sandbox, tried as a hostile caller would: the workload runs
/// as an unprivileged uid, sees nothing of the node's data dir or of other callers'
/// deployments, writes only its own dir, and a fork bomb and a memory hog are stopped
/// by their limits (the event names the limit) while the node and other workloads
/// keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workloads_are_sandboxed_to_their_own_dir_and_limits() {
    let net = Devnet::start().await;
    for i in [3, 5] {
        net.stake_caller(i).await;
    }
    let mut config = net.config();
    config.deploy.replica_pids = 32;
    let data = config.data_dir.clone();
    // What an operator's data dir holds beside the node key and the store.
    std::fs::write(
        data.join("config.toml"),
        "[deploy]\nrole = \"secret config\"\n",
    )
    .unwrap();
    std::fs::write(
        data.join(hanzo_node::keys::OPERATOR_KEYSTORE_FILE),
        "{\"secret\": \"operator keystore\"}",
    )
    .unwrap();
    let (node, ch) = served(&net, config.clone()).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let neighbour_token = session(&ch, &net.dev_key(5)).await;

    let deploy = async |api: &mut Api, token: &str, name: &str, s: ServiceSpec| {
        api.deploy(bearer(
            DeployRequest {
                spec: Some(DeploySpec {
                    name: name.into(),
                    services: vec![s],
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
    };
    deploy(
        &mut api,
        &neighbour_token,
        "neighbour",
        service("keeper", "echo neighbour-secret > mine.txt; sleep 1000"),
    )
    .await;
    deploy(&mut api, &token, "probe", service("probe", "sleep 1000")).await;
    running(&mut api, &token, "probe", "probe", 1).await;
    let neighbour_dir = config
        .deploy_path()
        .join(hanzo_node::deploy::id_of(&net.dev_address(5), "neighbour"))
        .join("keeper");
    eventually(Duration::from_secs(10), async || {
        neighbour_dir.join("mine.txt").exists().then_some(())
    })
    .await;

    let (uid, _, code) = exec(&mut api, &token, "probe", "probe-1", &["id", "-u"], b"")
        .await
        .unwrap();
    assert_eq!((uid.trim(), code), ("65534", 0), "not root");

    // Each secret of the node, and the neighbour's file, by their host paths.
    let db_file = std::fs::read_dir(config.db_path())
        .unwrap()
        .flatten()
        .find(|f| f.path().is_file())
        .unwrap()
        .path();
    for path in [
        data.join("node.key"),
        data.join(hanzo_node::keys::OPERATOR_KEYSTORE_FILE),
        data.join("config.toml"),
        db_file,
        neighbour_dir.join("mine.txt"),
    ] {
        let path = path.to_str().unwrap();
        let (out, err, code) = exec(&mut api, &token, "probe", "probe-1", &["cat", path], b"")
            .await
            .unwrap();
        assert_ne!(code, 0, "{path} was readable: {out}");
        assert!(out.is_empty(), "{path}: {out}");
        assert!(err.contains("No such file"), "{path}: {err}");
    }
    let (listing, _, _) = exec(&mut api, &token, "probe", "probe-1", &["ls", "/"], b"")
        .await
        .unwrap();
    assert!(!listing.contains(data.file_name().unwrap().to_str().unwrap()));

    // Writes: its own dir yes, anywhere else no.
    for (script, ok) in [
        ("echo x > /work/own.txt", true),
        ("echo x > /tmp/private.txt", true),
        ("echo x > /usr/evil", false),
        ("echo x > /evil", false),
        ("echo x > /etc/evil", false),
    ] {
        let (_, err, code) = exec(
            &mut api,
            &token,
            "probe",
            "probe-1",
            &["sh", "-c", script],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(code == 0, ok, "{script}: exit {code}, {err}");
    }
    let probe_dir = config
        .deploy_path()
        .join(hanzo_node::deploy::id_of(&net.dev_address(3), "probe"))
        .join("probe");
    assert_eq!(
        std::fs::read_to_string(probe_dir.join("own.txt")).unwrap(),
        "x\n"
    );
    let mine = std::fs::read_dir(&probe_dir).unwrap().count();
    assert_eq!(mine, 1, "/tmp is the sandbox's own, not the work dir");

    // A fork bomb and a memory hog, each stopped by its limit, the event naming it.
    let no_restart = |s: ServiceSpec| ServiceSpec {
        restart: RestartPolicy::No.into(),
        ..s
    };
    deploy(
        &mut api,
        &token,
        "bomb",
        no_restart(service("bomb", "while true; do sleep 30 & done")),
    )
    .await;
    let mut hog = no_restart(service(
        "hog",
        "x=0123456789abcdef; while true; do x=\"$x$x\"; done",
    ));
    hog.resources = Some(hanzo_node::rpc::proto::Resources {
        memory_bytes: 64 << 20,
        ..Default::default()
    });
    deploy(&mut api, &token, "hog", hog).await;
    for (deployment, limit) in [
        ("bomb", "process limit of 32 reached"),
        ("hog", "memory limit of 64 MiB reached"),
    ] {
        let mut events = api
            .get_events(bearer(
                GetEventsRequest {
                    deployment: deployment.into(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let seen = until(deployment, &mut events, |e| e.kind() == EventKind::Exited).await;
        let exited = seen.last().unwrap();
        assert!(exited.detail.contains(limit), "{deployment}: {exited:?}");
    }

    // The node and the other workloads serve on.
    let (out, _, code) = exec(
        &mut api,
        &token,
        "probe",
        "probe-1",
        &["echo", "alive"],
        b"",
    )
    .await
    .unwrap();
    assert_eq!((out.as_str(), code), ("alive\n", 0));
    running(&mut api, &neighbour_token, "neighbour", "keeper", 1).await;
    node.shutdown().await;
}

/// `hanzo-node compose`, as a `docker compose` user runs it against a node: `up`,
/// `ps --json`, `logs`, `scale`, `events --json`, `exec -it` in a real terminal (tmux)
/// that follows a resize, and `down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_compose_cli_runs_an_app_as_docker_compose_does() {
    let engine = hanzo_e2e::docker::engine();
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let mut config = net.config();
    config.deploy.runtime = hanzo_node::config::DeployRuntime::Docker;
    config.deploy.docker_host = Some(engine.host.clone());
    config.deploy.stop_grace = Duration::from_secs(1);
    let node_label = hex::encode(&net.node_key().public().0[..8]);
    let (node, _) = served(&net, config).await;
    let url = format!("http://{}", node.rpc_addr.unwrap());
    let key = format!("0x{}", hex::encode(net.dev_key(3).to_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            "name: cli-app\nservices:\n  web:\n    image: {}\n    command: sh -c 'echo web up; sleep 1000'\n",
            hanzo_e2e::docker::BUSYBOX
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let compose = |args: &[&str]| {
        let mut cmd = std::process::Command::new(node_bin());
        cmd.args(["compose", "--url", &url, "-f", &file])
            .args(args)
            .env("HANZO_PRIVATE_KEY", &key)
            .env("HANZO_DATA_DIR", dir.path());
        cmd
    };
    let run = |args: &[&str]| ok(&compose(args).output().unwrap());

    let up = run(&["up", "-d"]);
    assert!(
        up.contains("Container cli-app-web-1") && up.contains("Started"),
        "{up}"
    );
    let ps = run(&["ps", "--json"]);
    let rows: Vec<serde_json::Value> = ps
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{ps}");
    assert_eq!(
        (rows[0]["Service"].as_str(), rows[0]["State"].as_str()),
        (Some("web"), Some("Running"))
    );
    let logs = eventually(Duration::from_secs(20), async || {
        let l = run(&["logs", "web"]);
        l.contains("cli-app-web-1 | web up").then_some(l)
    })
    .await;
    assert!(logs.contains("web up"), "{logs}");
    let scaled = run(&["scale", "web=2"]);
    assert!(scaled.contains("cli-app-web-2"), "{scaled}");
    assert!(run(&["ps"]).contains("cli-app-web-2"));

    // events --json follows; the first lines are the starts so far.
    let mut events = compose(&["events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(events.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    let e: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (e["container"].as_str(), e["action"].as_str()),
        (Some("web-1"), Some("started"))
    );
    events.kill().unwrap();
    let _ = events.wait();

    // exec -it in a real terminal: the size is the terminal's, and follows a resize.
    let socket = format!("hanzo-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shell = format!(
        "{} compose --url {url} -f {file} exec -it web-1 sh; echo EXIT=$?; sleep 60",
        node_bin().display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        "-e",
        &format!("HANZO_PRIVATE_KEY={key}"),
        "-e",
        &format!("HANZO_DATA_DIR={}", dir.path().display()),
        &shell,
    ]);
    let screen = async |want: &str| {
        let mut s = String::new();
        for _ in 0..200 {
            s = tmux(&["capture-pane", "-p", "-t", "t"]);
            if s.contains(want) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the terminal did not show {want:?} within 20 s; it shows:\n{s}");
    };
    tmux(&["send-keys", "-t", "t", "stty size; tty", "Enter"]);
    let s = screen("30 100").await;
    assert!(s.contains("/dev/pts/"), "a terminal: {s}");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tmux(&["send-keys", "-t", "t", "clear; stty size", "Enter"]);
    screen("40 120").await;
    tmux(&["send-keys", "-t", "t", "exit 7", "Enter"]);
    screen("EXIT=7").await;
    tmux(&["kill-server"]);

    let down = run(&["down"]);
    assert!(
        down.contains("Container cli-app-web-1") && down.contains("Removed"),
        "{down}"
    );
    assert!(
        engine.containers_of(&node_label, true).is_empty(),
        "down leaves nothing"
    );
    node.shutdown().await;
}

/// A compose app on the process runtime: an image-less service runs sandboxed with a
/// named volume that outlives `down`; a service with an image or ports is refused
/// with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compose_app_on_the_process_runtime_runs_or_is_refused_with_the_reason() {
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let (node, ch) = served(&net, net.config()).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let up = async |api: &mut Api, compose: &str| {
        api.deploy(bearer(
            DeployRequest {
                compose: compose.into(),
                ..Default::default()
            },
            &token,
        ))
        .await
    };
    let app = "name: jobs\nservices:\n  worker:\n    command: sh -c 'echo run >> /data/runs; sleep 1000'\n    volumes: [\"data:/data\"]\nvolumes:\n  data:\n";
    for round in 1..=2 {
        up(&mut api, app).await.unwrap();
        running(&mut api, &token, "jobs", "worker", 1).await;
        let runs = eventually(Duration::from_secs(10), async || {
            let (runs, _, _) = exec(
                &mut api,
                &token,
                "jobs",
                "worker-1",
                &["cat", "/data/runs"],
                b"",
            )
            .await
            .ok()?;
            (runs.lines().count() == round).then_some(runs)
        })
        .await;
        assert_eq!(runs, "run\n".repeat(round));
        api.remove(bearer(
            DeploymentRef {
                deployment: "jobs".into(),
            },
            &token,
        ))
        .await
        .unwrap();
    }
    // The volume outlived the deployment; networks are the docker runtime's.
    let vols = api
        .list_volumes(bearer(ListOwnedRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!((vols[0].name.as_str(), vols[0].used_by.len()), ("data", 0));
    api.remove_volume(bearer(volume("data"), &token))
        .await
        .unwrap();
    let e = api
        .create_network(bearer(network("backend"), &token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("networks need a container runtime"),
        "{}",
        e.message()
    );
    for (extra, why) in [
        (
            "    image: busybox:1.36\n",
            "an image needs a container runtime",
        ),
        (
            "    ports: [\"8080:80\"]\n",
            "publishing ports needs a container runtime",
        ),
    ] {
        let bad = app.replace("    volumes:", &format!("{extra}    volumes:"));
        let e = up(&mut api, &bad).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
    }
    node.shutdown().await;
}
