//! Workloads staked callers deploy on the node: specs, their replicas under a
//! [`Runtime`], logs and events, and their records in the store (secrets sealed), so
//! they come back after a restart.
//!
//! A deployment belongs to the address that made it; its id is derived from owner
//! and name, so callers refer to their deployments by name or id and never see
//! another caller's. This node's own operator (admin) sees and may stop them all.

mod cgroup;
mod compose;
mod docker;
mod journal;
mod process;
mod runtime;
mod sandbox;
mod secrets;
mod spec;
mod supervisor;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub use cgroup::Limits;
pub use compose::{MAX_COMPOSE_BYTES, parse as parse_compose};
pub use docker::Docker;
pub use journal::{Event, EventKind, Journal, LogLine, Stream};
pub use process::Process;
pub use runtime::{Chunk, Exec, Instance, Kind, Owned, Runtime, Target};
pub use sandbox::Sandbox;
pub use secrets::Sealer;
pub use spec::{
    Dependency, HealthCheck, MAX_REPLICAS, Mount, Port, Resources, Restart, ServiceSpec, Spec,
};
pub use supervisor::{State, Status};

use crate::{
    acl::{Role, Snapshot},
    config::{DeployConfig, DeployRuntime},
    keys::{NodeId, NodeKey},
    lock,
    store::Store,
    unix_now,
};
use supervisor::Replica;

/// Tracing target.
pub const TARGET: &str = "hanzo::deploy";
/// A deployment's journal file in its dir; a service name never starts with a dot.
const JOURNAL: &str = ".journal";
/// How long Deploy and Scale wait for new replicas' first start.
const FIRST_START: Duration = Duration::from_secs(5);

/// Why a deployment request failed.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("no deployment `{deployment}` of {owner}; ListContainers shows yours")]
    NotFound { deployment: String, owner: Address },
    #[error("deployment `{deployment}` has no {what} `{name}`; it has {have}")]
    NoSuch {
        deployment: String,
        what: &'static str,
        name: String,
        have: String,
    },
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Capacity(String),
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Who asks.
#[derive(Clone, Copy, Debug)]
pub struct Principal {
    /// The caller's address.
    pub address: Address,
    /// This node's own operator: sees and may stop every deployment.
    pub admin: bool,
}

/// A deployment and its replicas.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who deployed it.
    pub owner: Address,
    /// Every replica, service by service.
    pub containers: Vec<Status>,
}

/// The id of `owner`'s deployment called `name`.
pub fn id_of(owner: &Address, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner.as_slice());
    h.update([0]);
    h.update(name.as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The stored form: the spec without its secrets, which are sealed beside it.
#[derive(Serialize, Deserialize)]
struct Record {
    owner: [u8; 20],
    spec: Spec,
    /// Sealed postcard of each service's secret env, in service order.
    sealed: Vec<u8>,
    created_at: u64,
    stopped: bool,
}

struct Deployment {
    id: String,
    owner: Address,
    journal: Arc<Journal>,
    /// Held through a change (deploy, scale, stop, remove), one at a time.
    op: tokio::sync::Mutex<()>,
    state: Mutex<DepState>,
}

struct DepState {
    spec: Spec,
    created_at: u64,
    stopped: bool,
    replicas: BTreeMap<String, Vec<Replica>>,
}

/// The handle to the node's deployments; cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    store: Arc<Store>,
    sealer: Sealer,
    config: DeployConfig,
    /// Deployments' dirs: journals (and the process runtime's work dirs).
    root: PathBuf,
    deployments: Mutex<HashMap<String, Arc<Deployment>>>,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer")
            .field("runtime", &self.inner.runtime.name())
            .finish_non_exhaustive()
    }
}

impl Deployer {
    /// Opens the configured runtime (the process runtime works under `root`) and
    /// starts the stored deployments that were not stopped.
    pub async fn start(
        config: DeployConfig,
        root: PathBuf,
        store: Arc<Store>,
        key: &NodeKey,
    ) -> Result<Self, Error> {
        let runtime: Arc<dyn Runtime> = match config.runtime {
            DeployRuntime::Process => Arc::new(Process::new(root.clone(), &config).await?),
            DeployRuntime::Docker => {
                let defaults = docker::Defaults {
                    memory_bytes: config.replica_memory_bytes,
                    pids: config.replica_pids,
                    publish_address: config.publish_address.clone(),
                    low_ports: config.allow_low_ports,
                };
                let node = hex::encode(&key.public().0[..8]);
                Arc::new(Docker::connect(config.docker_host.as_deref(), node, defaults).await?)
            }
        };
        let deployer = Self {
            inner: Arc::new(Inner {
                runtime,
                store,
                sealer: Sealer::new(key),
                config,
                root,
                deployments: Mutex::new(HashMap::new()),
            }),
        };
        deployer.restore()?;
        Ok(deployer)
    }

    fn restore(&self) -> Result<(), Error> {
        for (id, bytes) in self.inner.store.deployments()? {
            let Some((spec, owner, created_at, stopped)) = self.decode(&bytes) else {
                warn!(target: TARGET, %id, "stored deployment is unreadable (another node key sealed its secrets, or it is corrupt); left out");
                continue;
            };
            let dep = Arc::new(Deployment {
                id: id.clone(),
                owner,
                journal: self.open_journal(&id),
                op: tokio::sync::Mutex::new(()),
                state: Mutex::new(DepState {
                    spec,
                    created_at,
                    stopped,
                    replicas: BTreeMap::new(),
                }),
            });
            if !stopped {
                drop(self.spawn_all(&dep));
            }
            info!(target: TARGET, %id, %owner, stopped, "deployment restored");
            lock(&self.inner.deployments).insert(id, dep);
        }
        Ok(())
    }

    /// Deployment `id`'s logs and events, kept across restarts in its dir.
    fn open_journal(&self, id: &str) -> Arc<Journal> {
        Arc::new(Journal::open(
            self.inner.config.log_bytes,
            self.inner.root.join(id).join(JOURNAL),
        ))
    }

    fn decode(&self, bytes: &[u8]) -> Option<(Spec, Address, u64, bool)> {
        let mut r: Record = postcard::from_bytes(bytes).ok()?;
        let secrets: Vec<BTreeMap<String, String>> =
            postcard::from_bytes(&self.inner.sealer.open(&r.sealed)?).ok()?;
        for (s, secret) in r.spec.services.iter_mut().zip(secrets) {
            s.secret_env = secret;
        }
        Some((r.spec, Address::from(r.owner), r.created_at, r.stopped))
    }

    fn persist(&self, dep: &Deployment) -> Result<(), Error> {
        let bytes = {
            let st = lock(&dep.state);
            let mut spec = st.spec.clone();
            let secrets: Vec<_> = spec
                .services
                .iter_mut()
                .map(|s| std::mem::take(&mut s.secret_env))
                .collect();
            // Serializing maps of strings into a Vec cannot fail.
            let sealed = self
                .inner
                .sealer
                .seal(&postcard::to_allocvec(&secrets).unwrap_or_default());
            postcard::to_allocvec(&Record {
                owner: dep.owner.into_array(),
                spec,
                sealed,
                created_at: st.created_at,
                stopped: st.stopped,
            })
            .unwrap_or_default()
        };
        Ok(self.inner.store.put_deployment(&dep.id, &bytes)?)
    }

    /// The deployment `name_or_id` that `who` may see.
    fn find(&self, who: &Principal, name_or_id: &str) -> Result<Arc<Deployment>, Error> {
        let map = lock(&self.inner.deployments);
        map.get(name_or_id)
            .filter(|d| d.owner == who.address || who.admin)
            .or_else(|| map.get(&id_of(&who.address, name_or_id)))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                deployment: name_or_id.to_owned(),
                owner: who.address,
            })
    }

    /// Replicas running or to run, over all deployments and over `owner`'s, leaving
    /// out deployment `except`.
    fn load(&self, owner: &Address, except: &str) -> (u32, u32) {
        let map = lock(&self.inner.deployments);
        map.values()
            .filter(|d| d.id != except)
            .fold((0, 0), |(all, mine), d| {
                let st = lock(&d.state);
                let n = if st.stopped { 0 } else { st.spec.replicas() };
                (all + n, mine + if d.owner == *owner { n } else { 0 })
            })
    }

    fn check_capacity(&self, owner: &Address, except: &str, wanted: u32) -> Result<(), Error> {
        let (all, mine) = self.load(owner, except);
        let c = &self.inner.config;
        if mine + wanted > c.max_replicas_per_caller {
            return Err(Error::Capacity(format!(
                "{owner} would run {} replicas on this node, at most {} per caller; stop or scale down another deployment",
                mine + wanted,
                c.max_replicas_per_caller
            )));
        }
        if all + wanted > c.max_replicas {
            return Err(Error::Capacity(format!(
                "this node runs {all} replicas and takes at most {}; {wanted} more do not fit",
                c.max_replicas
            )));
        }
        Ok(())
    }

    /// Refuses `names` when making those `owner` lacks would take it past its quota.
    async fn check_owned_quota(
        &self,
        owner: &Address,
        kind: Kind,
        names: &[String],
    ) -> Result<(), Error> {
        let have: Vec<String> = self
            .inner
            .runtime
            .list(kind, Some(owner))
            .await?
            .into_iter()
            .map(|o| o.name)
            .collect();
        let new = names.iter().filter(|n| !have.contains(n)).count();
        let max = match kind {
            Kind::Volume => self.inner.config.max_volumes_per_caller,
            Kind::Network => self.inner.config.max_networks_per_caller,
        };
        if new > 0 && have.len() + new > max as usize {
            return Err(Error::Capacity(format!(
                "{owner} would own {} {}s on this node, at most {max} per caller (`[deploy] max_{}s_per_caller`); remove one first",
                have.len() + new,
                kind.as_str(),
                kind.as_str()
            )));
        }
        Ok(())
    }

    /// The deployments of `owner` whose spec mounts or joins `name`.
    fn users(&self, owner: &Address, kind: Kind, name: &str) -> Vec<String> {
        let mut users: Vec<String> = lock(&self.inner.deployments)
            .values()
            .filter(|d| d.owner == *owner)
            .filter_map(|d| {
                let st = lock(&d.state);
                let uses = st.spec.services.iter().any(|s| match kind {
                    Kind::Volume => s.volumes.iter().any(|m| m.volume == name),
                    Kind::Network => s.networks.iter().any(|n| n == name),
                });
                uses.then(|| st.spec.name.clone())
            })
            .collect();
        users.sort();
        users
    }

    /// Makes the caller's volume or network `name` (nothing when it exists), within
    /// its quota.
    pub async fn create_owned(
        &self,
        who: &Principal,
        kind: Kind,
        name: &str,
    ) -> Result<(Owned, Vec<String>), Error> {
        spec::check_name(kind.as_str(), name)?;
        if kind == Kind::Network && name == "default" {
            return Err(Error::Invalid(
                "`default` is each deployment's own network; name a shared one otherwise".into(),
            ));
        }
        self.check_owned_quota(&who.address, kind, &[name.to_owned()])
            .await?;
        self.inner.runtime.create(kind, &who.address, name).await?;
        info!(target: TARGET, kind = kind.as_str(), name, owner = %who.address, "created");
        let owned = Owned {
            owner: who.address,
            name: name.to_owned(),
        };
        Ok((owned, self.users(&who.address, kind, name)))
    }

    /// The caller's volumes or networks (everyone's for this node's operator), each
    /// with the deployments that use it.
    pub async fn list_owned(
        &self,
        who: &Principal,
        kind: Kind,
    ) -> Result<Vec<(Owned, Vec<String>)>, Error> {
        let owner = (!who.admin).then_some(&who.address);
        Ok(self
            .inner
            .runtime
            .list(kind, owner)
            .await?
            .into_iter()
            .map(|o| {
                let users = self.users(&o.owner, kind, &o.name);
                (o, users)
            })
            .collect())
    }

    /// Removes the caller's volume or network `name`, unless a deployment of its
    /// uses it.
    pub async fn remove_owned(&self, who: &Principal, kind: Kind, name: &str) -> Result<(), Error> {
        let mine = self.inner.runtime.list(kind, Some(&who.address)).await?;
        if !mine.iter().any(|o| o.name == name) {
            return Err(Error::Missing(format!(
                "{} has no {} `{name}` on this node; List{}s shows yours",
                who.address,
                kind.as_str(),
                if kind == Kind::Volume {
                    "Volume"
                } else {
                    "Network"
                }
            )));
        }
        let users = self.users(&who.address, kind, name);
        if !users.is_empty() {
            return Err(Error::NotRunning(format!(
                "{} `{name}` is used by deployment {}; remove {} first",
                kind.as_str(),
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )));
        }
        self.inner.runtime.delete(kind, &who.address, name).await?;
        info!(target: TARGET, kind = kind.as_str(), name, owner = %who.address, "removed");
        Ok(())
    }

    /// Refuses host ports that another process holds, leaving out those the
    /// deployment being replaced publishes itself.
    fn check_ports(&self, owner: &Address, spec: &Spec) -> Result<(), Error> {
        let id = id_of(owner, &spec.name);
        let held: Vec<Port> = lock(&self.inner.deployments)
            .get(&id)
            .map(|d| {
                let st = lock(&d.state);
                st.spec
                    .services
                    .iter()
                    .flat_map(|s| s.ports.clone())
                    .collect()
            })
            .unwrap_or_default();
        for s in &spec.services {
            for p in s
                .ports
                .iter()
                .filter(|p| !held.iter().any(|h| h.host == p.host && h.udp == p.udp))
            {
                let ip = if p.host_ip.is_empty() {
                    &self.inner.config.publish_address
                } else {
                    &p.host_ip
                };
                let addr = format!("{ip}:{}", p.host);
                let free = match p.udp {
                    true => std::net::UdpSocket::bind(&addr).map(drop),
                    false => std::net::TcpListener::bind(&addr).map(drop),
                };
                if let Err(e) = free {
                    return Err(Error::Invalid(format!(
                        "service `{}`: host port {addr} is not free ({e}); publish another",
                        s.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Starts `spec` for `owner`, replacing the owner's deployment of the same name.
    pub async fn deploy(&self, owner: Address, spec: Spec) -> Result<Summary, Error> {
        spec.validate()?;
        for s in &spec.services {
            self.inner.runtime.check(s)?;
        }
        self.check_ports(&owner, &spec)?;
        for kind in [Kind::Volume, Kind::Network] {
            let names = match kind {
                Kind::Volume => &spec.volumes,
                Kind::Network => &spec.networks,
            };
            if !names.is_empty() {
                self.check_owned_quota(&owner, kind, names).await?;
            }
        }
        self.inner.runtime.prepare(&owner, &spec).await?;
        let id = id_of(&owner, &spec.name);
        let dep = {
            let mut map = lock(&self.inner.deployments);
            map.entry(id.clone())
                .or_insert_with(|| {
                    Arc::new(Deployment {
                        id: id.clone(),
                        owner,
                        journal: self.open_journal(&id),
                        op: tokio::sync::Mutex::new(()),
                        state: Mutex::new(DepState {
                            spec: spec.clone(),
                            created_at: unix_now(),
                            stopped: true,
                            replicas: BTreeMap::new(),
                        }),
                    })
                })
                .clone()
        };
        let _op = dep.op.lock().await;
        let result = async {
            self.check_capacity(&owner, &id, spec.replicas())?;
            self.stop_replicas(&dep, None).await;
            {
                let mut st = lock(&dep.state);
                st.spec = spec;
                st.stopped = false;
                st.replicas.clear();
            }
            self.persist(&dep)?;
            let started = self.spawn_all(&dep);
            wait_first(started).await;
            Ok(self.summary(&dep))
        }
        .await;
        if result.is_err() && self.inner.store.deployment(&id)?.is_none() {
            lock(&self.inner.deployments).remove(&id);
        }
        info!(target: TARGET, %id, %owner, ok = result.is_ok(), "deploy");
        result
    }

    fn spawn_all(&self, dep: &Deployment) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        // Validated specs have a start order; dependents wait for what they need.
        let services: Vec<ServiceSpec> = {
            let st = lock(&dep.state);
            st.spec.start_order().map_or_else(
                |_| st.spec.services.clone(),
                |o| o.into_iter().cloned().collect(),
            )
        };
        services
            .into_iter()
            .flat_map(|s| {
                let n = s.replicas;
                let service = Arc::new(s);
                (1..=n).map(move |i| (service.clone(), i))
            })
            .map(|(service, index)| self.spawn_one(dep, service, index))
            .collect()
    }

    fn spawn_one(
        &self,
        dep: &Deployment,
        service: Arc<ServiceSpec>,
        index: u32,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let target = Target {
            deployment: dep.id.clone(),
            owner: dep.owner,
            container: format!("{}-{index}", service.name).into(),
            service,
            index,
        };
        let name = target.service.name.clone();
        let after = {
            let st = lock(&dep.state);
            target
                .service
                .depends_on
                .iter()
                .flat_map(|d| {
                    st.replicas
                        .get(&d.service)
                        .into_iter()
                        .flatten()
                        .map(|r| (d.service.clone(), r.status.clone(), d.healthy))
                })
                .collect()
        };
        let (replica, first) = Replica::spawn(
            self.inner.runtime.clone(),
            target,
            dep.journal.clone(),
            self.inner.config.stop_grace,
            after,
        );
        lock(&dep.state)
            .replicas
            .entry(name)
            .or_default()
            .push(replica);
        first
    }

    /// Stops `service`'s replicas beyond `keep` (every replica of every service when
    /// `None`), and waits until they have.
    async fn stop_replicas(&self, dep: &Deployment, only: Option<(&str, usize)>) {
        let tasks: Vec<_> = {
            let mut st = lock(&dep.state);
            st.replicas
                .iter_mut()
                .filter(|(name, _)| only.is_none_or(|(s, _)| s == name.as_str()))
                .flat_map(|(_, rs)| {
                    let keep = only.map_or(0, |(_, k)| k);
                    rs.iter_mut().skip(keep).filter_map(Replica::stop)
                })
                .collect()
        };
        futures_util::future::join_all(tasks).await;
    }

    fn summary(&self, dep: &Deployment) -> Summary {
        let st = lock(&dep.state);
        Summary {
            id: dep.id.clone(),
            name: st.spec.name.clone(),
            owner: dep.owner,
            containers: st
                .replicas
                .values()
                .flatten()
                .map(Replica::status)
                .collect(),
        }
    }

    /// Stops every replica of a deployment; it stays stopped across restarts until
    /// deployed again.
    pub async fn stop(&self, who: &Principal, deployment: &str) -> Result<Summary, Error> {
        let dep = self.find(who, deployment)?;
        let _op = dep.op.lock().await;
        lock(&dep.state).stopped = true;
        self.persist(&dep)?;
        self.stop_replicas(&dep, None).await;
        info!(target: TARGET, id = %dep.id, by = %who.address, "stopped");
        Ok(self.summary(&dep))
    }

    /// Stops a deployment and forgets it: its record, files, logs and events.
    pub async fn remove(&self, who: &Principal, deployment: &str) -> Result<(), Error> {
        let dep = self.find(who, deployment)?;
        let _op = dep.op.lock().await;
        self.stop_replicas(&dep, None).await;
        self.inner.store.remove_deployment(&dep.id)?;
        lock(&self.inner.deployments).remove(&dep.id);
        let _ = std::fs::remove_file(self.inner.root.join(&dep.id).join(JOURNAL));
        self.inner.runtime.remove(&dep.id).await?;
        info!(target: TARGET, id = %dep.id, by = %who.address, "removed");
        Ok(())
    }

    /// Sets the replica count of one service.
    pub async fn scale(
        &self,
        who: &Principal,
        deployment: &str,
        service: &str,
        replicas: u32,
    ) -> Result<Summary, Error> {
        let dep = self.find(who, deployment)?;
        let _op = dep.op.lock().await;
        if replicas > MAX_REPLICAS {
            return Err(Error::Invalid(format!(
                "replicas is {replicas}, at most {MAX_REPLICAS}"
            )));
        }
        let (spec, before, stopped) = {
            let st = lock(&dep.state);
            let Some(s) = st.spec.service(service) else {
                return Err(no_such(
                    &dep.id,
                    "service",
                    service,
                    st.spec.services.iter().map(|s| s.name.clone()),
                ));
            };
            (s.clone(), s.replicas, st.stopped)
        };
        if !stopped {
            let others = lock(&dep.state).spec.replicas() - before;
            self.check_capacity(&dep.owner, &dep.id, others + replicas)?;
        }
        {
            let mut st = lock(&dep.state);
            if let Some(s) = st.spec.services.iter_mut().find(|s| s.name == service) {
                s.replicas = replicas;
            }
        }
        self.persist(&dep)?;
        if !stopped {
            if replicas < before {
                self.stop_replicas(&dep, Some((service, replicas as usize)))
                    .await;
                let mut st = lock(&dep.state);
                if let Some(rs) = st.replicas.get_mut(service) {
                    rs.truncate(replicas as usize);
                }
            } else {
                let service = Arc::new(ServiceSpec { replicas, ..spec });
                let started: Vec<_> = (before + 1..=replicas)
                    .map(|i| self.spawn_one(&dep, service.clone(), i))
                    .collect();
                wait_first(started).await;
            }
        }
        dep.journal.event(
            "",
            EventKind::Scaled,
            0,
            format!("{service}: {before} → {replicas} replicas"),
        );
        Ok(self.summary(&dep))
    }

    /// Every replica of `deployment`, or of all `who`'s deployments (all of the
    /// node's for the admin).
    pub fn list(&self, who: &Principal, deployment: Option<&str>) -> Result<Vec<Summary>, Error> {
        if let Some(d) = deployment {
            return Ok(vec![self.summary(&*self.find(who, d)?)]);
        }
        let deps: Vec<_> = lock(&self.inner.deployments)
            .values()
            .filter(|d| d.owner == who.address || who.admin)
            .cloned()
            .collect();
        let mut all: Vec<_> = deps.iter().map(|d| self.summary(d)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// One replica.
    pub fn inspect(
        &self,
        who: &Principal,
        deployment: &str,
        container: &str,
    ) -> Result<Status, Error> {
        let dep = self.find(who, deployment)?;
        let st = lock(&dep.state);
        st.replicas
            .values()
            .flatten()
            .find(|r| &*r.target.container == container)
            .map(Replica::status)
            .ok_or_else(|| no_such(&dep.id, "container", container, containers(&st)))
    }

    /// The journal of a deployment, after checking `container` (if any) is one of it.
    pub fn journal(
        &self,
        who: &Principal,
        deployment: &str,
        container: Option<&str>,
    ) -> Result<Arc<Journal>, Error> {
        let dep = self.find(who, deployment)?;
        if let Some(c) = container {
            let st = lock(&dep.state);
            if !st
                .replicas
                .values()
                .flatten()
                .any(|r| &*r.target.container == c)
            {
                return Err(no_such(&dep.id, "container", c, containers(&st)));
            }
        }
        Ok(dep.journal.clone())
    }

    /// Runs `command` beside a running replica.
    pub async fn exec(
        &self,
        who: &Principal,
        deployment: &str,
        container: &str,
        command: &[String],
        tty: Option<(u32, u32)>,
    ) -> Result<Exec, Error> {
        let dep = self.find(who, deployment)?;
        let target = {
            let st = lock(&dep.state);
            let replica = st
                .replicas
                .values()
                .flatten()
                .find(|r| &*r.target.container == container)
                .ok_or_else(|| no_such(&dep.id, "container", container, containers(&st)))?;
            let state = replica.status().state;
            if state != State::Running {
                return Err(Error::NotRunning(format!(
                    "container {container} is {state:?}, not running; exec needs a running replica"
                )));
            }
            replica.target.clone()
        };
        if command.is_empty() || command.len() > 256 || command.iter().any(|a| a.len() > 4096) {
            return Err(Error::Invalid(
                "exec needs a command of 1 to 256 words of at most 4096 bytes".into(),
            ));
        }
        self.inner.runtime.exec(&target, command, tty).await
    }

    /// Stops the deployments of owners this node may no longer serve (their stake
    /// went below the minimum, and they are no operator). They stay stopped until
    /// their owner deploys them again. Called on each ACL change, in chain order.
    pub async fn enforce(&self, snapshot: &Snapshot, node: &NodeId) {
        let unserved: Vec<_> = lock(&self.inner.deployments)
            .values()
            .filter(|d| {
                !lock(&d.state).stopped && snapshot.rpc_role(&d.owner, node) == Role::Anonymous
            })
            .cloned()
            .collect();
        for dep in unserved {
            let why = snapshot
                .check_caller(&dep.owner)
                .err()
                .map_or_else(|| "no stake".to_owned(), |e| e.to_string());
            let _op = dep.op.lock().await;
            lock(&dep.state).stopped = true;
            if let Err(err) = self.persist(&dep) {
                warn!(target: TARGET, id = %dep.id, %err, "cannot record the stop");
            }
            self.stop_replicas(&dep, None).await;
            dep.journal.event(
                "",
                EventKind::Stopped,
                0,
                format!("{} can no longer be served: {why}", dep.owner),
            );
            warn!(target: TARGET, id = %dep.id, owner = %dep.owner, %why, "stopped: the owner's stake is gone");
        }
    }

    /// Stops every replica for a node shutdown; deployments stay as they were, and
    /// come back when the node starts again.
    pub async fn shutdown(&self) {
        let deps: Vec<_> = lock(&self.inner.deployments).values().cloned().collect();
        futures_util::future::join_all(deps.iter().map(|d| self.stop_replicas(d, None))).await;
    }
}

fn containers(st: &DepState) -> impl Iterator<Item = String> + '_ {
    st.replicas
        .values()
        .flatten()
        .map(|r| r.target.container.to_string())
}

fn no_such(
    deployment: &str,
    what: &'static str,
    name: &str,
    have: impl Iterator<Item = String>,
) -> Error {
    let have: Vec<_> = have.collect();
    Error::NoSuch {
        deployment: deployment.to_owned(),
        what,
        name: name.chars().take(80).collect(),
        have: if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        },
    }
}

async fn wait_first(started: Vec<tokio::sync::oneshot::Receiver<()>>) {
    let _ = tokio::time::timeout(FIRST_START, futures_util::future::join_all(started)).await;
}
