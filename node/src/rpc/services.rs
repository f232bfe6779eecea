//! The gRPC services. Every call has passed the auth layer; handlers that need the
//! caller read the [`Caller`] it attached.

use std::time::Duration;

use tonic::{Request, Response, Status, Streaming};

use super::{
    context::{Boxed, Context, async_stream, caller, principal, secs},
    proto, workloads,
};
use crate::{
    acl::{Role, Snapshot},
    unix_now,
};

fn role(r: Role) -> proto::Role {
    match r {
        Role::Anonymous => proto::Role::Anonymous,
        Role::Caller => proto::Role::Caller,
        Role::OperatorPeer => proto::Role::OperatorPeer,
        Role::Admin => proto::Role::Admin,
    }
}

impl Context {
    fn chain_sync(&self) -> proto::ChainSync {
        let st = self.status.borrow().clone();
        let snap = self.acl.snapshot();
        proto::ChainSync {
            chain_id: self.chain_id,
            block: st.synced.unwrap_or(0),
            head: st.head,
            synced: st.is_synced(),
            block_time: secs(snap.block_time),
        }
    }

    fn health(&self) -> proto::GetHealthResponse {
        let chain = self.chain_sync();
        let (serving, reason) = match self.health.not_ready() {
            Some(reason) => (proto::ServingStatus::NotServing, reason),
            None => (proto::ServingStatus::Serving, String::new()),
        };
        proto::GetHealthResponse {
            status: serving.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            chain: Some(chain),
            peers: self
                .p2p
                .as_ref()
                .map_or(0, |p| u32::try_from(p.peers().len()).unwrap_or(u32::MAX)),
            node_key: self.node.to_string(),
            reason,
        }
    }

    /// A sign-in refusal, counted by reason as the layer counts its own.
    fn refused(&self, refusal: super::auth::Refusal) -> Status {
        self.metrics.auth_failure(refusal.reason);
        refusal.status
    }
}

#[tonic::async_trait]
impl proto::node_service_server::NodeService for Context {
    async fn get_health(
        &self,
        _: Request<proto::GetHealthRequest>,
    ) -> Result<Response<proto::GetHealthResponse>, Status> {
        Ok(Response::new(self.health()))
    }

    async fn get_status(
        &self,
        req: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let c = caller(&req)?;
        let snap = self.acl.snapshot();
        let repos = snap
            .state
            .repos
            .keys()
            .filter(|id| self.git.replicates(&snap, **id))
            .count();
        Ok(Response::new(proto::GetStatusResponse {
            health: Some(self.health()),
            address: c.address.to_checksum(None),
            role: role(c.role).into(),
            stake_wei: c.stake.to_string(),
            rate_limit_per_sec: c.rate,
            repos: u32::try_from(repos).unwrap_or(u32::MAX),
            peers: self
                .p2p
                .as_ref()
                .map(|p| p.peers().iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        }))
    }

    type GetMetricsStream = Boxed<proto::MetricsSnapshot>;

    async fn get_metrics(
        &self,
        req: Request<proto::GetMetricsRequest>,
    ) -> Result<Response<Self::GetMetricsStream>, Status> {
        let c = caller(&req)?;
        let every = Duration::from_secs(match req.get_ref().interval_secs {
            0 => 5,
            n => u64::from(n.clamp(1, 3600)),
        });
        let (registry, end) = (self.registry.clone(), self.stream_end(&c));
        let stream = async_stream(move |tx| async move {
            tokio::pin!(end);
            let mut tick = tokio::time::interval(every);
            loop {
                let item = tokio::select! {
                    // A caller whose stake dropped loses the stream too.
                    status = &mut end => Err(status),
                    () = tx.closed() => return,
                    _ = tick.tick() => registry
                        .encode()
                        .map(|text| proto::MetricsSnapshot {
                            prometheus_text: text,
                            at: secs(unix_now()),
                        })
                        .map_err(|e| Status::internal(e.to_string())),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn deploy(
        &self,
        req: Request<proto::DeployRequest>,
    ) -> Result<Response<proto::DeployResponse>, Status> {
        let c = caller(&req)?;
        let spec = workloads::deploy_spec(req.into_inner())?;
        let done = self.deployer()?.deploy(c.address, spec).await?;
        Ok(Response::new(proto::DeployResponse {
            status: Some(workloads::summary(done)),
        }))
    }

    async fn stop(
        &self,
        req: Request<proto::DeploymentRef>,
    ) -> Result<Response<proto::DeploymentStatus>, Status> {
        let c = caller(&req)?;
        let done = self
            .deployer()?
            .stop(&principal(&c), &req.get_ref().deployment)
            .await?;
        Ok(Response::new(workloads::summary(done)))
    }

    async fn remove(
        &self,
        req: Request<proto::DeploymentRef>,
    ) -> Result<Response<proto::RemoveResponse>, Status> {
        let c = caller(&req)?;
        self.deployer()?
            .remove(&principal(&c), &req.get_ref().deployment)
            .await?;
        Ok(Response::new(proto::RemoveResponse {}))
    }

    async fn create_volume(
        &self,
        req: Request<proto::VolumeRef>,
    ) -> Result<Response<proto::Owned>, Status> {
        self.create_owned(&req, crate::deploy::Kind::Volume, &req.get_ref().name)
            .await
    }

    async fn list_volumes(
        &self,
        req: Request<proto::ListOwnedRequest>,
    ) -> Result<Response<proto::ListOwnedResponse>, Status> {
        self.list_owned(&req, crate::deploy::Kind::Volume).await
    }

    async fn remove_volume(
        &self,
        req: Request<proto::VolumeRef>,
    ) -> Result<Response<proto::RemoveResponse>, Status> {
        self.remove_owned(&req, crate::deploy::Kind::Volume, &req.get_ref().name)
            .await
    }

    async fn create_network(
        &self,
        req: Request<proto::NetworkRef>,
    ) -> Result<Response<proto::Owned>, Status> {
        self.create_owned(&req, crate::deploy::Kind::Network, &req.get_ref().name)
            .await
    }

    async fn list_networks(
        &self,
        req: Request<proto::ListOwnedRequest>,
    ) -> Result<Response<proto::ListOwnedResponse>, Status> {
        self.list_owned(&req, crate::deploy::Kind::Network).await
    }

    async fn remove_network(
        &self,
        req: Request<proto::NetworkRef>,
    ) -> Result<Response<proto::RemoveResponse>, Status> {
        self.remove_owned(&req, crate::deploy::Kind::Network, &req.get_ref().name)
            .await
    }

    async fn scale(
        &self,
        req: Request<proto::ScaleRequest>,
    ) -> Result<Response<proto::DeploymentStatus>, Status> {
        let c = caller(&req)?;
        let r = req.get_ref();
        let done = self
            .deployer()?
            .scale(&principal(&c), &r.deployment, &r.service, r.replicas)
            .await?;
        Ok(Response::new(workloads::summary(done)))
    }

    async fn list_containers(
        &self,
        req: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let c = caller(&req)?;
        let d = &req.get_ref().deployment;
        let all = self
            .deployer()?
            .list(&principal(&c), (!d.is_empty()).then_some(d.as_str()))?;
        Ok(Response::new(proto::ListContainersResponse {
            containers: all
                .into_iter()
                .flat_map(|s| s.containers)
                .map(workloads::container)
                .collect(),
        }))
    }

    async fn inspect_container(
        &self,
        req: Request<proto::ContainerRef>,
    ) -> Result<Response<proto::ContainerStatus>, Status> {
        let c = caller(&req)?;
        let r = req.get_ref();
        let status = self
            .deployer()?
            .inspect(&principal(&c), &r.deployment, &r.container)?;
        Ok(Response::new(workloads::container(status)))
    }

    type GetLogsStream = Boxed<proto::LogLine>;

    async fn get_logs(
        &self,
        req: Request<proto::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(self.logs(c, req.into_inner())?))
    }

    type GetEventsStream = Boxed<proto::Event>;

    async fn get_events(
        &self,
        req: Request<proto::GetEventsRequest>,
    ) -> Result<Response<Self::GetEventsStream>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(self.events(c, req.into_inner())?))
    }

    type ExecInContainerStream = Boxed<proto::ExecOutput>;

    async fn exec_in_container(
        &self,
        req: Request<Streaming<proto::ExecInput>>,
    ) -> Result<Response<Self::ExecInContainerStream>, Status> {
        let c = caller(&req)?;
        Ok(Response::new(self.exec(c, req.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl proto::auth_service_server::AuthService for Context {
    async fn get_nonce(
        &self,
        _: Request<proto::GetNonceRequest>,
    ) -> Result<Response<proto::GetNonceResponse>, Status> {
        let (nonce, expires) = self.auth.nonce(unix_now())?;
        Ok(Response::new(proto::GetNonceResponse {
            nonce,
            domain: self.auth.domain().to_owned(),
            uri: self.auth.uri().to_owned(),
            chain_id: self.auth.chain_id(),
            expires_at: secs(expires),
        }))
    }

    async fn sign_in(
        &self,
        req: Request<proto::SignInRequest>,
    ) -> Result<Response<proto::SignInResponse>, Status> {
        let r = req.get_ref();
        let session = self
            .auth
            .sign_in(&r.message, &r.signature, unix_now())
            .map_err(|r| self.refused(r))?;
        Ok(Response::new(session_response(session)))
    }

    async fn refresh(
        &self,
        req: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::SignInResponse>, Status> {
        let session = self
            .auth
            .refresh(&req.get_ref().token, unix_now())
            .map_err(|r| self.refused(r))?;
        Ok(Response::new(session_response(session)))
    }
}

fn session_response(s: super::auth::Session) -> proto::SignInResponse {
    proto::SignInResponse {
        token: s.token,
        expires_at: secs(s.expires_at),
        address: s.address.to_checksum(None),
        role: role(s.role).into(),
        abilities: if s.scope.is_all() {
            Vec::new()
        } else {
            s.scope.names().into_iter().map(str::to_owned).collect()
        },
        token_budget: s.scope.token_budget.unwrap_or(0),
    }
}

fn operator_status(
    snap: &Snapshot,
    address: alloy::primitives::Address,
) -> Option<proto::OperatorStatus> {
    let op = snap.state.operators.get(&address)?;
    Some(proto::OperatorStatus {
        operator: address.to_checksum(None),
        node_key: op.node_key.to_string(),
        endpoint: op.endpoint.clone(),
        stake_wei: op.balance.stake.to_string(),
        unbonding_wei: op.balance.unbonding.to_string(),
        unbonding_until: 0,
        active: snap.is_operator(&op.node_key),
        transaction: String::new(),
    })
}

#[tonic::async_trait]
impl proto::operator_service_server::OperatorService for Context {
    async fn register_operator(
        &self,
        _: Request<proto::RegisterOperatorRequest>,
    ) -> Result<Response<proto::OperatorStatus>, Status> {
        Err(no_operator_key())
    }

    async fn get_operator_status(
        &self,
        req: Request<proto::GetOperatorStatusRequest>,
    ) -> Result<Response<proto::OperatorStatus>, Status> {
        let snap = self.acl.snapshot();
        let wanted = &req.get_ref().operator;
        let address = if wanted.is_empty() {
            *snap
                .state
                .operator_by_node(&self.node)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "node key {} is not registered by any operator yet",
                        self.node
                    ))
                })?
                .0
        } else {
            wanted
                .parse()
                .map_err(|e| Status::invalid_argument(format!("operator {wanted:?}: {e}")))?
        };
        operator_status(&snap, address)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("{address} is not a registered operator")))
    }

    async fn update_stake(
        &self,
        _: Request<proto::UpdateStakeRequest>,
    ) -> Result<Response<proto::OperatorStatus>, Status> {
        Err(no_operator_key())
    }
}

fn no_operator_key() -> Status {
    Status::failed_precondition(
        "this node sends no transactions over gRPC yet; use `hanzo-node operator register` / `operator deposit` / `operator unstake`",
    )
}

#[tonic::async_trait]
impl proto::repo_service_server::RepoService for Context {
    async fn list_repos(
        &self,
        req: Request<proto::ListReposRequest>,
    ) -> Result<Response<proto::ListReposResponse>, Status> {
        let c = caller(&req)?;
        let snap = self.acl.snapshot();
        let key = crate::acl::Key::Eth(c.address);
        let handle = |id: &u64| {
            snap.state
                .identities
                .get(id)
                .map_or_else(|| format!("#{id}"), |i| i.handle.clone())
        };
        let repos = snap
            .state
            .repos
            .iter()
            // Private repos only to their members (by an Ethereum key of their identity).
            .filter(|(_, r)| snap.may_read(Some(&key), &r.name).is_ok())
            .map(|(id, r)| proto::RepoInfo {
                id: *id,
                name: r.name.clone(),
                owner: handle(&r.owner_identity),
                private: r.private,
                replicated: self.git.replicates(&snap, *id),
                committers: r.committers.iter().map(handle).collect(),
                readers: r.readers.iter().map(handle).collect(),
            })
            .collect();
        Ok(Response::new(proto::ListReposResponse { repos }))
    }

    async fn get_refs(
        &self,
        req: Request<proto::GetRefsRequest>,
    ) -> Result<Response<proto::GetRefsResponse>, Status> {
        let c = caller(&req)?;
        let snap = self.acl.snapshot();
        let name = &req.get_ref().repo;
        let (id, _) = snap
            .repo(name)
            .map_err(|e| Status::not_found(e.to_string()))?;
        snap.may_read(Some(&crate::acl::Key::Eth(c.address)), name)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        if !self.git.replicates(&snap, id) {
            return Err(Status::not_found(format!(
                "repo {name} is not replicated on this node"
            )));
        }
        let refs = self
            .git
            .ref_views(id)
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .map(|r| proto::RefInfo {
                name: r.name,
                target: r.target,
                pusher: r.handle,
                key: r.key,
                cert_sha256: r.cert,
                pushed_at: secs(r.timestamp),
            })
            .collect();
        Ok(Response::new(proto::GetRefsResponse { refs }))
    }
}

#[tonic::async_trait]
impl proto::chain_service_server::ChainService for Context {
    async fn get_sync_status(
        &self,
        _: Request<proto::GetSyncStatusRequest>,
    ) -> Result<Response<proto::ChainSync>, Status> {
        Ok(Response::new(self.chain_sync()))
    }

    async fn list_operators(
        &self,
        _: Request<proto::ListOperatorsRequest>,
    ) -> Result<Response<proto::ListOperatorsResponse>, Status> {
        let snap = self.acl.snapshot();
        let operators = snap
            .state
            .operators
            .iter()
            .map(|(a, op)| proto::OperatorEntry {
                operator: a.to_checksum(None),
                node_key: op.node_key.to_string(),
                endpoint: op.endpoint.clone(),
                stake_wei: op.balance.stake.to_string(),
                active: snap.is_operator(&op.node_key),
            })
            .collect();
        Ok(Response::new(proto::ListOperatorsResponse { operators }))
    }

    async fn resolve_node(
        &self,
        req: Request<proto::ResolveNodeRequest>,
    ) -> Result<Response<proto::ResolveNodeResponse>, Status> {
        let snap = self.acl.snapshot();
        let r = self
            .resolver
            .resolve(&snap, &req.get_ref().target)
            .await
            .map_err(|e| match e {
                crate::dns::Error::Target(m) => Status::invalid_argument(m),
                crate::dns::Error::NotFound(_) => Status::not_found(e.to_string()),
                e => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(proto::ResolveNodeResponse {
            node_key: r.node_key.to_string(),
            operator: r.operator.to_checksum(None),
            git: r.endpoints.git.unwrap_or_default(),
            grpc: r.endpoints.grpc.unwrap_or_default(),
            p2p: r.endpoints.p2p,
            chain_id: r.endpoints.chain_id,
        }))
    }
}
