//! The container runtime: each replica is a container on the local Docker Engine
//! (through its API, with bollard), named `hanzo-<deployment>-<container>` so that a
//! node restarted after a crash replaces what it left running.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bollard::{
    models::{ContainerCreateBody, ExecConfig, HostConfig},
    query_parameters::{
        CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
        ResizeExecOptions, StopContainerOptions,
    },
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    Error,
    journal::{Journal, Stream},
    runtime::{Chunk, Exec, Instance, Runtime, Target},
    spec::ServiceSpec,
};

/// Replicas as containers on the local engine.
#[derive(Debug, Clone)]
pub struct Docker {
    api: bollard::Docker,
}

fn engine(e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!(
        "the Docker engine: {e}; start it, or use `[deploy] runtime = \"process\"`"
    ))
}

impl Docker {
    /// Connects to the local engine (`DOCKER_HOST`, else `/var/run/docker.sock`) and
    /// checks it answers.
    pub async fn connect() -> Result<Self, Error> {
        let api = bollard::Docker::connect_with_local_defaults().map_err(engine)?;
        api.ping().await.map_err(engine)?;
        Ok(Self { api })
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
        let mut cmd = vec![s.command.clone()];
        cmd.extend(s.args.iter().cloned());
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
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            cmd: Some(cmd),
            env: Some(env),
            labels: Some(HashMap::from([(
                "hanzo.deployment".to_owned(),
                t.deployment.clone(),
            )])),
            host_config: Some(HostConfig {
                memory: (s.resources.memory_bytes > 0)
                    .then(|| i64::try_from(s.resources.memory_bytes).unwrap_or(i64::MAX)),
                nano_cpus: (s.resources.cpu_millis > 0)
                    .then(|| i64::from(s.resources.cpu_millis) * 1_000_000),
                ..Default::default()
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
        Ok(Box::new(Container {
            api: self.api.clone(),
            name,
            exited: None,
        }))
    }

    async fn exec(&self, t: &Target, command: &[String], tty: bool) -> Result<Exec, Error> {
        let name = Self::name(t);
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
                        let size = ResizeExecOptions {
                            h: i32::try_from(rows).unwrap_or(i32::MAX),
                            w: i32::try_from(cols).unwrap_or(i32::MAX),
                        };
                        let _ = api.resize_exec(&id, size).await;
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

    async fn remove(&self, _deployment: &str) -> Result<(), Error> {
        // Containers are removed as their replicas stop.
        Ok(())
    }
}

struct Container {
    api: bollard::Docker,
    name: String,
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
        None
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
