//! InferenceService: proto ↔ [`inference`] types, the generation stream.

use tonic::{Request, Response, Status};

use super::{
    context::{Boxed, Context, async_stream, caller, principal},
    proto,
};
use crate::inference::{self, Generation, Inference};

impl From<inference::Error> for Status {
    fn from(e: inference::Error) -> Self {
        use inference::Error as E;
        let msg = e.to_string();
        match e {
            E::UnknownModel { .. } => Status::not_found(msg),
            E::Unsupported(_) => Status::failed_precondition(msg),
            E::Invalid(_) | E::Load { .. } => Status::invalid_argument(msg),
            E::Upstream { status, .. } => match status {
                400 | 422 => Status::invalid_argument(msg),
                404 => Status::not_found(msg),
                408 | 504 => Status::deadline_exceeded(msg),
                429 => Status::resource_exhausted(msg),
                401 | 403 => Status::failed_precondition(msg),
                _ => Status::unavailable(msg),
            },
            E::Unreachable(_) | E::Protocol(_) | E::NotLoaded { .. } => Status::unavailable(msg),
            E::Timeout(_) => Status::deadline_exceeded(msg),
            E::Busy { .. } => Status::resource_exhausted(msg),
            E::Cancelled { .. } => Status::cancelled(msg),
        }
    }
}

/// Tokens a call used, against a session's budget.
pub(super) fn total(u: inference::Usage) -> u64 {
    u.prompt_tokens.saturating_add(u.completion_tokens)
}

fn usage(u: inference::Usage) -> proto::Usage {
    proto::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    }
}

impl Context {
    /// The models, or UNAVAILABLE when this node serves none.
    pub(super) fn inference(&self) -> Result<&Inference, Status> {
        self.inference
            .as_ref()
            .ok_or_else(|| Status::unavailable("this node serves no inference"))
    }
}

#[tonic::async_trait]
impl proto::inference_service_server::InferenceService for Context {
    type GenerateStream = Boxed<proto::GenerateChunk>;

    async fn generate(
        &self,
        req: Request<proto::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let c = caller(&req)?;
        let left = self.auth.tokens_left(&c)?;
        let r = req.into_inner();
        // A session with a token budget generates no more than it has left.
        let max_tokens = match ((r.max_tokens > 0).then_some(r.max_tokens), left) {
            (asked, None) => asked,
            (asked, Some(left)) => {
                let left = u32::try_from(left).unwrap_or(u32::MAX);
                Some(asked.map_or(left, |a| a.min(left)))
            }
        };
        let g = Generation {
            model: r.model,
            messages: r
                .messages
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect(),
            max_tokens,
            temperature: r.temperature,
            stop: r.stop,
        };
        let inf = self.inference()?.clone();
        let end = self.stream_end(&c);
        let auth = self.auth.clone();
        // Deltas flow as the upstream sends them; the task ends (and the upstream
        // request with it) when the caller goes.
        Ok(Response::new(async_stream(move |tx| async move {
            let (delta_tx, mut delta_rx) = tokio::sync::mpsc::channel::<String>(64);
            let run = inf.generate(c.address, g, delta_tx);
            tokio::pin!(run, end);
            let (mut done, mut stop) = (None, None);
            loop {
                tokio::select! {
                    status = &mut end => {
                        stop = Some(Some(status));
                        break;
                    }
                    () = tx.closed() => {
                        stop = Some(None);
                        break;
                    }
                    delta = delta_rx.recv() => match delta {
                        Some(delta) => {
                            let chunk = proto::GenerateChunk { delta, ..Default::default() };
                            if tx.send(Ok(chunk)).await.is_err() {
                                stop = Some(None);
                                break;
                            }
                        }
                        None => break,
                    },
                    result = &mut run, if done.is_none() => done = Some(result),
                }
            }
            if let Some(why) = stop {
                // Closing the delta channel makes the backend drop the upstream
                // request; what it streamed so far is still metered.
                drop(delta_rx);
                let result = match done {
                    Some(r) => r,
                    None => run.await,
                };
                if let Ok(f) = &result {
                    auth.spend(&c, total(f.usage), crate::unix_now());
                }
                if let Some(status) = why {
                    let _ = tx.send(Err(status)).await;
                }
                return;
            }
            let result = match done {
                Some(r) => r,
                None => run.await,
            };
            if let Ok(f) = &result {
                auth.spend(&c, total(f.usage), crate::unix_now());
            }
            let last = result.map_err(Status::from).map(|f| proto::GenerateChunk {
                delta: String::new(),
                finish_reason: f.reason,
                usage: Some(usage(f.usage)),
            });
            let _ = tx.send(last).await;
        })))
    }

    async fn embed(
        &self,
        req: Request<proto::EmbedRequest>,
    ) -> Result<Response<proto::EmbedResponse>, Status> {
        let c = caller(&req)?;
        self.auth.tokens_left(&c)?;
        let r = req.into_inner();
        let (vectors, u) = self
            .inference()?
            .embed(c.address, &r.model, r.texts)
            .await?;
        self.auth.spend(&c, total(u), crate::unix_now());
        Ok(Response::new(proto::EmbedResponse {
            dimensions: vectors
                .first()
                .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX)),
            embeddings: vectors
                .into_iter()
                .map(|values| proto::Embedding { values })
                .collect(),
            usage: Some(usage(u)),
        }))
    }

    async fn rerank(
        &self,
        req: Request<proto::RerankRequest>,
    ) -> Result<Response<proto::RerankResponse>, Status> {
        let c = caller(&req)?;
        self.auth.tokens_left(&c)?;
        let r = req.into_inner();
        let (ranked, u) = self
            .inference()?
            .rerank(c.address, &r.model, r.query, r.documents)
            .await?;
        self.auth.spend(&c, total(u), crate::unix_now());
        Ok(Response::new(proto::RerankResponse {
            results: ranked
                .into_iter()
                .map(|(index, score)| proto::RerankResult { index, score })
                .collect(),
            usage: Some(usage(u)),
        }))
    }

    async fn list_models(
        &self,
        _: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let models = self.inference()?.models();
        Ok(Response::new(proto::ListModelsResponse {
            models: models
                .into_iter()
                .map(|m| proto::ModelInfo {
                    name: m.name,
                    backend: m.backend.into(),
                    generate: m.capabilities.generate,
                    embed: m.capabilities.embed,
                    rerank: m.capabilities.rerank,
                    dimensions: m.capabilities.dimensions,
                    error: m.error.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn get_usage(
        &self,
        req: Request<proto::GetUsageRequest>,
    ) -> Result<Response<proto::GetUsageResponse>, Status> {
        let c = caller(&req)?;
        let who = principal(&c);
        let asked = req.get_ref().address.trim();
        let address = match asked {
            "" => Some(c.address),
            "*" => None,
            a => Some(
                a.parse()
                    .map_err(|e| Status::invalid_argument(format!("address {a:?}: {e}")))?,
            ),
        };
        if address != Some(c.address) && !who.admin {
            return Err(Status::permission_denied(format!(
                "{} may read only its own usage; other addresses are for this node's operator",
                c.address
            )));
        }
        let rows = self.inference()?.usage(address);
        Ok(Response::new(proto::GetUsageResponse {
            usage: rows
                .into_iter()
                .map(|(a, model, n)| proto::ModelUsage {
                    address: a.to_checksum(None),
                    model,
                    requests: n.requests,
                    prompt_tokens: n.prompt_tokens,
                    completion_tokens: n.completion_tokens,
                })
                .collect(),
        }))
    }
}
