//! Inference for staked callers: models named in config, each served by a backend
//! (an OpenAI-compatible upstream, or the built-in CPU encoder), with per-caller
//! concurrency limits and usage metered per caller and model.

pub mod local;
mod meter;
mod openai;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use alloy::primitives::Address;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use meter::{Counts, Meter};
pub use openai::OpenAi;

use crate::{
    config::{InferenceConfig, ModelBackend},
    store::Store,
};

/// Tracing target.
pub const TARGET: &str = "hanzo::inference";
const MAX_MESSAGES: usize = 256;
const MAX_TEXT: usize = 256 << 10;
const MAX_INPUTS: usize = 1024;

/// Why an inference call failed.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no model `{model}` on this node; it serves: {known}")]
    UnknownModel { model: String, known: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the upstream answered {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the upstream is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("the upstream's answer is not OpenAI-shaped: {0}")]
    Protocol(String),
    #[error(
        "{address} has {limit} inference calls in flight, the most this node allows at once; wait for one to finish"
    )]
    Busy { address: Address, limit: usize },
    #[error("cancelled by the caller after {sent} deltas")]
    Cancelled { sent: u64 },
    #[error("cannot load the model in {path}: {detail}")]
    Load { path: String, detail: String },
    #[error("model `{model}` is configured on this node but failed to load: {why}")]
    NotLoaded { model: String, why: String },
}

/// Tokens a call consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

/// How a generation ended.
#[derive(Debug, Clone)]
pub struct Finish {
    /// `stop`, `length`, …
    pub reason: String,
    /// Its tokens.
    pub usage: Usage,
}

/// A chat completion to run.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The model, as callers name it.
    pub model: String,
    /// (role, content), in order.
    pub messages: Vec<(String, String)>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Stop sequences.
    pub stop: Vec<String>,
}

/// What a model can do.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Chat completions.
    pub generate: bool,
    /// Embeddings.
    pub embed: bool,
    /// Reranking.
    pub rerank: bool,
    /// Embedding size, 0 when unknown.
    pub dimensions: u32,
}

/// A model server.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `openai` or `local`.
    fn kind(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Sends each generated delta to `out`; stops (with [`Error::Cancelled`]) when
    /// `out` closes.
    async fn generate(&self, g: Generation, out: mpsc::Sender<String>) -> Result<Finish, Error>;
    /// One vector per text, in order.
    async fn embed(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Usage), Error>;
    /// One score per document, in the documents' order.
    async fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> Result<(Vec<f32>, Usage), Error>;
}

/// A model as callers see it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// Its backend's kind.
    pub backend: &'static str,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Why it is not served, when it failed to load.
    pub error: Option<String>,
}

/// The node's models; cheap to clone.
#[derive(Clone)]
pub struct Inference {
    inner: Arc<Inner>,
}

struct Inner {
    models: BTreeMap<String, Arc<dyn Backend>>,
    /// Models that failed to load, and why.
    failed: BTreeMap<String, String>,
    meter: Meter,
    per_caller: usize,
    in_flight: Mutex<HashMap<Address, Arc<Semaphore>>>,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference")
            .field("models", &self.inner.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Inference {
    /// Opens every configured model (local ones are loaded now); its metrics go into
    /// `registry`. A configuration error stops the node; a local model that fails to
    /// load is reported (log, `ListModels`, readiness) and the others are served.
    pub fn start(
        config: &InferenceConfig,
        store: Arc<Store>,
        registry: &crate::metrics::Registry,
    ) -> Result<Self, Error> {
        let mut models: BTreeMap<String, Arc<dyn Backend>> = BTreeMap::new();
        let mut failed = BTreeMap::new();
        for m in &config.models {
            if models.contains_key(&m.name) || failed.contains_key(&m.name) {
                return Err(Error::Invalid(format!(
                    "model {} is configured twice",
                    m.name
                )));
            }
            let backend: Arc<dyn Backend> = match m.backend {
                ModelBackend::Openai => Arc::new(OpenAi::new(m)?),
                ModelBackend::Local => {
                    let path = m.path.as_ref().ok_or_else(|| {
                        Error::Invalid(format!("model {}: a local backend needs `path`", m.name))
                    })?;
                    let limits = local::Limits {
                        threads: m.threads.unwrap_or_else(|| {
                            std::thread::available_parallelism().map_or(1, |n| n.get())
                        }),
                        max_tokens: m.max_input_tokens,
                        deadline: m.timeout,
                    };
                    match local::Local::load(path, limits) {
                        Ok(l) => Arc::new(l),
                        Err(e) => {
                            tracing::error!(target: TARGET, model = %m.name, "not served: {e}");
                            failed.insert(m.name.clone(), e.to_string());
                            continue;
                        }
                    }
                }
            };
            tracing::info!(target: TARGET, model = %m.name, backend = backend.kind(), "model ready");
            models.insert(m.name.clone(), backend);
        }
        let meter = Meter::open(store, registry)?;
        for name in models.keys() {
            meter.init(name);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                models,
                failed,
                meter,
                per_caller: config.max_concurrent_per_caller.max(1),
                in_flight: Mutex::default(),
            }),
        })
    }

    /// Every configured model, those that failed to load with why.
    pub fn models(&self) -> Vec<ModelInfo> {
        let served = self.inner.models.iter().map(|(name, b)| ModelInfo {
            name: name.clone(),
            backend: b.kind(),
            capabilities: b.capabilities(),
            error: None,
        });
        let failed = self.inner.failed.iter().map(|(name, why)| ModelInfo {
            name: name.clone(),
            backend: "local",
            capabilities: Capabilities {
                generate: false,
                embed: false,
                rerank: false,
                dimensions: 0,
            },
            error: Some(why.clone()),
        });
        served.chain(failed).collect()
    }

    /// Models that failed to load: (name, why).
    pub fn failed(&self) -> impl Iterator<Item = (&String, &String)> {
        self.inner.failed.iter()
    }

    fn model(&self, name: &str) -> Result<&Arc<dyn Backend>, Error> {
        if let Some(why) = self.inner.failed.get(name) {
            return Err(Error::NotLoaded {
                model: name.into(),
                why: why.clone(),
            });
        }
        self.inner
            .models
            .get(name)
            .ok_or_else(|| Error::UnknownModel {
                model: name.chars().take(100).collect(),
                known: if self.inner.models.is_empty() {
                    "none (configure [[inference.models]])".into()
                } else {
                    self.inner
                        .models
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// One of `caller`'s concurrent calls, or [`Error::Busy`].
    fn permit(&self, caller: Address) -> Result<OwnedSemaphorePermit, Error> {
        let sem = {
            let mut map = crate::lock(&self.inner.in_flight);
            // Idle callers' entries go, so the map stays as big as the active set.
            if map.len() > 4096 {
                map.retain(|_, s| s.available_permits() < self.inner.per_caller);
            }
            map.entry(caller)
                .or_insert_with(|| Arc::new(Semaphore::new(self.inner.per_caller)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| Error::Busy {
            address: caller,
            limit: self.inner.per_caller,
        })
    }

    /// Streams a chat completion for `caller` into `out` and meters it (what was sent
    /// is metered when the caller cancels).
    pub async fn generate(
        &self,
        caller: Address,
        g: Generation,
        out: mpsc::Sender<String>,
    ) -> Result<Finish, Error> {
        let backend = self.model(&g.model)?.clone();
        if !backend.capabilities().generate {
            return Err(Error::Unsupported(format!(
                "model {} ({} backend) does not generate",
                g.model,
                backend.kind()
            )));
        }
        if g.messages.is_empty() || g.messages.len() > MAX_MESSAGES {
            return Err(Error::Invalid(format!(
                "1 to {MAX_MESSAGES} messages, not {}",
                g.messages.len()
            )));
        }
        for (role, content) in &g.messages {
            if !matches!(role.as_str(), "system" | "user" | "assistant" | "tool") {
                return Err(Error::Invalid(format!(
                    "message role {:?} is not system, user, assistant or tool",
                    role.chars().take(32).collect::<String>()
                )));
            }
            text("a message", content)?;
        }
        if g.stop.len() > 4 || g.stop.iter().any(|s| s.len() > 256) {
            return Err(Error::Invalid(
                "at most 4 stop sequences of 256 bytes".into(),
            ));
        }
        if g.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(Error::Invalid("temperature is 0 to 2".into()));
        }
        let _permit = self.permit(caller)?;
        let model = g.model.clone();
        let result = backend.generate(g, out).await;
        let usage = match &result {
            Ok(f) => f.usage,
            Err(Error::Cancelled { sent }) => Usage {
                prompt_tokens: 0,
                completion_tokens: *sent,
            },
            Err(_) => Usage::default(),
        };
        self.inner
            .meter
            .record(caller, &model, usage, result.is_ok());
        result
    }

    /// Embeds `texts` for `caller`.
    pub async fn embed(
        &self,
        caller: Address,
        model: &str,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, Usage), Error> {
        let backend = self.model(model)?.clone();
        inputs("texts", &texts)?;
        let _permit = self.permit(caller)?;
        let result = backend.embed(texts).await;
        self.meter(caller, model, &result);
        result
    }

    /// Scores `documents` against `query` for `caller`: (index, score), best first.
    pub async fn rerank(
        &self,
        caller: Address,
        model: &str,
        query: String,
        documents: Vec<String>,
    ) -> Result<(Vec<(u32, f32)>, Usage), Error> {
        let backend = self.model(model)?.clone();
        text("the query", &query)?;
        inputs("documents", &documents)?;
        let _permit = self.permit(caller)?;
        let result = backend.rerank(query, documents).await;
        self.meter(caller, model, &result);
        let (scores, usage) = result?;
        let mut ranked: Vec<(u32, f32)> = scores
            .into_iter()
            .enumerate()
            .map(|(i, s)| (u32::try_from(i).unwrap_or(u32::MAX), s))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok((ranked, usage))
    }

    fn meter<T>(&self, caller: Address, model: &str, result: &Result<(T, Usage), Error>) {
        let usage = result.as_ref().map(|(_, u)| *u).unwrap_or_default();
        self.inner
            .meter
            .record(caller, model, usage, result.is_ok());
    }

    /// Usage of `address` (everyone's when `None`), per model.
    pub fn usage(&self, address: Option<Address>) -> Vec<(Address, String, Counts)> {
        self.inner.meter.usage(address)
    }
}

/// A JSON number as f32 (what vectors, scores and temperatures are).
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn narrow(x: f64) -> f32 {
    x as f32
}

fn text(what: &str, s: &str) -> Result<(), Error> {
    if s.len() > MAX_TEXT {
        return Err(Error::Invalid(format!(
            "{what} is {} bytes, at most {MAX_TEXT}",
            s.len()
        )));
    }
    Ok(())
}

fn inputs(what: &str, items: &[String]) -> Result<(), Error> {
    if items.is_empty() || items.len() > MAX_INPUTS {
        return Err(Error::Invalid(format!(
            "1 to {MAX_INPUTS} {what}, not {}",
            items.len()
        )));
    }
    items.iter().try_for_each(|t| text(what, t))
}
