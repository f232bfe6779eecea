//! The embedded runtime: each replica is a supervised local process group, run in
//! the service's own directory with only the environment the spec gives it.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{process::Command, sync::mpsc};
use tracing::{debug, warn};

use super::{
    Error,
    journal::{Journal, MAX_LINE, Stream, read_lines},
    runtime::{Chunk, Exec, Instance, Runtime, Target},
    spec::ServiceSpec,
};

const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Runs the program under an address-space limit (KiB in `$1`).
const LIMIT_SCRIPT: &str = r#"ulimit -v "$1" || exit 126; shift; exec "$@""#;

/// Local processes under `<root>/<deployment>/<service>`.
#[derive(Debug)]
pub struct Process {
    root: PathBuf,
}

impl Process {
    /// Uses `root` for working directories, first killing process groups a previous
    /// run of the node left behind (it was killed before it could stop them).
    pub fn new(root: PathBuf) -> Result<Self, Error> {
        std::fs::create_dir_all(&root).map_err(|source| Error::Io {
            what: format!("create {}", root.display()),
            source,
        })?;
        reap_orphans(&root);
        Ok(Self { root })
    }

    fn dir(&self, t: &Target) -> PathBuf {
        self.root.join(&t.deployment).join(&t.service.name)
    }

    fn pidfile(&self, t: &Target) -> PathBuf {
        self.root
            .join(&t.deployment)
            .join("run")
            .join(format!("{}.pid", t.container))
    }

    /// `program args` in the replica's directory and environment, in its own process
    /// group, under its memory limit.
    fn command(&self, t: &Target, program: &str, args: &[String]) -> Command {
        let s = &t.service;
        let mut cmd = if s.resources.memory_bytes > 0 {
            let mut c = Command::new("sh");
            c.args(["-c", LIMIT_SCRIPT, "hanzo-limit"])
                .arg((s.resources.memory_bytes / 1024).to_string())
                .arg(program);
            c
        } else {
            Command::new(program)
        };
        let dir = self.dir(t);
        cmd.args(args)
            .current_dir(&dir)
            .env_clear()
            .env("PATH", node_path())
            .env("HOME", &dir)
            .env("HANZO_DEPLOYMENT", &t.deployment)
            .env("HANZO_SERVICE", &s.name)
            .env("HANZO_CONTAINER", &*t.container)
            .env("HANZO_REPLICA", t.index.to_string())
            .envs(&s.env)
            .envs(&s.secret_env)
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn prepare(&self, t: &Target) -> Result<(), Error> {
        for dir in [self.dir(t), self.root.join(&t.deployment).join("run")] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|source| Error::Io {
                    what: format!("create {}", dir.display()),
                    source,
                })?;
        }
        Ok(())
    }
}

fn node_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())
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
        if s.resources.cpu_millis != 0 {
            return unsupported("a CPU limit needs a container runtime; leave cpu_millis at 0");
        }
        if !s.command.contains('/') && which(&s.command).is_none() {
            return Err(Error::Invalid(format!(
                "service `{}`: command `{}` is not on the node's PATH ({})",
                s.name,
                s.command,
                node_path()
            )));
        }
        Ok(())
    }

    async fn start(&self, t: &Target, journal: Arc<Journal>) -> Result<Box<dyn Instance>, Error> {
        self.prepare(t).await?;
        let mut child = self
            .command(t, &t.service.command, &t.service.args)
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
        if let Some((pid, start)) = pid.and_then(|p| Some((p, start_time(p)?)))
            && let Err(err) = std::fs::write(&pidfile, format!("{pid} {start}"))
        {
            warn!(target: super::TARGET, %err, path = %pidfile.display(), "cannot record the pid");
        }
        Ok(Box::new(Child {
            child,
            pid,
            pidfile,
            exited: None,
        }))
    }

    async fn exec(&self, t: &Target, command: &[String], tty: bool) -> Result<Exec, Error> {
        if tty {
            return Err(Error::Unsupported(
                "the process runtime has no terminals; exec without tty".into(),
            ));
        }
        let Some((program, args)) = command.split_first() else {
            return Err(Error::Invalid("exec needs a command".into()));
        };
        self.prepare(t).await?;
        let mut child = self
            .command(t, program, args)
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
}

impl Child {
    fn exited(&mut self, status: std::io::Result<ExitStatus>) -> i32 {
        let c = status.map_or(-1, |s| code(&s));
        kill_group(self.pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(&self.pidfile);
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

    async fn stop(&mut self, grace: Duration) -> i32 {
        if let Some(c) = self.exited {
            return c;
        }
        kill_group(self.pid, Signal::SIGTERM);
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

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&node_path())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells a process from a later one given the same pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process groups recorded in `<root>/*/run/*.pid` that are still the
/// processes the node started.
fn reap_orphans(root: &Path) {
    let Ok(deployments) = std::fs::read_dir(root) else {
        return;
    };
    for run in deployments.flatten().map(|d| d.path().join("run")) {
        let Ok(files) = std::fs::read_dir(&run) else {
            continue;
        };
        for file in files.flatten().map(|f| f.path()) {
            let recorded = std::fs::read_to_string(&file).unwrap_or_default();
            let mut words = recorded.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next()) {
                let pid = u32::try_from(pid).ok();
                if pid.and_then(start_time) == Some(start) {
                    warn!(target: super::TARGET, ?pid, file = %file.display(), "killing a replica left by a previous run");
                    kill_group(pid, Signal::SIGKILL);
                }
            }
            let _ = std::fs::remove_file(&file);
        }
    }
}
