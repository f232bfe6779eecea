//! The built-in CPU backend: a BERT-family model loaded from a directory, on a node
//! with no upstream: a sentence encoder for `Embed` and `Rerank` (cosine similarity of
//! the embeddings), or a cross-encoder for `Rerank` (a score per query–document
//! pair).
//!
//! Each model has its own pool of worker threads (not the async runtime's). A call
//! is tokenised, checked against the model's token limit, sorted by length and cut
//! into batches of at most [`BATCH_TOKENS`] tokens. The workers take batches from
//! the calls in flight in turn, one batch of each call before a second of any, so a
//! small call waits at most one batch per call ahead of it. A call whose caller went
//! away (its future dropped: stream closed, connection gone) or whose deadline passed
//! is stopped: its remaining batches are dropped and a running one stops at its next
//! layer.

mod bert;
mod safetensors;
mod wordpiece;

use std::{
    collections::VecDeque,
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

pub use bert::{Bert, write_random, write_random_cross_encoder};
use tokio::sync::mpsc;

use super::{Backend, Capabilities, Error, Usage};

/// Tokens per batch (more when one input alone is longer).
pub const BATCH_TOKENS: usize = 1024;

/// What one call may cost, and the threads a model computes on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker threads.
    pub threads: usize,
    /// Most input tokens in one call.
    pub max_tokens: usize,
    /// Longest a call may compute; then its work stops.
    pub deadline: Duration,
}

/// A loaded local model and its workers.
#[derive(Debug, Clone)]
pub struct Local {
    model: Arc<Bert>,
    pool: Arc<Closer>,
    limits: Limits,
}

/// A call's work, shared by the workers.
struct Job {
    batches: Mutex<VecDeque<Batch>>,
    stop: AtomicBool,
    out: mpsc::UnboundedSender<(Vec<usize>, Vec<Vec<f32>>)>,
}

/// A model input: token ids, the first so many of them in the first segment.
type Input = (Vec<u32>, usize);

/// Inputs (their indexes in the call, and the inputs) computed together.
struct Batch {
    index: Vec<usize>,
    inputs: Vec<Input>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Arc<Job>>,
    closed: bool,
}

#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Closes the pool (its workers exit) when the last handle on the model goes.
#[derive(Debug)]
struct Closer(Arc<Pool>);

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pool")
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        crate::lock(&self.0.queue).closed = true;
        self.0.ready.notify_all();
    }
}

/// Stops a call's work when the call is dropped or done.
struct StopOnDrop(Arc<Job>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
        crate::lock(&self.0.batches).clear();
    }
}

impl Pool {
    /// The next batch to run: from the call at the front, which then goes to the
    /// back if it has more. `None` once closed.
    fn next(&self) -> Option<(Arc<Job>, Batch)> {
        let mut q = crate::lock(&self.queue);
        loop {
            if q.closed {
                return None;
            }
            while let Some(job) = q.jobs.pop_front() {
                let (batch, more) = {
                    let mut b = crate::lock(&job.batches);
                    (b.pop_front(), !b.is_empty())
                };
                let Some(batch) = batch else { continue };
                if job.stop.load(Ordering::Relaxed) {
                    continue;
                }
                if more {
                    q.jobs.push_back(job.clone());
                }
                return Some((job, batch));
            }
            q = self
                .ready
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn push(&self, job: Arc<Job>) {
        crate::lock(&self.queue).jobs.push_back(job);
        self.ready.notify_all();
    }
}

/// Runs batches until the pool closes: embeddings, or a cross-encoder's scores (one
/// per input).
fn work(pool: &Pool, model: &Bert) {
    while let Some((job, batch)) = pool.next() {
        let out = if model.is_cross_encoder() {
            let pairs: Vec<(&[u32], usize)> = batch
                .inputs
                .iter()
                .map(|(ids, first)| (ids.as_slice(), *first))
                .collect();
            model
                .score_batch(&pairs, &job.stop)
                .map(|scores| scores.into_iter().map(|s| vec![s]).collect())
        } else {
            let seqs: Vec<&[u32]> = batch.inputs.iter().map(|(ids, _)| ids.as_slice()).collect();
            model.embed_batch(&seqs, &job.stop)
        };
        if let Some(out) = out {
            let _ = job.out.send((batch.index, out));
        }
    }
}

/// Inputs sorted by length (longest first) and cut into batches of at most
/// [`BATCH_TOKENS`] tokens.
fn batches(inputs: Vec<Input>) -> VecDeque<Batch> {
    let mut order: Vec<(usize, Input)> = inputs.into_iter().enumerate().collect();
    order.sort_by_key(|(_, (ids, _))| std::cmp::Reverse(ids.len()));
    let mut out = VecDeque::new();
    let mut cur = Batch {
        index: Vec::new(),
        inputs: Vec::new(),
    };
    let mut tokens = 0;
    for (i, input) in order {
        if !cur.inputs.is_empty() && tokens + input.0.len() > BATCH_TOKENS {
            out.push_back(std::mem::replace(
                &mut cur,
                Batch {
                    index: Vec::new(),
                    inputs: Vec::new(),
                },
            ));
            tokens = 0;
        }
        tokens += input.0.len();
        cur.index.push(i);
        cur.inputs.push(input);
    }
    if !cur.inputs.is_empty() {
        out.push_back(cur);
    }
    out
}

impl Local {
    /// Loads the model directory `dir` and starts its `limits.threads` workers.
    pub fn load(dir: &Path, limits: Limits) -> Result<Self, Error> {
        let model = Arc::new(Bert::load(dir).map_err(|detail| Error::Load {
            path: dir.display().to_string(),
            detail,
        })?);
        let pool = Arc::new(Pool::default());
        for i in 0..limits.threads.max(1) {
            let (pool, model) = (pool.clone(), model.clone());
            std::thread::Builder::new()
                .name(format!("hanzo-embed-{i}"))
                .spawn(move || work(&pool, &model))
                .map_err(|e| Error::Load {
                    path: dir.display().to_string(),
                    detail: format!("cannot start a worker thread: {e}"),
                })?;
        }
        Ok(Self {
            model,
            pool: Arc::new(Closer(pool)),
            limits,
        })
    }

    /// Runs the inputs `tokenize` makes on the model's workers (one output per
    /// input, in order); stops them when this future is dropped or the deadline
    /// passes.
    async fn run(
        &self,
        tokenize: impl FnOnce(&Bert) -> Vec<Input> + Send + 'static,
    ) -> Result<(Vec<Vec<f32>>, Usage), Error> {
        let model = self.model.clone();
        let ids = tokio::task::spawn_blocking(move || tokenize(&model))
            .await
            .map_err(|e| Error::Protocol(format!("the tokenizer failed: {e}")))?;
        let tokens: usize = ids.iter().map(|(ids, _)| ids.len()).sum();
        if tokens > self.limits.max_tokens {
            return Err(Error::Invalid(format!(
                "the inputs are {tokens} tokens; this model takes at most {} per call \
                 (max_input_tokens in its [[inference.models]] entry): send fewer or shorter inputs",
                self.limits.max_tokens
            )));
        }
        let n = ids.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let job = Arc::new(Job {
            batches: Mutex::new(batches(ids)),
            stop: AtomicBool::new(false),
            out: tx,
        });
        let _stop = StopOnDrop(job.clone());
        self.pool.0.push(job);
        let mut vectors = vec![Vec::new(); n];
        let collect = async {
            let mut got = 0;
            while got < n {
                let (index, vs) = rx
                    .recv()
                    .await
                    .ok_or_else(|| Error::Protocol("the model's workers stopped".into()))?;
                got += index.len();
                for (i, v) in index.into_iter().zip(vs) {
                    vectors[i] = v;
                }
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(self.limits.deadline, collect)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "the call ran longer than this model's deadline of {:?} (timeout in its \
                     [[inference.models]] entry) and was stopped: send fewer or shorter inputs",
                    self.limits.deadline
                ))
            })??;
        Ok((
            vectors,
            Usage {
                prompt_tokens: tokens as u64,
                completion_tokens: 0,
            },
        ))
    }
}

#[async_trait::async_trait]
impl Backend for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        let cross = self.model.is_cross_encoder();
        Capabilities {
            generate: false,
            embed: !cross,
            rerank: true,
            dimensions: if cross {
                0
            } else {
                u32::try_from(self.model.dimensions()).unwrap_or(0)
            },
        }
    }

    async fn generate(
        &self,
        _: super::Generation,
        _: tokio::sync::mpsc::Sender<String>,
    ) -> Result<super::Finish, Error> {
        Err(Error::Unsupported(
            "the local backend embeds and reranks only; generation needs an `openai` upstream"
                .into(),
        ))
    }

    async fn embed(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Usage), Error> {
        if self.model.is_cross_encoder() {
            return Err(Error::Unsupported(
                "this model is a cross-encoder: it reranks (query, document) pairs and does not embed"
                    .into(),
            ));
        }
        self.run(move |m| {
            texts
                .iter()
                .map(|t| {
                    let ids = m.tokens(t);
                    let n = ids.len();
                    (ids, n)
                })
                .collect()
        })
        .await
    }

    /// A cross-encoder scores each (query, document) pair; an embedding model, the
    /// cosine similarity of their embeddings.
    async fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> Result<(Vec<f32>, Usage), Error> {
        if self.model.is_cross_encoder() {
            let (scores, usage) = self.run(move |m| m.pairs(&query, &documents)).await?;
            return Ok((scores.into_iter().flatten().collect(), usage));
        }
        let mut texts = vec![query];
        texts.extend(documents);
        let (vectors, usage) = self.embed(texts).await?;
        let (q, docs) = vectors
            .split_first()
            .ok_or_else(|| Error::Protocol("no query vector".into()))?;
        let scores = docs.iter().map(|d| cosine(q, d)).collect();
        Ok((scores, usage))
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_similar_lengths_within_the_token_budget_and_every_input_once() {
        let lens = [3, 700, 5, 400, 1500, 2, 300, 300];
        let inputs: Vec<Input> = lens.iter().map(|n| (vec![1; *n], *n)).collect();
        let b = batches(inputs);
        let shape: Vec<Vec<usize>> = b.iter().map(|b| b.index.clone()).collect();
        // Longest first; a 1500-token input is a batch of its own.
        assert_eq!(shape, [vec![4], vec![1], vec![3, 6, 7, 2, 0, 5]]);
        assert!(b.iter().all(|b| b.inputs.len() == 1
            || b.inputs.iter().map(|(ids, _)| ids.len()).sum::<usize>() <= BATCH_TOKENS));
    }
}
