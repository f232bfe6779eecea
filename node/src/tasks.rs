//! The node's long-running tasks, spawned in one place with a name: a task tracker
//! (so a stop waits for them) and the node's cancellation token. A critical task
//! that ends before the node stops, or panics, is logged with its name and reason,
//! recorded (`/readiness` and `GetHealth` name it) and stops the node, which then
//! exits non-zero so its service manager restarts it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, warn};

const TARGET: &str = "hanzo::tasks";

/// Environment variable naming a critical task to fail at once, for the tests of
/// this module's promise (the process exits non-zero naming it).
pub const FAIL_TASK_ENV: &str = "HANZO_FAIL_TASK";

/// A critical task that stopped the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The task's name.
    pub task: &'static str,
    /// Why it ended: its error, its panic, or that it returned.
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "critical task {} failed: {}", self.task, self.reason)
    }
}

/// Spawns and tracks the node's tasks. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    failure: Arc<watch::Sender<Option<Failure>>>,
}

impl Tasks {
    /// Tasks stopped by `cancel`.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            cancel,
            failure: Arc::new(watch::channel(None).0),
        }
    }

    /// The node's cancellation token.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The first critical task that failed, as it happens.
    pub fn failure(&self) -> watch::Receiver<Option<Failure>> {
        self.failure.subscribe()
    }

    /// Spawns a task the node cannot do without: if it returns (with an error or
    /// not) or panics before the node is stopping, the node stops.
    pub fn spawn_critical<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let forced = std::env::var(FAIL_TASK_ENV).is_ok_and(|v| v == name);
        let inner = tokio::spawn(async move {
            if forced {
                return Err(format!("failed on purpose ({FAIL_TASK_ENV}={name})"));
            }
            task.await
        });
        let (cancel, failure) = (self.cancel.clone(), self.failure.clone());
        self.tracker.spawn(async move {
            let reason = match inner.await {
                Ok(Ok(())) if cancel.is_cancelled() => return,
                Ok(Ok(())) => "it returned while the node was running".to_owned(),
                Ok(Err(why)) => why,
                Err(e) if e.is_panic() => format!("it panicked: {}", panic_message(e)),
                Err(e) => format!("it was aborted: {e}"),
            };
            let f = Failure { task: name, reason };
            error!(target: TARGET, task = name, reason = %f.reason, "critical task failed; stopping the node");
            failure.send_if_modified(|first| {
                let new = first.is_none();
                if new {
                    *first = Some(f);
                }
                new
            });
            cancel.cancel();
        });
    }

    /// Spawns a task the node waits for when it stops, but runs without.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// After the node was cancelled: waits up to `grace` for every task to end;
    /// whether they all did.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !done {
            warn!(target: TARGET, left = self.tracker.len(), grace = ?grace, "tasks still running after the shutdown grace period; leaving them");
        }
        done
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_critical_task_that_ends_or_panics_stops_the_node_naming_it() {
        for (task, expect) in [
            (0, "it returned while the node was running"),
            (1, "boom"),
            (2, "it panicked: oh no"),
        ] {
            let tasks = Tasks::new(CancellationToken::new());
            let mut failure = tasks.failure();
            let quiet = tasks.cancel().clone();
            tasks.spawn(async move { quiet.cancelled().await });
            tasks.spawn_critical("worker", async move {
                match task {
                    0 => Ok(()),
                    1 => Err("boom".to_owned()),
                    _ => panic!("oh no"),
                }
            });
            failure.wait_for(Option::is_some).await.unwrap();
            let f = failure.borrow().clone().unwrap();
            assert_eq!((f.task, f.reason.as_str()), ("worker", expect));
            assert!(tasks.cancel().is_cancelled());
            assert!(tasks.wait(Duration::from_secs(5)).await);
        }
    }

    #[tokio::test]
    async fn a_stop_is_no_failure_and_waits_only_for_the_grace_period() {
        let tasks = Tasks::new(CancellationToken::new());
        let cancel = tasks.cancel().clone();
        tasks.spawn_critical("server", async move {
            cancel.cancelled().await;
            Ok(())
        });
        tasks.spawn(tokio::time::sleep(Duration::from_secs(3600)));
        tasks.cancel().cancel();
        assert!(!tasks.wait(Duration::from_millis(200)).await);
        assert!(tasks.failure().borrow().is_none());
    }
}
