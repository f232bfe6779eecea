//! NodeService's workload calls: proto ↔ [`deploy`] types, and the log, event and
//! exec streams.

use std::{collections::BTreeMap, time::Duration};

use tokio::{io::AsyncWriteExt, sync::broadcast::error::RecvError};
use tonic::{Status, Streaming};

use super::{
    Caller,
    auth::Need,
    context::{Boxed, Context, async_stream, caller, principal, secs},
    proto,
};
use crate::deploy::{self, Chunk, Deployer};

impl From<deploy::Error> for Status {
    fn from(e: deploy::Error) -> Self {
        use deploy::Error as E;
        let msg = e.to_string();
        match e {
            E::Invalid(_) => Status::invalid_argument(msg),
            E::Unsupported(_) | E::NotRunning(_) => Status::failed_precondition(msg),
            E::NotFound { .. } | E::NoSuch { .. } | E::Missing(_) => Status::not_found(msg),
            E::Capacity(_) => Status::resource_exhausted(msg),
            E::Io { .. } | E::Store(_) => Status::internal(msg),
        }
    }
}

/// The spec of a Deploy call: the structured one or the compose file.
pub(super) fn deploy_spec(r: proto::DeployRequest) -> Result<deploy::Spec, Status> {
    match (r.spec, r.compose.is_empty()) {
        (Some(_), false) => Err(Status::invalid_argument(
            "give either spec or compose, not both",
        )),
        (None, false) => {
            let name = (!r.name.is_empty()).then_some(r.name.as_str());
            Ok(deploy::parse_compose(&r.compose, name)?)
        }
        (spec, true) => spec_of(spec),
    }
}

fn u16_port(service: &str, p: u32) -> Result<u16, Status> {
    u16::try_from(p).map_err(|_| {
        Status::invalid_argument(format!("service `{service}`: port {p} is not 1 to 65535"))
    })
}

/// The caller's spec, with the proto's zero values given their documented defaults.
fn spec_of(p: Option<proto::DeploySpec>) -> Result<deploy::Spec, Status> {
    let p = p.ok_or_else(|| Status::invalid_argument("spec (or compose) is missing"))?;
    let services = p
        .services
        .into_iter()
        .map(|s| {
            let restart = match proto::RestartPolicy::try_from(s.restart) {
                Ok(proto::RestartPolicy::Unspecified | proto::RestartPolicy::OnFailure) => {
                    deploy::Restart::OnFailure
                }
                Ok(proto::RestartPolicy::No) => deploy::Restart::No,
                Ok(proto::RestartPolicy::Always) => deploy::Restart::Always,
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "service `{}`: restart policy {} is not one of NO, ON_FAILURE, ALWAYS",
                        s.name, s.restart
                    )));
                }
            };
            let or = |v: u32, d: u64| Duration::from_secs(if v == 0 { d } else { v.into() });
            let ports = s
                .ports
                .iter()
                .map(|p| {
                    Ok(deploy::Port {
                        host: u16_port(&s.name, p.host)?,
                        container: u16_port(&s.name, p.container)?,
                        udp: p.udp,
                        host_ip: p.host_ip.clone(),
                    })
                })
                .collect::<Result<_, Status>>()?;
            Ok(deploy::ServiceSpec {
                name: s.name,
                command: s.command,
                args: s.args,
                env: s.env.into_iter().collect::<BTreeMap<_, _>>(),
                secret_env: s.secret_env.into_iter().collect(),
                replicas: s.replicas.max(1),
                restart,
                health: s.health_check.map(|h| deploy::HealthCheck {
                    command: h.command,
                    interval: or(h.interval_secs, 10),
                    timeout: or(h.timeout_secs, 5),
                    retries: if h.retries == 0 { 3 } else { h.retries },
                    start_period: Duration::from_secs(h.start_period_secs.into()),
                }),
                resources: s
                    .resources
                    .map(|r| deploy::Resources {
                        memory_bytes: r.memory_bytes,
                        cpu_millis: r.cpu_millis,
                    })
                    .unwrap_or_default(),
                image: s.image,
                entrypoint: s.entrypoint,
                ports,
                volumes: s
                    .volumes
                    .into_iter()
                    .map(|v| deploy::Mount {
                        volume: v.volume,
                        target: v.target,
                        read_only: v.read_only,
                    })
                    .collect(),
                networks: s.networks,
                labels: s.labels.into_iter().collect(),
                depends_on: s
                    .depends_on
                    .into_iter()
                    .map(|d| deploy::Dependency {
                        service: d.service,
                        healthy: d.healthy,
                    })
                    .collect(),
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(deploy::Spec {
        name: p.name,
        services,
        networks: p.networks,
        volumes: p.volumes,
    })
}

pub(super) fn container(s: deploy::Status) -> proto::ContainerStatus {
    let state = match s.state {
        deploy::State::Starting => proto::ContainerState::Starting,
        deploy::State::Running => proto::ContainerState::Running,
        deploy::State::Exited => proto::ContainerState::Exited,
        deploy::State::Stopped => proto::ContainerState::Stopped,
    };
    proto::ContainerStatus {
        deployment: s.deployment,
        service: s.service,
        container: s.container,
        state: state.into(),
        healthy: s.healthy,
        restarts: s.restarts,
        exit_code: s.exit_code,
        started_at: secs(s.started_at),
        pid: s.pid.unwrap_or(0),
    }
}

pub(super) fn owned((o, used_by): (deploy::Owned, Vec<String>)) -> proto::Owned {
    proto::Owned {
        name: o.name,
        owner: o.owner.to_checksum(None),
        used_by,
    }
}

pub(super) fn summary(s: deploy::Summary) -> proto::DeploymentStatus {
    proto::DeploymentStatus {
        deployment: s.id,
        owner: s.owner.to_checksum(None),
        name: s.name,
        containers: s.containers.into_iter().map(container).collect(),
    }
}

fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn log_line(l: &deploy::LogLine) -> proto::LogLine {
    proto::LogLine {
        container: l.container.to_string(),
        stream: match l.stream {
            deploy::Stream::Stdout => proto::Stream::Stdout,
            deploy::Stream::Stderr => proto::Stream::Stderr,
        }
        .into(),
        line: l.line.clone(),
        at: ms(l.at),
        keep_alive: false,
    }
}

fn event(deployment: &str, e: &deploy::Event) -> proto::Event {
    use deploy::EventKind as K;
    let kind = match e.kind {
        K::Started => proto::EventKind::Started,
        K::Exited => proto::EventKind::Exited,
        K::Unhealthy => proto::EventKind::Unhealthy,
        K::Restarted => proto::EventKind::Restarted,
        K::Scaled => proto::EventKind::Scaled,
        K::Stopped => proto::EventKind::Stopped,
    };
    proto::Event {
        deployment: deployment.to_owned(),
        container: e.container.clone(),
        kind: kind.into(),
        exit_code: e.exit_code,
        detail: e.detail.clone(),
        at: ms(e.at),
    }
}

impl Context {
    pub(super) fn deployer(&self) -> Result<&Deployer, Status> {
        self.deploy.as_ref().ok_or_else(|| {
            Status::unavailable("this node does not take deployments (`[deploy] enabled = false`)")
        })
    }

    pub(super) async fn create_owned<T>(
        &self,
        req: &tonic::Request<T>,
        kind: deploy::Kind,
        name: &str,
    ) -> Result<tonic::Response<proto::Owned>, Status> {
        let c = caller(req)?;
        let made = self
            .deployer()?
            .create_owned(&principal(&c), kind, name)
            .await?;
        Ok(tonic::Response::new(owned(made)))
    }

    pub(super) async fn list_owned<T>(
        &self,
        req: &tonic::Request<T>,
        kind: deploy::Kind,
    ) -> Result<tonic::Response<proto::ListOwnedResponse>, Status> {
        let c = caller(req)?;
        let items = self.deployer()?.list_owned(&principal(&c), kind).await?;
        Ok(tonic::Response::new(proto::ListOwnedResponse {
            items: items.into_iter().map(owned).collect(),
        }))
    }

    pub(super) async fn remove_owned<T>(
        &self,
        req: &tonic::Request<T>,
        kind: deploy::Kind,
        name: &str,
    ) -> Result<tonic::Response<proto::RemoveResponse>, Status> {
        let c = caller(req)?;
        self.deployer()?
            .remove_owned(&principal(&c), kind, name)
            .await?;
        Ok(tonic::Response::new(proto::RemoveResponse {}))
    }

    /// Resolves with the reason an open stream of `caller` must end: its stake or
    /// role is gone (checked now and on every ACL change), or the node is stopping.
    /// It holds no part of the node but the ACL and auth.
    pub(super) fn stream_end(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = Status> + Send + 'static {
        let (auth, mut acl, closing, address) = (
            self.auth.clone(),
            self.acl.clone(),
            self.closing.clone(),
            caller.address,
        );
        async move {
            let revoked = async {
                loop {
                    if let Err(r) = auth.check(address, Need::Caller, "a stream") {
                        return r.status;
                    }
                    if acl.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            };
            tokio::select! {
                status = revoked => status,
                () = closing.cancelled() => Status::unavailable("the node is stopping; reconnect in a moment"),
            }
        }
    }

    pub(super) fn logs(
        &self,
        c: Caller,
        r: proto::GetLogsRequest,
    ) -> Result<Boxed<proto::LogLine>, Status> {
        let only = (!r.container.is_empty()).then_some(r.container);
        let journal = self
            .deployer()?
            .journal(&principal(&c), &r.deployment, only.as_deref())?;
        let (past, mut rx) = journal.logs(only.as_deref(), r.tail as usize);
        drop(journal);
        let (end, keep_alive) = (self.stream_end(&c), self.keep_alive);
        Ok(async_stream(move |tx| async move {
            for l in &past {
                if tx.send(Ok(log_line(l))).await.is_err() {
                    return;
                }
            }
            if !r.follow {
                return;
            }
            tokio::pin!(end);
            // A keep-alive goes out when nothing was sent for `keep_alive`.
            let idle = tokio::time::sleep(keep_alive);
            tokio::pin!(idle);
            loop {
                let item = tokio::select! {
                    status = &mut end => Err(status),
                    () = tx.closed() => return,
                    () = &mut idle => Ok(proto::LogLine { keep_alive: true, ..Default::default() }),
                    next = rx.recv() => match next {
                        Ok(l) if only.as_deref().is_none_or(|o| *l.container == *o) => Ok(log_line(&l)),
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => Ok(proto::LogLine {
                            stream: proto::Stream::Stderr.into(),
                            line: format!("[hanzo-node: {n} lines skipped: this reader fell behind]").into_bytes(),
                            ..Default::default()
                        }),
                        // The deployment was removed.
                        Err(RecvError::Closed) => return,
                    },
                };
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + keep_alive);
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        }))
    }

    pub(super) fn events(
        &self,
        c: Caller,
        r: proto::GetEventsRequest,
    ) -> Result<Boxed<proto::Event>, Status> {
        let journal = self
            .deployer()?
            .journal(&principal(&c), &r.deployment, None)?;
        let (past, mut rx) = journal.events();
        drop(journal);
        let end = self.stream_end(&c);
        let id = r.deployment;
        Ok(async_stream(move |tx| async move {
            for e in &past {
                if tx.send(Ok(event(&id, e))).await.is_err() {
                    return;
                }
            }
            tokio::pin!(end);
            loop {
                let item = tokio::select! {
                    status = &mut end => Err(status),
                    () = tx.closed() => return,
                    next = rx.recv() => match next {
                        Ok(e) => Ok(event(&id, &e)),
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return,
                    },
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        }))
    }

    pub(super) async fn exec(
        &self,
        c: Caller,
        mut inbound: Streaming<proto::ExecInput>,
    ) -> Result<Boxed<proto::ExecOutput>, Status> {
        use proto::{exec_input::Input, exec_output::Output};
        let Some(proto::ExecInput {
            input: Some(Input::Start(start)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument(
                "the first ExecInput must be `start` (deployment, container, command)",
            ));
        };
        let mut exec = self
            .deployer()?
            .exec(
                &principal(&c),
                &start.deployment,
                &start.container,
                &start.command,
                start
                    .tty
                    .then(|| start.size.map_or((24, 80), |s| (s.rows, s.cols))),
            )
            .await?;
        let end = self.stream_end(&c);
        Ok(async_stream(move |tx| async move {
            tokio::pin!(end);
            let mut stdin = exec.stdin.take();
            let mut inbound_open = true;
            loop {
                let item = tokio::select! {
                    status = &mut end => Err(status),
                    () = tx.closed() => return,
                    input = inbound.message(), if inbound_open => {
                        match input {
                            Ok(Some(proto::ExecInput { input: Some(Input::Stdin(bytes)) })) => {
                                if let Some(w) = stdin.as_mut()
                                    && (w.write_all(&bytes).await.is_err() || w.flush().await.is_err())
                                {
                                    stdin = None;
                                }
                            }
                            Ok(Some(proto::ExecInput { input: Some(Input::StdinEof(true)) })) => stdin = None,
                            Ok(Some(proto::ExecInput { input: Some(Input::Resize(size)) })) => {
                                // Only runtimes with terminals take it.
                                if let Some(r) = &exec.resize {
                                    let _ = r.send((size.rows, size.cols));
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => {
                                inbound_open = false;
                                stdin = None;
                            }
                        }
                        continue;
                    }
                    chunk = exec.output.recv() => match chunk {
                        Some(Chunk::Stdout(b)) => Ok(Output::Stdout(b)),
                        Some(Chunk::Stderr(b)) => Ok(Output::Stderr(b)),
                        Some(Chunk::Exit(code)) => {
                            let _ = tx.send(Ok(proto::ExecOutput { output: Some(Output::ExitCode(code)) })).await;
                            return;
                        }
                        None => return,
                    },
                };
                let end = item.is_err();
                let msg = item.map(|o| proto::ExecOutput { output: Some(o) });
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn request() -> proto::DeployRequest {
        proto::DeployRequest {
            spec: Some(proto::DeploySpec {
                name: "web".into(),
                services: vec![proto::ServiceSpec {
                    name: "api".into(),
                    command: "sh".into(),
                    args: vec!["-c".into(), "echo hi".into()],
                    env: [("GREETING".into(), "hello".into())].into(),
                    secret_env: [("TOKEN".into(), "s3cret".into())].into(),
                    replicas: 2,
                    restart: proto::RestartPolicy::Always.into(),
                    health_check: Some(proto::HealthCheck {
                        command: vec!["true".into()],
                        interval_secs: 2,
                        timeout_secs: 1,
                        retries: 2,
                        start_period_secs: 0,
                    }),
                    resources: Some(proto::Resources {
                        memory_bytes: 1 << 26,
                        cpu_millis: 0,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_seed_request_is_a_valid_spec() {
        let s = deploy_spec(request()).unwrap();
        s.validate().unwrap();
        assert_eq!(s.replicas(), 2);
    }

    proptest! {
        /// Bytes off the wire: a DeployRequest decodes, becomes a spec and is checked,
        /// or is refused with INVALID_ARGUMENT; nothing panics.
        #[test]
        fn mutated_deploy_requests_are_specs_or_errors(bytes in crate::fuzz::mutated(request().encode_to_vec())) {
            if let Ok(req) = proto::DeployRequest::decode(&bytes[..]) {
                match deploy_spec(req) {
                    Ok(s) => { let _ = s.validate(); }
                    Err(status) => prop_assert_eq!(status.code(), tonic::Code::InvalidArgument),
                }
            }
        }
    }
}
