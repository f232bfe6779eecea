//! The built-in CPU backend: a BERT-family sentence encoder loaded from a directory,
//! for `Embed` and `Rerank` (cosine similarity of normalised embeddings) on a node
//! with no upstream.

mod bert;
mod safetensors;
mod wordpiece;

use std::{path::Path, sync::Arc};

pub use bert::{Bert, write_random};

use super::{Backend, Capabilities, Error, Usage};

/// A loaded local model.
#[derive(Debug, Clone)]
pub struct Local {
    model: Arc<Bert>,
}

impl Local {
    /// Loads the model directory `dir` (`config.json`, `vocab.txt`, `model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let model = Bert::load(dir).map_err(|detail| Error::Load {
            path: dir.display().to_string(),
            detail,
        })?;
        Ok(Self {
            model: Arc::new(model),
        })
    }

    /// Embeds `texts` on blocking threads, spread over the cores.
    async fn vectors(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Usage), Error> {
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            let ids: Vec<Vec<u32>> = texts.iter().map(|t| model.tokens(t)).collect();
            let tokens = ids.iter().map(|i| i.len() as u64).sum();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let per = ids.len().div_ceil(threads).max(1);
            let vectors = std::thread::scope(|s| {
                let handles: Vec<_> = ids
                    .chunks(per)
                    .map(|chunk| {
                        let model = &model;
                        s.spawn(move || chunk.iter().map(|i| model.embed(i)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect::<Vec<_>>()
            });
            (
                vectors,
                Usage {
                    prompt_tokens: tokens,
                    completion_tokens: 0,
                },
            )
        })
        .await
        .map_err(|e| Error::Protocol(format!("the local model failed: {e}")))
    }
}

#[async_trait::async_trait]
impl Backend for Local {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: false,
            embed: true,
            rerank: true,
            dimensions: u32::try_from(self.model.dimensions()).unwrap_or(0),
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
        self.vectors(texts).await
    }

    async fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> Result<(Vec<f32>, Usage), Error> {
        let mut texts = vec![query];
        texts.extend(documents);
        let (vectors, usage) = self.vectors(texts).await?;
        let (q, docs) = vectors
            .split_first()
            .ok_or_else(|| Error::Protocol("no query vector".into()))?;
        let scores = docs
            .iter()
            .map(|d| d.iter().zip(q).map(|(a, b)| a * b).sum())
            .collect();
        Ok((scores, usage))
    }
}
