//! The container runtime: each replica is a container on the local Docker Engine
//! (through its API, with bollard), named `hanzo-<deployment>-<container>` and
//! labelled with this node's id, so that a node restarted after a crash removes what
//! it left running before its deployments start again. Each deployment's networks are
//! its own (`hanzo-<deployment>-<network>`, `default` unless the spec names others;
//! services reach each other by service name); named volumes are the owner's
//! (`hanzo-<owner>-<volume>`) and outlive the deployment.

use std::{collections::HashMap, sync::Arc, time::Duration};

use alloy::primitives::Address;
use bollard::{
    models::{
        ContainerCreateBody, ExecConfig, HostConfig, MountType, NetworkConnectRequest,
        NetworkCreateRequest, PortBinding, VolumeCreateRequest,
    },
    query_parameters::{
        CreateContainerOptions, CreateImageOptions, InspectNetworkOptions, ListContainersOptions,
        ListNetworksOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions,
        ResizeExecOptions, StopContainerOptions,
    },
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use super::{
    Error,
    journal::{Journal, Stream},
    runtime::{Chunk, Exec, Instance, Kind, Owned, Runtime, Target},
    spec::{ServiceSpec, Spec},
};

/// Replicas as containers on the local engine.
#[derive(Debug, Clone)]
pub struct Docker {
    api: bollard::Docker,
    /// The `hanzo.node` label of this node's containers and networks.
    node: String,
    limits: Defaults,
}

/// What a replica gets where its spec says nothing, and what it may not ask for.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Memory of a replica whose spec sets none.
    pub memory_bytes: u64,
    /// Processes per container.
    pub pids: u32,
    /// Host address ports are published on when the spec names none.
    pub publish_address: String,
    /// Whether host ports below 1024 may be published.
    pub low_ports: bool,
}

const NODE_LABEL: &str = "hanzo.node";
const DEPLOYMENT_LABEL: &str = "hanzo.deployment";
const OWNER_LABEL: &str = "hanzo.owner";
const NAME_LABEL: &str = "hanzo.name";

/// The docker name of `owner`'s volume or network `name`.
fn owned_name(owner: &Address, name: &str) -> String {
    format!("hanzo-{}-{name}", hex::encode(&owner.as_slice()[..8]))
}

/// The docker name of a deployment's network `name`: its own `default`, or one its
/// owner's deployments share.
fn network_name(owner: &Address, deployment: &str, name: &str) -> String {
    if name == "default" {
        format!("hanzo-{deployment}-default")
    } else {
        owned_name(owner, name)
    }
}

fn exec_size(rows: u32, cols: u32) -> ResizeExecOptions {
    ResizeExecOptions {
        h: i32::try_from(rows).unwrap_or(i32::MAX),
        w: i32::try_from(cols).unwrap_or(i32::MAX),
    }
}

fn docker_io(what: &str, e: bollard::errors::Error) -> Error {
    Error::Io {
        what: what.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// The owner and name a volume's or network's labels give.
fn owned_of(labels: Option<&HashMap<String, String>>) -> Option<Owned> {
    let labels = labels?;
    Some(Owned {
        owner: labels.get(OWNER_LABEL)?.parse().ok()?,
        name: labels.get(NAME_LABEL)?.clone(),
    })
}

fn engine(e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!(
        "the Docker engine: {e}; start it, or use `[deploy] runtime = \"process\"`"
    ))
}

impl Docker {
    /// Connects to the engine at `host` (default: `DOCKER_HOST`, else
    /// `/var/run/docker.sock`) and checks it answers.
    /// Containers this node (`node`) left behind are removed: the deployments that
    /// should run start again from their records.
    pub async fn connect(
        host: Option<&str>,
        node: String,
        limits: Defaults,
    ) -> Result<Self, Error> {
        let api = match host {
            Some(h) => bollard::Docker::connect_with_host(h),
            None => bollard::Docker::connect_with_defaults(),
        }
        .map_err(engine)?;
        api.ping().await.map_err(engine)?;
        let docker = Self { api, node, limits };
        docker.remove_where(None).await;
        Ok(docker)
    }

    /// Removes this node's containers (of `deployment`, or all).
    async fn remove_where(&self, deployment: Option<&str>) {
        let mut labels = vec![format!("{NODE_LABEL}={}", self.node)];
        labels.extend(deployment.map(|d| format!("{DEPLOYMENT_LABEL}={d}")));
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let found = self
            .api
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        for c in found {
            let Some(id) = c.id else { continue };
            warn!(target: super::TARGET, names = ?c.names, "removing a container left by an earlier run");
            let _ = self
                .api
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }

    fn labels(&self, deployment: &str) -> HashMap<String, String> {
        HashMap::from([
            (NODE_LABEL.to_owned(), self.node.clone()),
            (DEPLOYMENT_LABEL.to_owned(), deployment.to_owned()),
        ])
    }

    fn owner_labels(&self, owner: &Address, name: &str) -> HashMap<String, String> {
        HashMap::from([
            (NODE_LABEL.to_owned(), self.node.clone()),
            (OWNER_LABEL.to_owned(), owner.to_checksum(None)),
            (NAME_LABEL.to_owned(), name.to_owned()),
        ])
    }

    /// Label filters for this node's volumes or networks of `owner` (all owners').
    fn owner_filter(&self, owner: Option<&Address>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{NODE_LABEL}={}", self.node),
            OWNER_LABEL.to_owned(),
        ];
        labels.extend(owner.map(|o| format!("{OWNER_LABEL}={}", o.to_checksum(None))));
        HashMap::from([("label".to_owned(), labels)])
    }

    /// Deployment `deployment`'s network `name` (of `owner`'s, unless `default`).
    async fn ensure_network(
        &self,
        owner: &Address,
        deployment: &str,
        name: &str,
    ) -> Result<(), Error> {
        let full = network_name(owner, deployment, name);
        if self
            .api
            .inspect_network(&full, None::<InspectNetworkOptions>)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let labels = if name == "default" {
            self.labels(deployment)
        } else {
            self.owner_labels(owner, name)
        };
        self.api
            .create_network(NetworkCreateRequest {
                name: full.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| docker_io(&format!("create network {full}"), e))
    }

    async fn ensure_volume(&self, owner: &Address, name: &str) -> Result<(), Error> {
        let full = owned_name(owner, name);
        if self.api.inspect_volume(&full).await.is_ok() {
            return Ok(());
        }
        self.api
            .create_volume(VolumeCreateRequest {
                name: Some(full.clone()),
                labels: Some(self.owner_labels(owner, name)),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|e| docker_io(&format!("create volume {full}"), e))
    }

    fn name(t: &Target) -> String {
        format!("hanzo-{}-{}", t.deployment, t.container)
    }

    async fn pull(&self, image: &str) -> Result<(), Error> {
        if self.api.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut pull = self.api.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_owned()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(step) = pull.next().await {
            step.map_err(|e| Error::Invalid(format!("cannot pull image {image}: {e}")))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Runtime for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn check(&self, s: &ServiceSpec) -> Result<(), Error> {
        if s.image.is_empty() {
            return Err(Error::Invalid(format!(
                "service `{}` needs an image under the docker runtime",
                s.name
            )));
        }
        if let Some(p) = s
            .ports
            .iter()
            .find(|p| p.host < 1024 && !self.limits.low_ports)
        {
            return Err(Error::Invalid(format!(
                "service `{}`: host port {} is below 1024, which this node does not publish (`[deploy] allow_low_ports`); publish 1024 or above",
                s.name, p.host
            )));
        }
        Ok(())
    }

    async fn prepare(&self, owner: &Address, spec: &Spec) -> Result<(), Error> {
        for s in &spec.services {
            self.pull(&s.image).await?;
        }
        let id = super::id_of(owner, &spec.name);
        for n in std::iter::once("default").chain(spec.networks.iter().map(String::as_str)) {
            self.ensure_network(owner, &id, n).await?;
        }
        for v in &spec.volumes {
            self.ensure_volume(owner, v).await?;
        }
        Ok(())
    }

    async fn start(&self, t: &Target, journal: Arc<Journal>) -> Result<Box<dyn Instance>, Error> {
        let s = &t.service;
        let name = Self::name(t);
        // What a previous run left under this name goes first.
        let _ = self
            .api
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        self.pull(&s.image).await?;
        let networks: Vec<&str> = if s.networks.is_empty() {
            vec!["default"]
        } else {
            s.networks.iter().map(String::as_str).collect()
        };
        for n in &networks {
            self.ensure_network(&t.owner, &t.deployment, n).await?;
        }
        for m in &s.volumes {
            self.ensure_volume(&t.owner, &m.volume).await?;
        }
        let cmd = (!s.command.is_empty()).then(|| {
            let mut cmd = vec![s.command.clone()];
            cmd.extend(s.args.iter().cloned());
            cmd
        });
        let env: Vec<String> = s
            .env
            .iter()
            .chain(&s.secret_env)
            .map(|(k, v)| format!("{k}={v}"))
            .chain([
                format!("HANZO_DEPLOYMENT={}", t.deployment),
                format!("HANZO_SERVICE={}", s.name),
                format!("HANZO_CONTAINER={}", t.container),
                format!("HANZO_REPLICA={}", t.index),
            ])
            .collect();
        let port_key =
            |p: &super::Port| format!("{}/{}", p.container, if p.udp { "udp" } else { "tcp" });
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &s.ports {
            let ip = if p.host_ip.is_empty() {
                &self.limits.publish_address
            } else {
                &p.host_ip
            };
            port_bindings
                .entry(port_key(p))
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(ip.clone()),
                    host_port: Some(p.host.to_string()),
                });
        }
        let mounts: Vec<bollard::models::Mount> = s
            .volumes
            .iter()
            .map(|m| bollard::models::Mount {
                target: Some(m.target.clone()),
                source: Some(owned_name(&t.owner, &m.volume)),
                typ: Some(MountType::VOLUME),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let mut labels: HashMap<String, String> = s.labels.clone().into_iter().collect();
        labels.extend(self.labels(&t.deployment));
        let memory = match s.resources.memory_bytes {
            0 => self.limits.memory_bytes,
            n => n,
        };
        let first = network_name(&t.owner, &t.deployment, networks[0]);
        let endpoint = |_: &str| bollard::models::EndpointSettings {
            aliases: Some(vec![s.name.clone()]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            cmd,
            entrypoint: (!s.entrypoint.is_empty()).then(|| s.entrypoint.clone()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(s.ports.iter().map(port_key).collect()),
            hostname: Some(t.container.to_string()),
            host_config: Some(HostConfig {
                memory: (memory > 0).then(|| i64::try_from(memory).unwrap_or(i64::MAX)),
                nano_cpus: (s.resources.cpu_millis > 0)
                    .then(|| i64::from(s.resources.cpu_millis) * 1_000_000),
                pids_limit: Some(i64::from(self.limits.pids)),
                security_opt: Some(vec!["no-new-privileges".into()]),
                port_bindings: Some(port_bindings),
                mounts: Some(mounts),
                network_mode: Some(first.clone()),
                ..Default::default()
            }),
            networking_config: Some(bollard::models::NetworkingConfig {
                endpoints_config: Some(HashMap::from([(first.clone(), endpoint(&first))])),
            }),
            ..Default::default()
        };
        let io = |e: bollard::errors::Error| Error::Io {
            what: format!("run container {name}"),
            source: std::io::Error::other(e.to_string()),
        };
        self.api
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(io)?;
        for n in &networks[1..] {
            let full = network_name(&t.owner, &t.deployment, n);
            self.api
                .connect_network(
                    &full,
                    NetworkConnectRequest {
                        container: name.clone(),
                        endpoint_config: Some(endpoint(&full)),
                    },
                )
                .await
                .map_err(io)?;
        }
        self.api.start_container(&name, None).await.map_err(io)?;
        let mut logs = self.api.logs(
            &name,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                tail: "all".into(),
                ..Default::default()
            }),
        );
        let container = t.container.clone();
        tokio::spawn(async move {
            let mut partial: [Vec<u8>; 2] = Default::default();
            while let Some(Ok(out)) = logs.next().await {
                let (i, stream, bytes) = match out {
                    bollard::container::LogOutput::StdErr { message } => {
                        (1, Stream::Stderr, message)
                    }
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => {
                        (0, Stream::Stdout, message)
                    }
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                let buf = &mut partial[i];
                buf.extend_from_slice(&bytes);
                while let Some(n) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=n).collect();
                    journal.log(&container, stream, line[..line.len() - 1].to_vec());
                }
                if buf.len() >= super::journal::MAX_LINE {
                    journal.log(&container, stream, std::mem::take(buf));
                }
            }
        });
        let pid = self
            .api
            .inspect_container(&name, None)
            .await
            .ok()
            .and_then(|c| c.state?.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0);
        Ok(Box::new(Container {
            api: self.api.clone(),
            name,
            pid,
            exited: None,
        }))
    }

    async fn exec(
        &self,
        t: &Target,
        command: &[String],
        size: Option<(u32, u32)>,
    ) -> Result<Exec, Error> {
        let name = Self::name(t);
        let tty = size.is_some();
        let io = |e: bollard::errors::Error| Error::Io {
            what: format!("exec in container {name}"),
            source: std::io::Error::other(e.to_string()),
        };
        let id = self
            .api
            .create_exec(
                &name,
                ExecConfig {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    cmd: Some(command.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(io)?
            .id;
        let started = self
            .api
            .start_exec(
                &id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(io)?;
        let bollard::exec::StartExecResults::Attached { mut output, input } = started else {
            return Err(Error::NotRunning(format!("exec in {name} detached")));
        };
        // The terminal's size before the command reads it; the engine may not have
        // started the process at once, so a refusal is tried again briefly.
        if let Some((rows, cols)) = size {
            for _ in 0..20 {
                let sized = self.api.resize_exec(&id, exec_size(rows, cols)).await;
                if sized.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let (resize_tx, mut resize_rx) = mpsc::unbounded_channel::<(u32, u32)>();
        let api = self.api.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = output.next() => {
                        let chunk = match out {
                            Some(Ok(bollard::container::LogOutput::StdErr { message })) => Chunk::Stderr(message.to_vec()),
                            Some(Ok(bollard::container::LogOutput::StdOut { message }
                                | bollard::container::LogOutput::Console { message })) => Chunk::Stdout(message.to_vec()),
                            Some(Ok(bollard::container::LogOutput::StdIn { .. })) => continue,
                            Some(Err(_)) | None => break,
                        };
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                    Some((rows, cols)) = resize_rx.recv() => {
                        let _ = api.resize_exec(&id, exec_size(rows, cols)).await;
                    }
                    () = tx.closed() => return,
                }
            }
            let code = api
                .inspect_exec(&id)
                .await
                .ok()
                .and_then(|i| i.exit_code)
                .map_or(-1, |c| i32::try_from(c).unwrap_or(-1));
            let _ = tx.send(Chunk::Exit(code)).await;
        });
        Ok(Exec {
            stdin: Some(Box::new(input)),
            output: rx,
            resize: Some(resize_tx),
        })
    }

    async fn create(&self, kind: Kind, owner: &Address, name: &str) -> Result<(), Error> {
        match kind {
            Kind::Volume => self.ensure_volume(owner, name).await,
            Kind::Network => self.ensure_network(owner, "", name).await,
        }
    }

    async fn list(&self, kind: Kind, owner: Option<&Address>) -> Result<Vec<Owned>, Error> {
        let filters = Some(self.owner_filter(owner));
        let mut found: Vec<Owned> = match kind {
            Kind::Volume => self
                .api
                .list_volumes(Some(ListVolumesOptions { filters }))
                .await
                .map_err(|e| docker_io("list volumes", e))?
                .volumes
                .unwrap_or_default()
                .iter()
                .filter_map(|v| owned_of(Some(&v.labels)))
                .collect(),
            Kind::Network => self
                .api
                .list_networks(Some(ListNetworksOptions { filters }))
                .await
                .map_err(|e| docker_io("list networks", e))?
                .iter()
                .filter_map(|n| owned_of(n.labels.as_ref()))
                .collect(),
        };
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    async fn delete(&self, kind: Kind, owner: &Address, name: &str) -> Result<(), Error> {
        let full = owned_name(owner, name);
        match kind {
            Kind::Volume => {
                self.api
                    .remove_volume(
                        &full,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
            }
            Kind::Network => self.api.remove_network(&full).await,
        }
        .map_err(|e| docker_io(&format!("remove {} {full}", kind.as_str()), e))
    }

    async fn remove(&self, deployment: &str) -> Result<(), Error> {
        // Containers are removed as their replicas stop; what is left, and the
        // deployment's networks, go now. Volumes are the owner's and stay.
        self.remove_where(Some(deployment)).await;
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{DEPLOYMENT_LABEL}={deployment}"),
                format!("{NODE_LABEL}={}", self.node),
            ],
        )]);
        let networks = self
            .api
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default();
        for n in networks.into_iter().filter_map(|n| n.name) {
            if let Err(err) = self.api.remove_network(&n).await {
                warn!(target: super::TARGET, network = %n, %err, "cannot remove network");
            }
        }
        Ok(())
    }
}

struct Container {
    api: bollard::Docker,
    name: String,
    /// Of its main process, on the host.
    pid: Option<u32>,
    exited: Option<i32>,
}

impl Container {
    async fn gone(&mut self, code: i32) -> i32 {
        let _ = self
            .api
            .remove_container(
                &self.name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        self.exited = Some(code);
        code
    }
}

#[async_trait::async_trait]
impl Instance for Container {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    async fn wait(&mut self) -> i32 {
        if let Some(c) = self.exited {
            return c;
        }
        let code = match self.api.wait_container(&self.name, None).next().await {
            Some(Ok(r)) => i32::try_from(r.status_code).unwrap_or(-1),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                i32::try_from(code).unwrap_or(-1)
            }
            _ => -1,
        };
        self.gone(code).await
    }

    async fn stop(&mut self, grace: Duration) -> i32 {
        if let Some(c) = self.exited {
            return c;
        }
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let _ = self
            .api
            .stop_container(
                &self.name,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await;
        self.wait().await
    }
}
