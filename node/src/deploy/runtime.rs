//! What a runtime does for the supervisor: start a replica, stop it, run a command
//! beside it.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{
    Error,
    journal::Journal,
    spec::{ServiceSpec, Spec},
};

/// A kind of named resource callers own beside their deployments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Storage that outlives deployments.
    Volume,
    /// A network the owner's deployments share (docker runtime).
    Network,
}

impl Kind {
    /// `volume`, `network`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Volume => "volume",
            Self::Network => "network",
        }
    }
}

/// A caller's named volume or network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// Who owns it.
    pub owner: alloy::primitives::Address,
    /// Its name, as specs give it.
    pub name: String,
}

/// One replica to run.
#[derive(Clone, Debug)]
pub struct Target {
    /// Deployment id.
    pub deployment: String,
    /// Who deployed it: volumes are the owner's.
    pub owner: alloy::primitives::Address,
    /// The service's spec, secrets in the clear.
    pub service: Arc<ServiceSpec>,
    /// `<service>-<index>`.
    pub container: Arc<str>,
    /// From 1.
    pub index: u32,
}

/// Output of a command run with [`Runtime::exec`], ending with its exit code.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes on standard output.
    Stdout(Vec<u8>),
    /// Bytes on standard error.
    Stderr(Vec<u8>),
    /// The exit code (128 + signal when killed); the last chunk.
    Exit(i32),
}

/// A running command: write its standard input, read its output. Dropping it kills
/// the command.
pub struct Exec {
    /// Its standard input; dropping it closes it.
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    /// Its output.
    pub output: mpsc::Receiver<Chunk>,
    /// Terminal size changes (rows, columns), where the runtime has terminals.
    pub resize: Option<mpsc::UnboundedSender<(u32, u32)>>,
}

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").finish_non_exhaustive()
    }
}

/// A started replica.
#[async_trait::async_trait]
pub trait Instance: Send {
    /// The process id, where there is one.
    fn pid(&self) -> Option<u32>;
    /// Waits for it to exit: the exit code, or 128 + signal. Cancel-safe.
    async fn wait(&mut self) -> i32;
    /// After it exited: the limits that stopped it, for people (an out-of-memory kill,
    /// forks refused); `None` when none did or the runtime cannot tell.
    fn limits_hit(&self) -> Option<String> {
        None
    }
    /// Asks it to stop, and kills it after `grace`; the exit code.
    async fn stop(&mut self, grace: Duration) -> i32;
}

/// Runs replicas: the embedded `process` runtime, or a container engine.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `process`, `docker`.
    fn name(&self) -> &'static str;
    /// Whether it can run `service` at all, with the reason if not.
    fn check(&self, service: &ServiceSpec) -> Result<(), Error>;
    /// Gets what `spec`'s replicas need before any of them starts (images, networks,
    /// volumes), so that a deploy that cannot run fails before it replaces anything.
    async fn prepare(
        &self,
        _owner: &alloy::primitives::Address,
        _spec: &Spec,
    ) -> Result<(), Error> {
        Ok(())
    }
    /// Starts a replica, its output going to `journal`.
    async fn start(
        &self,
        target: &Target,
        journal: Arc<Journal>,
    ) -> Result<Box<dyn Instance>, Error>;
    /// Runs `command` in a replica's environment.
    /// With `tty`, in a terminal of that size (rows, columns).
    async fn exec(
        &self,
        target: &Target,
        command: &[String],
        tty: Option<(u32, u32)>,
    ) -> Result<Exec, Error>;
    /// Removes what the deployment left on disk.
    async fn remove(&self, deployment: &str) -> Result<(), Error>;
    /// Makes `owner`'s volume or network `name`; nothing when it exists.
    async fn create(
        &self,
        kind: Kind,
        owner: &alloy::primitives::Address,
        name: &str,
    ) -> Result<(), Error>;
    /// `owner`'s volumes or networks (everyone's with `None`).
    async fn list(
        &self,
        kind: Kind,
        owner: Option<&alloy::primitives::Address>,
    ) -> Result<Vec<Owned>, Error>;
    /// Removes one.
    async fn delete(
        &self,
        kind: Kind,
        owner: &alloy::primitives::Address,
        name: &str,
    ) -> Result<(), Error>;
}
