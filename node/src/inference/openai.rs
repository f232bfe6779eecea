//! Any OpenAI-compatible upstream (llama.cpp server, vLLM, Ollama, …): chat
//! completions streamed over SSE and relayed delta by delta, embeddings, and rerank
//! where the upstream has it. Connect errors are retried; everything else is mapped
//! to an error carrying the upstream's own message.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Backend, Capabilities, Error, Finish, Generation, Usage, narrow};
use crate::config::ModelConfig;

/// Longest SSE line accepted.
const MAX_EVENT: usize = 1 << 20;
/// Largest JSON answer accepted (embeddings of a big batch).
const MAX_BODY: usize = 64 << 20;
/// Most of an error body quoted back.
const MAX_ERROR: usize = 64 << 10;

/// An upstream at `url` (ending in `/v1`), for one model.
#[derive(Debug, Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    base: String,
    model: String,
    key: Option<String>,
    retries: u32,
    timeout: Duration,
}

impl OpenAi {
    /// The upstream of `m`.
    pub fn new(m: &ModelConfig) -> Result<Self, Error> {
        let base = m.url.clone().ok_or_else(|| {
            Error::Invalid(format!("model {}: an openai backend needs `url`", m.name))
        })?;
        let key = match &m.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::Invalid(format!(
                    "model {}: environment variable {var} (api_key_env) is not set",
                    m.name
                ))
            })?),
            None => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Invalid(format!("model {}: {e}", m.name)))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            model: m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
            key,
            retries: m.connect_retries,
            timeout: m.timeout,
        })
    }

    /// POSTs `body` to `path`: the response once its status is a success, retrying
    /// only what never reached the upstream.
    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, Error> {
        let url = format!("{}/{path}", self.base);
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let sent = tokio::time::timeout(self.timeout, req.send()).await;
            let resp = match sent {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "{url} sent no answer within {:?}",
                        self.timeout
                    )));
                }
                Ok(Err(e)) if e.is_connect() && attempt < self.retries => {
                    attempt += 1;
                    tracing::debug!(target: super::TARGET, %url, attempt, err = %e, "upstream refused the connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(Error::Unreachable(format!(
                        "{url}: {e} (after {} attempts)",
                        attempt + 1
                    )));
                }
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let text = self.read(resp, MAX_ERROR).await.unwrap_or_default();
            let message = serde_json::from_slice::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .or_else(|| v.get("error"))
                        .or_else(|| v.get("detail"))
                        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
            return Err(Error::Upstream {
                status: status.as_u16(),
                message,
            });
        }
    }

    /// The body of `resp`, at most `max` bytes, each chunk within the timeout.
    async fn read(&self, mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk(&mut resp).await? {
            if out.len() + chunk.len() > max {
                return Err(Error::Protocol(format!(
                    "the upstream's answer is over {max} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn chunk(&self, resp: &mut reqwest::Response) -> Result<Option<bytes::Bytes>, Error> {
        match tokio::time::timeout(self.timeout, resp.chunk()).await {
            Err(_) => Err(Error::Timeout(format!(
                "the upstream went quiet for {:?} mid-answer",
                self.timeout
            ))),
            Ok(Err(e)) => Err(Error::Unreachable(format!(
                "the upstream's answer broke off: {e}"
            ))),
            Ok(Ok(c)) => Ok(c),
        }
    }

    async fn json(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let resp = self.post(path, body).await?;
        let bytes = self.read(resp, MAX_BODY).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("{path}: not JSON: {e}")))
    }
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| !u.is_null())?;
    Some(Usage {
        prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: u
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

#[async_trait::async_trait]
impl Backend for OpenAi {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            generate: true,
            embed: true,
            rerank: true,
            dimensions: 0,
        }
    }

    async fn generate(
        &self,
        g: Generation,
        out: tokio::sync::mpsc::Sender<String>,
    ) -> Result<Finish, Error> {
        let mut body = json!({
            "model": self.model,
            "messages": g.messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(n) = g.max_tokens {
            body["max_tokens"] = json!(n);
        }
        if let Some(t) = g.temperature {
            body["temperature"] = json!(t);
        }
        if !g.stop.is_empty() {
            body["stop"] = json!(g.stop);
        }
        let mut resp = tokio::select! {
            r = self.post("chat/completions", &body) => r?,
            () = out.closed() => return Err(Error::Cancelled { sent: 0 }),
        };
        let (mut buf, mut sent, mut reason, mut used) = (Vec::new(), 0u64, None, None);
        'read: loop {
            // Dropping `resp` when the caller is gone closes the upstream connection,
            // which is how an OpenAI-compatible server learns to stop generating.
            let chunk = tokio::select! {
                c = self.chunk(&mut resp) => c?,
                () = out.closed() => return Err(Error::Cancelled { sent }),
            };
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let line = line.trim_ascii();
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let data = data.trim_ascii();
                if data == b"[DONE]" {
                    break 'read;
                }
                let v: Value = serde_json::from_slice(data)
                    .map_err(|e| Error::Protocol(format!("an SSE event is not JSON: {e}")))?;
                if let Some(e) = v.get("error") {
                    return Err(Error::Upstream {
                        status: 0,
                        message: e
                            .get("message")
                            .and_then(Value::as_str)
                            .map_or_else(|| e.to_string(), str::to_owned),
                    });
                }
                used = usage(&v).or(used);
                if let Some(choice) = v.pointer("/choices/0") {
                    if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
                        && !text.is_empty()
                    {
                        if out.send(text.to_owned()).await.is_err() {
                            return Err(Error::Cancelled { sent });
                        }
                        sent += 1;
                    }
                    if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                        reason = Some(r.to_owned());
                    }
                }
            }
            if buf.len() > MAX_EVENT {
                return Err(Error::Protocol(format!(
                    "an SSE line over {MAX_EVENT} bytes"
                )));
            }
        }
        Ok(Finish {
            reason: reason.unwrap_or_else(|| "stop".into()),
            usage: used.unwrap_or(Usage {
                prompt_tokens: 0,
                completion_tokens: sent,
            }),
        })
    }

    async fn embed(&self, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, Usage), Error> {
        let n = texts.len();
        let v = self
            .json("embeddings", &json!({"model": self.model, "input": texts}))
            .await?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Protocol("embeddings: no `data` array".into()))?;
        let mut out = vec![Vec::new(); n];
        for (i, d) in data.iter().enumerate() {
            let index = d
                .get("index")
                .and_then(Value::as_u64)
                .map_or(i, |x| usize::try_from(x).unwrap_or(usize::MAX));
            let values = d
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    Error::Protocol("embeddings: an entry without `embedding`".into())
                })?;
            let slot = out
                .get_mut(index)
                .ok_or_else(|| Error::Protocol(format!("embeddings: index {index} of {n}")))?;
            *slot = values
                .iter()
                .map(|x| narrow(x.as_f64().unwrap_or(0.0)))
                .collect();
        }
        if out.iter().any(Vec::is_empty) {
            return Err(Error::Protocol(format!(
                "embeddings: {} vectors for {n} texts",
                data.len()
            )));
        }
        Ok((out, usage(&v).unwrap_or_default()))
    }

    async fn rerank(
        &self,
        query: String,
        documents: Vec<String>,
    ) -> Result<(Vec<f32>, Usage), Error> {
        let n = documents.len();
        let v = match self
            .json(
                "rerank",
                &json!({"model": self.model, "query": query, "documents": documents}),
            )
            .await
        {
            Err(Error::Upstream { status: 404, .. }) => {
                return Err(Error::Unsupported(format!(
                    "the upstream {} has no /rerank",
                    self.base
                )));
            }
            r => r?,
        };
        let results = v
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Protocol("rerank: no `results` array".into()))?;
        let mut scores = vec![f32::NEG_INFINITY; n];
        for r in results {
            let index = r
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(usize::MAX);
            let score = r
                .get("relevance_score")
                .or_else(|| r.get("score"))
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::Protocol("rerank: a result without a score".into()))?;
            *scores
                .get_mut(index)
                .ok_or_else(|| Error::Protocol(format!("rerank: index {index} of {n}")))? =
                narrow(score);
        }
        Ok((scores, usage(&v).unwrap_or_default()))
    }
}
