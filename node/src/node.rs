//! A running node: wires config, store, chain sync, ACL and the HTTP listener, runs
//! its long-running tasks through [`Tasks`] (a critical one that fails stops the
//! node), and stops them together within a grace period.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    acl::{Acl, Snapshot},
    chain::{self, Status, Syncer},
    config::Config,
    deploy::Deployer,
    dns,
    git::Git,
    health::{self, Health},
    http,
    inference::Inference,
    keys::{NODE_KEY_FILE, NodeKey},
    metrics,
    p2p::P2p,
    rpc,
    store::{self, Store},
    tasks::{Failure, Tasks},
};

const TARGET: &str = "hanzo::node";

/// Why the node could not start.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Chain(#[from] chain::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Keys(#[from] crate::keys::Error),
    #[error("repos: {0}")]
    Git(#[from] crate::git::Error),
    #[error(transparent)]
    P2p(#[from] crate::p2p::Error),
    #[error(transparent)]
    Dns(#[from] crate::dns::Error),
    #[error(transparent)]
    DnsServer(#[from] crate::dns::server::Error),
    #[error(transparent)]
    Rpc(#[from] crate::rpc::Error),
    #[error(transparent)]
    Deploy(#[from] crate::deploy::Error),
    #[error(transparent)]
    Inference(#[from] crate::inference::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started node. Dropping it does not stop it; call [`Node::shutdown`].
pub struct Node {
    /// The live ACL.
    pub acl: Acl,
    /// Chain sync progress.
    pub status: watch::Receiver<Status>,
    /// Where the HTTP listener is bound.
    pub http_addr: SocketAddr,
    /// The swarm, unless `p2p.enabled` is off.
    pub p2p: Option<P2p>,
    /// Where gRPC listens, unless `rpc.enabled` is off.
    pub rpc_addr: Option<SocketAddr>,
    /// What the gRPC services read, unless `rpc.enabled` is off.
    pub rpc: Option<rpc::Context>,
    /// The DNS publisher, unless `dns.enabled` is off.
    pub dns: Option<dns::Publisher>,
    /// Where the DNS server answers (UDP and TCP), when `dns.server.enabled`.
    pub dns_addr: Option<SocketAddr>,
    /// Resolves other nodes' keys to endpoints over the DHT.
    pub resolver: dns::Resolver,
    /// Workloads, unless `deploy.enabled` is off.
    pub deployer: Option<Deployer>,
    store: Arc<Store>,
    tasks: Tasks,
    grace: std::time::Duration,
}

impl Node {
    /// Starts a node from `config`: checks the chain and the store, then syncs and
    /// serves until [`Node::shutdown`].
    pub async fn start(config: Config) -> Result<Self, Error> {
        let key = NodeKey::load(&config.data_dir.join(NODE_KEY_FILE))?;
        let (provider, deployment) =
            chain::open(&config.chain.rpc_url, None, &config.deployment_path()).await?;
        let store = Arc::new(Store::open(&config.db_path())?);
        store.bind_deployment(&deployment.id())?;

        let registry = metrics::Registry::default();
        let (acl, publisher) = Acl::new(Snapshot::default());
        let (syncer, status) = Syncer::new(
            provider,
            deployment.clone(),
            config.chain.clone(),
            store.clone(),
            publisher,
            &registry,
        )?;
        let git = Git::new(
            config.repos_path(),
            acl.clone(),
            store.clone(),
            &key,
            (config.git.clone(), &deployment.id()),
            config.p2p.replicate.clone(),
            &registry,
        );
        // The syncer has published the stored checkpoint: make its repos exist and
        // agree with their push records before serving.
        git.sync_repos(&acl.snapshot()).await?;
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: config.http.listen,
            source,
        })?;

        let rpc_listener = if config.rpc.enabled {
            Some(rpc::bind(&config.rpc).await?)
        } else {
            None
        };
        let rpc_addr = rpc_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|source| Error::Listen {
                addr: config.rpc.listen,
                source,
            })?;

        let cancel = CancellationToken::new();
        let tasks = Tasks::new(cancel.clone());
        let p2p = if config.p2p.enabled {
            Some(P2p::start(
                &key,
                config.p2p.clone(),
                acl.clone(),
                git.clone(),
                (&tasks, &registry),
            )?)
        } else {
            None
        };
        let dht = dns::client(&config.dns)?;
        // Other operators' packets, kept alive on the DHT (when publishing) and
        // answered from when the DHT has lost them (the DNS server).
        let keeper = dns::keep::Keeper::open(key.public(), acl.clone(), store.clone(), &registry);
        let dns = if config.dns.enabled {
            let sources = dns::Sources {
                keypair: dns::keypair(&key),
                git: Some(dns::advertised_url(
                    config.dns.git_url.as_deref(),
                    http_addr,
                    "dns.git_url",
                )),
                grpc: rpc_addr.map(|a| {
                    dns::advertised_url(config.dns.grpc_url.as_deref(), a, "dns.grpc_url")
                }),
                chain_id: deployment.chain_id,
                acl: acl.clone(),
                p2p: p2p.as_ref().map(P2p::listening),
            };
            let (publisher, task) = dns::Publisher::spawn(
                dht.clone(),
                sources,
                store.clone(),
                config.dns.republish_interval,
                cancel.child_token(),
            );
            tasks.spawn_critical("dns publisher", async move {
                task.await.map_err(|e| e.to_string())
            });
            let task = keeper.spawn(
                dht.clone(),
                dns::keep::probe(&config.dns)?,
                config.dns.keep_interval,
                cancel.child_token(),
            );
            tasks.spawn_critical("dns keeper", async move {
                task.await.map_err(|e| e.to_string())
            });
            Some(publisher)
        } else {
            None
        };
        // Before the syncer runs: a node whose runtime cannot confine workloads stops
        // here, and the first ACL a reader sees is still the stored checkpoint.
        let deployer = if config.deploy.enabled {
            Some(
                Deployer::start(
                    config.deploy.clone(),
                    config.deploy_path(),
                    store.clone(),
                    &key,
                )
                .await?,
            )
        } else {
            None
        };
        let sync_done = CancellationToken::new();
        {
            let (cancel, done) = (cancel.child_token(), sync_done.clone());
            tasks.spawn_critical("chain sync", async move {
                syncer.run(cancel).await;
                done.cancel();
                Ok(())
            });
        }
        {
            let (git, cancel) = (git.clone(), cancel.child_token());
            tasks.spawn_critical("repos", async move {
                tokio::select! {
                    () = git.follow_acl() => {}
                    () = cancel.cancelled() => {}
                }
                Ok(())
            });
        }
        let inference = Inference::start(&config.inference, store.clone(), &registry)?;
        let rpc_metrics = rpc_listener
            .as_ref()
            .map(|_| Arc::new(rpc::Metrics::new(&registry)));
        let health = Health::new(
            (status.clone(), tasks.failure()),
            sync_done,
            health::Parts {
                node: key.public(),
                acl: acl.clone(),
                p2p: p2p.clone(),
                rpc: rpc_listener.is_some(),
                dns: dns.clone(),
                deploy: deployer.is_some(),
                inference: inference.clone(),
            },
            &registry,
        );
        // The DNS server answers from the same DHT client (and its cache).
        let (dns_server, dns_addr) = if config.dns.server.enabled {
            let server = dns::server::Server::new(
                &config.dns.server,
                (dht.clone(), keeper),
                acl.clone(),
                &registry,
            )?;
            let (addr, task) = server
                .bind(config.dns.server.listen, cancel.child_token())
                .await?;
            tasks.spawn_critical("dns server", async move {
                task.await.map_err(|e| e.to_string())
            });
            (Some(server), Some(addr))
        } else {
            (None, None)
        };
        let resolver = dns::Resolver::new(dht);
        if let Some(d) = deployer.clone() {
            let (mut acl, node, cancel) = (acl.clone(), key.public(), cancel.child_token());
            tasks.spawn_critical("deploy enforcer", async move {
                loop {
                    tokio::select! {
                        snapshot = acl.changed() => match snapshot {
                            Ok(s) => d.enforce(&s, &node).await,
                            Err(_) => return Ok(()),
                        },
                        () = cancel.cancelled() => return Ok(()),
                    }
                }
            });
        }
        let (mut rpc_context, mut openai, mut cors) = (None, None, None);
        if let (Some(listener), Some(addr), Some(metrics)) = (rpc_listener, rpc_addr, rpc_metrics) {
            let domain = config.rpc.domain.clone().unwrap_or_else(|| {
                dns::advertised_url(None, addr, "rpc.domain")
                    .trim_start_matches("http://")
                    .to_owned()
            });
            let origins = rpc::origins::Origins::new(
                &config.rpc.origins,
                &rpc::origins::of_listener(http_addr),
                &domain,
            )
            .map_err(rpc::Error::from)?;
            cors = Some(origins.cors());
            let ctx = rpc::Context {
                auth: rpc::Auth::new(
                    &key,
                    acl.clone(),
                    deployment.chain_id,
                    domain,
                    origins,
                    config.rpc.clone(),
                ),
                metrics,
                acl: acl.clone(),
                status: status.clone(),
                node: key.public(),
                chain_id: deployment.chain_id,
                git: git.clone(),
                p2p: p2p.clone(),
                resolver: resolver.clone(),
                health: health.clone(),
                registry: registry.clone(),
                deploy: deployer.clone(),
                keep_alive: config.deploy.keep_alive,
                closing: cancel.child_token(),
                inference: Some(inference.clone()),
            };
            rpc_context = Some(ctx.clone());
            openai = Some(rpc::openai::router(ctx.clone()));
            let (rpc_config, cancel) = (config.rpc.clone(), cancel.child_token());
            tasks.spawn_critical("grpc", async move {
                rpc::serve(listener, rpc_config, ctx, cancel)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        let dashboard = crate::dashboard::router(crate::dashboard::Config {
            grpc_port: rpc_addr.map(|a| a.port()),
            chain_id: deployment.chain_id,
            node: key.public().to_string(),
        });
        let mut extra = match openai {
            Some(openai) => openai.merge(dashboard),
            None => dashboard,
        };
        if let Some(server) = dns_server {
            extra = extra.merge(dns::server::router(server));
        }
        let sources = http::Sources {
            acl: acl.clone(),
            health,
            metrics: registry,
            git: git.clone(),
        };
        {
            let cancel = cancel.child_token();
            tasks.spawn_critical("http", async move {
                http::serve(listener, sources, extra, cors, cancel)
                    .await
                    .map_err(|e| format!("the HTTP listener failed: {e}"))
            });
        }
        info!(
            target: TARGET,
            node_key = %key.public(),
            deployment = %deployment.id(),
            http = %http_addr,
            "node started"
        );
        Ok(Self {
            acl,
            status,
            http_addr,
            p2p,
            rpc_addr,
            rpc: rpc_context,
            dns,
            dns_addr,
            resolver,
            deployer,
            store,
            tasks,
            grace: config.shutdown_grace,
        })
    }

    /// Resolves when the node stops by itself: a critical task failed.
    pub async fn failed(&self) -> Failure {
        let mut failure = self.tasks.failure();
        loop {
            if let Some(f) = failure.borrow_and_update().clone() {
                return f;
            }
            if failure.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the node: no new pushes or calls are accepted, those in flight get up to
    /// `shutdown_grace` to finish, workloads stop, the store is flushed. Returns the
    /// critical task failure that stopped the node, if one did.
    pub async fn shutdown(self) -> Option<Failure> {
        self.tasks.cancel().cancel();
        if let Some(d) = &self.deployer {
            d.shutdown().await;
        }
        self.tasks.wait(self.grace).await;
        if let Err(err) = self.store.flush() {
            warn!(target: TARGET, %err, "cannot flush the store; its write-ahead log has every write");
        }
        let failure = self.tasks.failure().borrow().clone();
        info!(target: TARGET, "node stopped");
        failure
    }

    /// Waits until the ACL reflects at least block `number`.
    pub async fn synced_to(&self, number: u64) -> Arc<Snapshot> {
        let mut acl = self.acl.clone();
        loop {
            let snap = acl.snapshot();
            if snap.block.is_some_and(|b| b.number >= number) {
                return snap;
            }
            if acl.changed().await.is_err() {
                return acl.snapshot();
            }
        }
    }
}
