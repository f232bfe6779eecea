//! One task per replica: start it, watch it and its health check, restart it as its
//! policy says, stop it on request.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{
    journal::{EventKind, Journal},
    runtime::{Chunk, Runtime, Target},
    spec::{HealthCheck, Restart},
};
use crate::{lock, unix_now};

/// First wait before a restart; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A replica that ran this long restarts after the shortest wait again.
const STABLE: Duration = Duration::from_secs(30);

/// Where a replica is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Being started, or waiting to be restarted.
    Starting,
    /// Running.
    Running,
    /// Exited and not (yet) restarted.
    Exited,
    /// Stopped on request.
    Stopped,
}

/// A replica as callers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Deployment id.
    pub deployment: String,
    /// Service name.
    pub service: String,
    /// `<service>-<index>`.
    pub container: String,
    /// Where it is.
    pub state: State,
    /// False once its health check failed `retries` times in a row, until it passes.
    pub healthy: bool,
    /// Restarts so far.
    pub restarts: u32,
    /// Of the last exit.
    pub exit_code: i32,
    /// Unix seconds of the last start.
    pub started_at: u64,
    /// While running, where the runtime has one.
    pub pid: Option<u32>,
    /// Its health check has passed since the last start.
    pub health_passed: bool,
}

/// A replica another waits for before its first start: the service's name, its
/// status, and whether it has to be healthy rather than only running.
pub type Gate = (String, Arc<Mutex<Status>>, bool);

/// A supervised replica.
#[derive(Debug)]
pub struct Replica {
    /// What it runs.
    pub target: Target,
    /// Its status, kept by its task.
    pub status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Replica {
    /// Starts supervising `target`; the receiver fires once the first start was tried.
    pub fn spawn(
        runtime: Arc<dyn Runtime>,
        target: Target,
        journal: Arc<Journal>,
        grace: Duration,
        after: Vec<Gate>,
    ) -> (Self, oneshot::Receiver<()>) {
        let status = Arc::new(Mutex::new(Status {
            deployment: target.deployment.clone(),
            service: target.service.name.clone(),
            container: target.container.to_string(),
            state: State::Starting,
            healthy: true,
            restarts: 0,
            exit_code: 0,
            started_at: 0,
            pid: None,
            health_passed: false,
        }));
        let stop = CancellationToken::new();
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(
            Supervisor {
                runtime,
                target: target.clone(),
                journal,
                status: status.clone(),
                stop: stop.clone(),
                grace,
                first: Some(first_tx),
                after,
            }
            .run(),
        );
        (
            Self {
                target,
                status,
                stop,
                task: Some(task),
            },
            first_rx,
        )
    }

    /// A snapshot of its status.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Asks it to stop; await the handle to know it has.
    pub fn stop(&mut self) -> Option<JoinHandle<()>> {
        self.stop.cancel();
        self.task.take()
    }
}

struct Supervisor {
    runtime: Arc<dyn Runtime>,
    target: Target,
    journal: Arc<Journal>,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    grace: Duration,
    first: Option<oneshot::Sender<()>>,
    after: Vec<Gate>,
}

enum Outcome {
    Exited(i32),
    Unhealthy,
    Stop,
}

impl Supervisor {
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }

    fn event(&self, kind: EventKind, code: i32, detail: String) {
        self.journal
            .event(&self.target.container, kind, code, detail);
    }

    fn stopped(&self, code: i32) {
        self.set(|s| {
            s.state = State::Stopped;
            s.exit_code = code;
            s.pid = None;
        });
        self.event(EventKind::Stopped, code, "stopped".into());
    }

    /// Resolves once every replica this one waits for runs (and, where asked, has
    /// passed its health check).
    async fn dependencies(&self) {
        let mut told = false;
        loop {
            let waiting: Vec<&str> = self
                .after
                .iter()
                .filter(|(_, st, healthy)| {
                    let s = lock(st);
                    s.state != State::Running || (*healthy && !s.health_passed)
                })
                .map(|(name, _, _)| name.as_str())
                .collect();
            if waiting.is_empty() {
                return;
            }
            if !told {
                tracing::debug!(target: super::TARGET, container = %self.target.container, ?waiting, "waiting for dependencies");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run(mut self) {
        if !self.after.is_empty() {
            tokio::select! {
                () = self.dependencies() => {}
                () = self.stop.cancelled() => return self.stopped(0),
            }
        }
        let policy = self.target.service.restart;
        let mut backoff = BACKOFF_MIN;
        let mut starts = 0u32;
        loop {
            self.set(|s| s.state = State::Starting);
            let began = Instant::now();
            let (code, failed) = match self.runtime.start(&self.target, self.journal.clone()).await
            {
                Err(err) => {
                    self.event(EventKind::Exited, -1, format!("cannot start: {err}"));
                    self.set(|s| {
                        s.state = State::Exited;
                        s.exit_code = -1;
                    });
                    (-1, true)
                }
                Ok(mut instance) => {
                    let pid = instance.pid();
                    let detail = pid.map_or_else(String::new, |p| format!("pid {p}"));
                    if starts == 0 {
                        self.event(EventKind::Started, 0, detail);
                    } else {
                        self.event(
                            EventKind::Restarted,
                            0,
                            format!("restart {starts}, {detail}"),
                        );
                    }
                    self.set(|s| {
                        s.state = State::Running;
                        s.pid = pid;
                        s.healthy = true;
                        s.health_passed = false;
                        s.started_at = unix_now();
                        s.restarts = starts;
                    });
                    if let Some(first) = self.first.take() {
                        let _ = first.send(());
                    }
                    let outcome = tokio::select! {
                        code = instance.wait() => Outcome::Exited(code),
                        () = self.unhealthy() => Outcome::Unhealthy,
                        () = self.stop.cancelled() => Outcome::Stop,
                    };
                    match outcome {
                        Outcome::Stop => {
                            let code = instance.stop(self.grace).await;
                            return self.stopped(code);
                        }
                        Outcome::Exited(code) => {
                            let detail = match instance.limits_hit() {
                                Some(why) => format!("exit code {code}: {why}"),
                                None => format!("exit code {code}"),
                            };
                            self.event(EventKind::Exited, code, detail);
                            (code, code != 0)
                        }
                        Outcome::Unhealthy => {
                            let code = instance.stop(self.grace).await;
                            self.event(EventKind::Exited, code, "stopped: unhealthy".into());
                            (code, true)
                        }
                    }
                }
            };
            starts += 1;
            if let Some(first) = self.first.take() {
                let _ = first.send(());
            }
            self.set(|s| {
                s.state = State::Exited;
                s.exit_code = code;
                s.pid = None;
            });
            let again = match policy {
                Restart::No => false,
                Restart::OnFailure => failed,
                Restart::Always => true,
            };
            if !again {
                return;
            }
            if began.elapsed() > STABLE {
                backoff = BACKOFF_MIN;
            }
            self.set(|s| s.state = State::Starting);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return self.stopped(code),
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Resolves when the health check has failed `retries` times in a row; never
    /// without one.
    async fn unhealthy(&self) {
        let Some(check) = self.target.service.health.clone() else {
            return std::future::pending().await;
        };
        let mut failures = 0;
        let started = Instant::now();
        loop {
            tokio::time::sleep(check.interval).await;
            match self.check(&check).await {
                Ok(()) => {
                    failures = 0;
                    self.set(|s| {
                        s.healthy = true;
                        s.health_passed = true;
                    });
                }
                Err(why) if started.elapsed() < check.start_period => {
                    tracing::debug!(target: super::TARGET, container = %self.target.container, %why, "health check failed in the start period");
                }
                Err(why) => {
                    failures += 1;
                    tracing::debug!(target: super::TARGET, container = %self.target.container, failures, %why, "health check failed");
                    if failures >= check.retries.max(1) {
                        self.set(|s| s.healthy = false);
                        self.event(
                            EventKind::Unhealthy,
                            0,
                            format!("health check failed {failures} times in a row; last: {why}"),
                        );
                        return;
                    }
                }
            }
        }
    }

    async fn check(&self, check: &HealthCheck) -> Result<(), String> {
        let mut exec = self
            .runtime
            .exec(&self.target, &check.command, None)
            .await
            .map_err(|e| e.to_string())?;
        drop(exec.stdin.take());
        let code = tokio::time::timeout(check.timeout, async {
            while let Some(chunk) = exec.output.recv().await {
                if let Chunk::Exit(code) = chunk {
                    return code;
                }
            }
            -1
        })
        .await
        .map_err(|_| format!("no answer within {:?}", check.timeout))?;
        if code == 0 {
            Ok(())
        } else {
            Err(format!("exit code {code}"))
        }
    }
}
