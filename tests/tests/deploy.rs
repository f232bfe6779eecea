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
        ListContainersResponse, RestartPolicy, ScaleRequest, ServiceSpec, exec_input::Input,
        exec_output::Output, node_service_client::NodeServiceClient,
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
    };

    // Without a session: told to sign in.
    let e = api
        .deploy(DeployRequest {
            spec: Some(spec.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    let deployed = api
        .deploy(bearer(
            DeployRequest {
                spec: Some(spec.clone()),
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
    node.shutdown().await;
    assert!(
        pids.values().all(|p| !alive(*p)),
        "replicas outlived the node"
    );
    let (node, ch) = served(&net, config.clone()).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &owner).await;
    let after = running(&mut api, &token, "demo", "ticker", 3).await;
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
        api.deploy(bearer(DeployRequest { spec: Some(spec) }, &token))
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
            "is not on the node's PATH",
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
        }),
        ..service("sick", "sleep 1000")
    };
    deploy(
        &mut api,
        DeploySpec {
            name: "health".into(),
            services: vec![sick],
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
            }),
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

/// The docker runtime: with an engine, a container service runs, logs and execs;
/// without one (as on CI machines with no Docker), the node refuses to start with
/// that runtime and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docker_runtime_runs_containers_or_says_why_it_cannot() {
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let mut config = net.config();
    config.deploy.runtime = hanzo_node::config::DeployRuntime::Docker;
    let engine = std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists();
    if !engine {
        let Err(e) = Node::start(config).await else {
            panic!("a node with the docker runtime started without an engine");
        };
        let msg = e.to_string();
        assert!(msg.contains("Docker engine"), "{msg}");
        assert!(msg.contains("runtime = \"process\""), "{msg}");
        eprintln!("skipped the container part: no Docker engine here ({msg})");
        return;
    }
    let (node, ch) = served(&net, config).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let spec = DeploySpec {
        name: "boxed".into(),
        services: vec![ServiceSpec {
            image: "busybox:latest".into(),
            ..service(
                "web",
                "while true; do echo \"hi $HANZO_CONTAINER\"; sleep 1; done",
            )
        }],
    };
    api.deploy(bearer(DeployRequest { spec: Some(spec) }, &token))
        .await
        .unwrap();
    let mut logs = api
        .get_logs(bearer(
            GetLogsRequest {
                deployment: "boxed".into(),
                follow: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    until("container logs", &mut logs, |l| l.line == b"hi web-1").await;
    let (stdout, _, code) = exec(&mut api, &token, "boxed", "web-1", &["echo", "ok"], b"")
        .await
        .unwrap();
    assert_eq!((stdout.as_str(), code), ("ok\n", 0));
    let stopped = api
        .stop(bearer(
            DeploymentRef {
                deployment: "boxed".into(),
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
    node.shutdown().await;
}
