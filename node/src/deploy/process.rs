//! The embedded runtime: each replica is a supervised local process, confined by the
//! [`Sandbox`] to the service's own directory, with only the environment the spec
//! gives it, under its limits.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use alloy::primitives::Address;
use nix::{sys::signal::Signal, unistd::Pid};
use sha2::{Digest, Sha256};
use tokio::{process::Command, sync::mpsc};
use tracing::{debug, warn};

use super::{
    Error,
    cgroup::{Cgroup, Limits},
    journal::{Journal, MAX_LINE, Stream, read_lines},
    runtime::{Chunk, Exec, Instance, Kind, Owned, Runtime, Target},
    sandbox::{Sandbox, Stat, sandbox_init, which, workload_pids},
    spec::ServiceSpec,
};
use crate::config::DeployConfig;

/// Pid files of a deployment's replicas, in `<root>/<deployment>/`; a service name
/// never starts with a dot, so no work dir is this.
const RUN: &str = ".run";
/// Callers' volumes, in `<root>/.volumes/<owner>/<name>`.
const VOLUMES: &str = ".volumes";

/// Local processes under `<root>/<deployment>/<service>`.
#[derive(Debug)]
pub struct Process {
    root: PathBuf,
    sandbox: Sandbox,
    /// Names this node's control groups: several nodes may share a host.
    cgroup_prefix: String,
    defaults: Limits,
}

impl Process {
    /// Uses `root` for working directories, first killing process groups a previous
    /// run of the node left behind (it was killed before it could stop them); refuses
    /// when workloads cannot be sandboxed (unless the config says not to).
    pub async fn new(root: PathBuf, config: &DeployConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&root).map_err(|source| Error::Io {
            what: format!("create {}", root.display()),
            source,
        })?;
        let sandbox = Sandbox::new(config, &root.join(".sandbox-trial")).await?;
        let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
        let cgroup_prefix = format!("h{}", hex::encode(&digest[..6]));
        reap_orphans(&root);
        if let Some(cg) = sandbox.cgroups() {
            cg.remove_all(&cgroup_prefix);
        }
        Ok(Self {
            root,
            sandbox,
            cgroup_prefix,
            defaults: Limits {
                memory_bytes: config.replica_memory_bytes,
                pids: config.replica_pids,
                open_files: config.replica_open_files,
                cpu_millis: 0,
            },
        })
    }

    fn dir(&self, t: &Target) -> PathBuf {
        self.root.join(&t.deployment).join(&t.service.name)
    }

    /// Where `owner`'s volume `name` lives: beside the deployments, outliving them.
    fn volume_dir(&self, owner: &Address, name: &str) -> PathBuf {
        self.root.join(VOLUMES).join(hex::encode(owner)).join(name)
    }

    fn pidfile(&self, t: &Target) -> PathBuf {
        self.root
            .join(&t.deployment)
            .join(RUN)
            .join(format!("{}.pid", t.container))
    }

    fn limits(&self, s: &ServiceSpec) -> Limits {
        let r = &s.resources;
        Limits {
            memory_bytes: match r.memory_bytes {
                0 => self.defaults.memory_bytes,
                n => n,
            },
            cpu_millis: r.cpu_millis,
            ..self.defaults
        }
    }

    /// The replica's control group, made if need be; none where limits are rlimits.
    fn cgroup(&self, t: &Target) -> Result<Option<Cgroup>, Error> {
        let Some(cgroups) = self.sandbox.cgroups() else {
            return Ok(None);
        };
        let name = format!("{}-{}-{}", self.cgroup_prefix, t.deployment, t.container);
        cgroups
            .create(&name, &self.limits(&t.service))
            .map(Some)
            .map_err(|source| Error::Io {
                what: format!("limit {} in its control group", t.container),
                source,
            })
    }

    /// The namespace init of `t`'s running sandbox, if it runs (from its pid file).
    fn running_sandbox(&self, t: &Target) -> Option<u32> {
        if !self.sandbox.enabled() {
            return None;
        }
        sandbox_init(still_running(&self.pidfile(t))?)
    }

    /// `program args` in the replica's sandbox (a new one, or inside the running one
    /// with `enter`), directory, environment and cgroup.
    fn command(
        &self,
        t: &Target,
        enter: Option<u32>,
        cgroup: Option<&Cgroup>,
        program: &str,
        args: &[String],
    ) -> Command {
        let s = &t.service;
        let dir = self.dir(t);
        let volumes: Vec<_> = s
            .volumes
            .iter()
            .map(|m| (self.volume_dir(&t.owner, &m.volume), m))
            .collect();
        let mut cmd = self.sandbox.command(
            &dir,
            &volumes,
            enter,
            cgroup,
            &self.limits(s),
            program,
            args,
        );
        cmd.env_clear()
            .env("PATH", self.sandbox.path())
            .env("HOME", self.sandbox.work_dir(&dir))
            .env("HANZO_DEPLOYMENT", &t.deployment)
            .env("HANZO_SERVICE", &s.name)
            .env("HANZO_CONTAINER", &*t.container)
            .env("HANZO_REPLICA", t.index.to_string())
            .envs(&s.env)
            .envs(&s.secret_env)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn prepare(&self, t: &Target) -> Result<Option<Cgroup>, Error> {
        let io = |dir: &Path, what: &str, source| Error::Io {
            what: format!("{what} {}", dir.display()),
            source,
        };
        for dir in [self.dir(t), self.root.join(&t.deployment).join(RUN)] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| io(&dir, "create", e))?;
        }
        let owned = std::iter::once(self.dir(t)).chain(
            t.service
                .volumes
                .iter()
                .map(|m| self.volume_dir(&t.owner, &m.volume)),
        );
        for dir in owned {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| io(&dir, "create", e))?;
            self.sandbox.own(&dir).map_err(|e| io(&dir, "chown", e))?;
        }
        self.cgroup(t)
    }
}

fn no_networks() -> Error {
    Error::Unsupported(
        "networks need a container runtime; this node runs the process runtime (`[deploy] runtime = \"docker\"` on a node with Docker has them)".into(),
    )
}

fn spawn_error(t: &Target, program: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: format!("start `{program}` for {}", t.container),
        source,
    }
}

#[async_trait::async_trait]
impl Runtime for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn check(&self, s: &ServiceSpec) -> Result<(), Error> {
        let unsupported = |what: &str| {
            Err(Error::Unsupported(format!(
                "service `{}`: {what}; this node runs the process runtime (`[deploy] runtime = \"docker\"` on a node with Docker does)",
                s.name
            )))
        };
        if !s.image.is_empty() {
            return unsupported("an image needs a container runtime");
        }
        if !s.ports.is_empty() {
            return unsupported(
                "publishing ports needs a container runtime (under `[deploy] network = \"host\"` a process listens on the host's ports itself)",
            );
        }
        if s.networks.iter().any(|n| n != "default") {
            return unsupported("networks need a container runtime");
        }
        if !s.entrypoint.is_empty() {
            return unsupported("an entrypoint belongs to an image; give the command");
        }
        if !s.volumes.is_empty() && !self.sandbox.enabled() {
            return unsupported(
                "volumes are mounted by the sandbox, which `[deploy] insecure_no_sandbox` turns off",
            );
        }
        if s.resources.cpu_millis != 0 && self.sandbox.cgroups().is_none() {
            return unsupported(
                "a CPU limit needs control groups, which this node cannot use; leave cpu_millis at 0",
            );
        }
        let path = self.sandbox.path();
        if !s.command.contains('/') && which(&s.command, &path).is_none() {
            let whose = if self.sandbox.enabled() {
                "the sandbox's"
            } else {
                "the node's"
            };
            return Err(Error::Invalid(format!(
                "service `{}`: command `{}` is not on {whose} PATH ({path})",
                s.name, s.command
            )));
        }
        Ok(())
    }

    async fn start(&self, t: &Target, journal: Arc<Journal>) -> Result<Box<dyn Instance>, Error> {
        let cgroup = self.prepare(t).await?;
        let mut child = self
            .command(
                t,
                None,
                cgroup.as_ref(),
                &t.service.command,
                &t.service.args,
            )
            .spawn()
            .map_err(|e| spawn_error(t, &t.service.command, e))?;
        let pid = child.id();
        for (out, stream) in [
            (child.stdout.take().map(boxed), Stream::Stdout),
            (child.stderr.take().map(boxed), Stream::Stderr),
        ] {
            if let Some(out) = out {
                let (journal, container) = (journal.clone(), t.container.clone());
                tokio::spawn(read_lines(out, move |line| {
                    journal.log(&container, stream, line);
                }));
            }
        }
        let pidfile = self.pidfile(t);
        if let Some((pid, start)) = pid.and_then(|p| Some((p, Stat::read(p)?.start)))
            && let Err(err) = std::fs::write(&pidfile, format!("{pid} {start}"))
        {
            warn!(target: super::TARGET, %err, path = %pidfile.display(), "cannot record the pid");
        }
        Ok(Box::new(Child {
            child,
            pid,
            pidfile,
            exited: None,
            limits: self.limits(&t.service),
            cgroup,
            sandboxed: self.sandbox.enabled(),
            why: None,
        }))
    }

    async fn exec(
        &self,
        t: &Target,
        command: &[String],
        tty: Option<(u32, u32)>,
    ) -> Result<Exec, Error> {
        if tty.is_some() {
            return Err(Error::Unsupported(
                "the process runtime has no terminals; exec without tty".into(),
            ));
        }
        let Some((program, args)) = command.split_first() else {
            return Err(Error::Invalid("exec needs a command".into()));
        };
        let cgroup = self.prepare(t).await?;
        // Inside the replica's sandbox while it runs (its loopback, processes and
        // files), else in a sandbox of its own over the same dir.
        let enter = self.running_sandbox(t);
        let mut child = self
            .command(t, enter, cgroup.as_ref(), program, args)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(t, program, e))?;
        let (tx, rx) = mpsc::channel(64);
        let mut readers = Vec::new();
        for (out, kind) in [
            (
                child.stdout.take().map(boxed),
                Chunk::Stdout as fn(Vec<u8>) -> Chunk,
            ),
            (child.stderr.take().map(boxed), Chunk::Stderr),
        ] {
            if let Some(out) = out {
                readers.push(tokio::spawn(pump(out, tx.clone(), kind)));
            }
        }
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>);
        let pid = child.id();
        tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    // Whatever the command left running in its group goes too, so its
                    // pipes close and the readers finish.
                    kill_group(pid, Signal::SIGKILL);
                    for r in readers {
                        let _ = r.await;
                    }
                    let code = status.map_or(-1, |s| code(&s));
                    let _ = tx.send(Chunk::Exit(code)).await;
                }
                () = tx.closed() => kill_group(pid, Signal::SIGKILL),
            }
        });
        Ok(Exec {
            stdin,
            output: rx,
            resize: None,
        })
    }

    async fn create(&self, kind: Kind, owner: &Address, name: &str) -> Result<(), Error> {
        if kind == Kind::Network {
            return Err(no_networks());
        }
        let dir = self.volume_dir(owner, name);
        let io = |what: &str, source| Error::Io {
            what: format!("{what} {}", dir.display()),
            source,
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io("create", e))?;
        self.sandbox.own(&dir).map_err(|e| io("chown", e))
    }

    async fn list(&self, kind: Kind, owner: Option<&Address>) -> Result<Vec<Owned>, Error> {
        if kind == Kind::Network {
            return Err(no_networks());
        }
        let mut found = Vec::new();
        let Ok(owners) = std::fs::read_dir(self.root.join(VOLUMES)) else {
            return Ok(found);
        };
        for o in owners.flatten() {
            let Ok(who) = o.file_name().to_string_lossy().parse::<Address>() else {
                continue;
            };
            if owner.is_some_and(|a| *a != who) {
                continue;
            }
            for v in std::fs::read_dir(o.path()).into_iter().flatten().flatten() {
                found.push(Owned {
                    owner: who,
                    name: v.file_name().to_string_lossy().into_owned(),
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    async fn delete(&self, kind: Kind, owner: &Address, name: &str) -> Result<(), Error> {
        if kind == Kind::Network {
            return Err(no_networks());
        }
        let dir = self.volume_dir(owner, name);
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(|source| Error::Io {
                what: format!("remove {}", dir.display()),
                source,
            })
    }

    async fn remove(&self, deployment: &str) -> Result<(), Error> {
        let dir = self.root.join(deployment);
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                what: format!("remove {}", dir.display()),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

fn boxed<R: tokio::io::AsyncRead + Send + Unpin + 'static>(
    r: R,
) -> Box<dyn tokio::io::AsyncRead + Send + Unpin> {
    Box::new(r)
}

async fn pump(
    mut out: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    tx: mpsc::Sender<Chunk>,
    kind: fn(Vec<u8>) -> Chunk,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; MAX_LINE];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 || tx.send(kind(buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

struct Child {
    child: tokio::process::Child,
    pid: Option<u32>,
    pidfile: PathBuf,
    exited: Option<i32>,
    limits: Limits,
    cgroup: Option<Cgroup>,
    sandboxed: bool,
    /// Which limits stopped it, once it exited.
    why: Option<String>,
}

impl Child {
    fn exited(&mut self, status: std::io::Result<ExitStatus>) -> i32 {
        let c = status.map_or(-1, |s| code(&s));
        kill_group(self.pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(&self.pidfile);
        if let Some(cg) = self.cgroup.take() {
            let hit = cg.limits_hit(&self.limits);
            self.why = (!hit.is_empty()).then(|| hit.join("; "));
            cg.remove();
        }
        self.exited = Some(c);
        c
    }
}

#[async_trait::async_trait]
impl Instance for Child {
    fn pid(&self) -> Option<u32> {
        self.pid
    }

    async fn wait(&mut self) -> i32 {
        if let Some(c) = self.exited {
            return c;
        }
        let status = self.child.wait().await;
        self.exited(status)
    }

    fn limits_hit(&self) -> Option<String> {
        self.why.clone()
    }

    async fn stop(&mut self, grace: Duration) -> i32 {
        if let Some(c) = self.exited {
            return c;
        }
        // SIGTERM to the workload's processes; the sandbox's own would end it at once.
        if let Some(sid) = self.pid {
            for pid in workload_pids(sid, self.sandboxed) {
                kill_one(pid, Signal::SIGTERM);
            }
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                debug!(target: super::TARGET, pid = ?self.pid, "still running after the grace period; killing");
                kill_group(self.pid, Signal::SIGKILL);
                self.child.wait().await
            }
        };
        self.exited(status)
    }
}

fn code(s: &ExitStatus) -> i32 {
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

fn kill_group(pid: Option<u32>, signal: Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // ESRCH (already gone) is the usual answer after an exit.
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), signal);
    }
}

fn kill_one(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
    }
}

/// The pid recorded in pid file `file` (`pid starttime`), while that process — not a
/// later one given the same pid — still runs.
fn still_running(file: &Path) -> Option<u32> {
    let recorded = std::fs::read_to_string(file).ok()?;
    let mut words = recorded.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next()) else {
        return None;
    };
    let pid = u32::try_from(pid).ok()?;
    (Stat::read(pid)?.start == start).then_some(pid)
}

/// Kills the process groups recorded in `<root>/*/.run/*.pid` that are still the
/// processes the node started.
fn reap_orphans(root: &Path) {
    let Ok(deployments) = std::fs::read_dir(root) else {
        return;
    };
    for run in deployments.flatten().map(|d| d.path().join(RUN)) {
        let Ok(files) = std::fs::read_dir(&run) else {
            continue;
        };
        for file in files.flatten().map(|f| f.path()) {
            if let Some(pid) = still_running(&file) {
                warn!(target: super::TARGET, pid, file = %file.display(), "killing a replica left by a previous run");
                kill_group(Some(pid), Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(&file);
        }
    }
}
