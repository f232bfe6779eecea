//! Inference benchmark (run by `scripts/bench-inference`), on loopback:
//!
//! * time to first token and tokens/s of `Generate` through the node (auth layer,
//!   openai backend, gRPC stream) against a plain HTTP client reading the same
//!   upstream's SSE directly, alternating, in the same run; the upstream paces its
//!   deltas `--delay-ms` apart (a fast GPU server), then once unpaced;
//! * embeddings/s of the local backend on a randomly initialised model of
//!   bert-tiny's shape (hidden 128, 2 layers, 2 heads), through `Embed`;
//! * embeddings/s and tokens/s of the real all-MiniLM-L6-v2 through `Embed`, against
//!   a numpy + OpenBLAS forward pass of the same model on the same texts
//!   (`scripts/reference-encoder bench`), in the same run.
//!
//! Ends with `key=value` lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::time::{Duration, Instant};

use hanzo_e2e::{
    Devnet, arg,
    bench::percentile,
    inference::{Upstream, bench_texts, real_model},
    rpc::{bearer, served, session},
};
use hanzo_node::{
    config::{ModelBackend, ModelConfig},
    inference::local::write_random,
    rpc::proto::{
        ChatMessage, EmbedRequest, GenerateRequest,
        inference_service_client::InferenceServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Time to the first delta and the whole generation, in seconds, with the delta count.
struct Gen {
    ttft: f64,
    total: f64,
    deltas: usize,
}

fn body(tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": "chat", "stream": true, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "count for me"}],
    })
}

async fn direct(http: &reqwest::Client, url: &str, tokens: usize) -> Gen {
    let start = Instant::now();
    let mut resp = http
        .post(format!("{url}/chat/completions"))
        .header("content-type", "application/json")
        .body(body(tokens).to_string())
        .send()
        .await
        .unwrap();
    let (mut buf, mut ttft, mut deltas) = (Vec::new(), None, 0);
    'read: while let Some(chunk) = resp.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Some(data) = line.trim_ascii().strip_prefix(b"data: ") else {
                continue;
            };
            if data == b"[DONE]" {
                break 'read;
            }
            let v: serde_json::Value = serde_json::from_slice(data).unwrap();
            if v.pointer("/choices/0/delta/content").is_some() {
                ttft.get_or_insert(start.elapsed().as_secs_f64());
                deltas += 1;
            }
        }
    }
    Gen {
        ttft: ttft.unwrap(),
        total: start.elapsed().as_secs_f64(),
        deltas,
    }
}

async fn via_node(ch: &Channel, token: &str, tokens: usize) -> Gen {
    let mut api = InferenceServiceClient::new(ch.clone());
    let start = Instant::now();
    let req = GenerateRequest {
        model: "chat".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "count for me".into(),
        }],
        max_tokens: u32::try_from(tokens).unwrap(),
        ..Default::default()
    };
    let mut stream = api.generate(bearer(req, token)).await.unwrap().into_inner();
    let (mut ttft, mut deltas) = (None, 0);
    while let Some(chunk) = stream.next().await {
        if !chunk.unwrap().delta.is_empty() {
            ttft.get_or_insert(start.elapsed().as_secs_f64());
            deltas += 1;
        }
    }
    Gen {
        ttft: ttft.unwrap(),
        total: start.elapsed().as_secs_f64(),
        deltas,
    }
}

/// p50 of time to first token (ms) and the mean tokens/s over `runs`.
fn summary(runs: &[Gen]) -> (f64, f64) {
    let mut ttft: Vec<f64> = runs.iter().map(|g| g.ttft * 1000.0).collect();
    let rate = runs.iter().map(|g| g.deltas as f64 / g.total).sum::<f64>() / runs.len() as f64;
    (percentile(&mut ttft, 0.5), rate)
}

#[tokio::main]
async fn main() {
    let rounds = usize::try_from(arg("--rounds", 20)).unwrap();
    let tokens = usize::try_from(arg("--tokens", 100)).unwrap();
    let delay = Duration::from_millis(arg("--delay-ms", 5));
    let paced = Upstream::start(tokens, delay).await;
    let unpaced = Upstream::start(tokens, Duration::ZERO).await;
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    write_random(&dir.path().join("tiny"), &refs, 128, 2, 2, 512, 3).unwrap();
    let mut config = net.config();
    config.rpc.base_rate = 1e9;
    config.rpc.max_rate = 1e9;
    let openai = |name: &str, url: String| ModelConfig {
        url: Some(url),
        upstream_model: Some("chat".into()),
        timeout: Duration::from_secs(30),
        connect_retries: 0,
        ..ModelConfig::new(name, ModelBackend::Openai)
    };
    config.inference.models = vec![
        openai("chat", paced.url()),
        openai("fast", unpaced.url()),
        ModelConfig {
            path: Some(dir.path().join("tiny")),
            ..ModelConfig::new("tiny", ModelBackend::Local)
        },
        ModelConfig {
            path: Some(real_model()),
            max_input_tokens: 1 << 20,
            timeout: Duration::from_secs(600),
            ..ModelConfig::new("minilm", ModelBackend::Local)
        },
    ];
    let (node, ch) = served(&net, config).await;
    let token = session(&ch, &net.dev_key(3)).await;
    let http = reqwest::Client::new();

    // Warm both paths, then alternate.
    direct(&http, &paced.url(), tokens).await;
    via_node(&ch, &token, tokens).await;
    let (mut d, mut n) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(direct(&http, &paced.url(), tokens).await);
        n.push(via_node(&ch, &token, tokens).await);
    }
    let (d_ttft, d_rate) = summary(&d);
    let (n_ttft, n_rate) = summary(&n);

    // Unpaced: the relay's own ceiling.
    let fast_node = |ch: Channel, token: String| async move {
        let mut api = InferenceServiceClient::new(ch);
        let start = Instant::now();
        let req = GenerateRequest {
            model: "fast".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "go".into(),
            }],
            ..Default::default()
        };
        let mut s = api
            .generate(bearer(req, &token))
            .await
            .unwrap()
            .into_inner();
        let mut deltas = 0;
        while let Some(c) = s.next().await {
            deltas += usize::from(!c.unwrap().delta.is_empty());
        }
        deltas as f64 / start.elapsed().as_secs_f64()
    };
    let mut fd = Vec::new();
    let mut fnode = Vec::new();
    for _ in 0..rounds.min(10) {
        let g = direct(&http, &unpaced.url(), tokens).await;
        fd.push(g.deltas as f64 / g.total);
        fnode.push(fast_node(ch.clone(), token.clone()).await);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;

    // Embeddings/s: batches of 32 sentences of 12 words.
    let mut api = InferenceServiceClient::new(ch.clone());
    let batch: Vec<String> = (0..32)
        .map(|i| {
            (0..12)
                .map(|j| format!("w{}", (i * 37 + j * 11) % 2000))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let start = Instant::now();
    let mut embedded = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let r = api
            .embed(bearer(
                EmbedRequest {
                    model: "tiny".into(),
                    texts: batch.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        embedded += r.embeddings.len();
    }
    let eps = embedded as f64 / start.elapsed().as_secs_f64();

    // The real model: the same texts through the node and through numpy.
    let texts = usize::try_from(arg("--texts", 256)).unwrap();
    let reference = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/reference-encoder"
        ))
        .arg("bench")
        .arg(real_model())
        .arg(texts.to_string())
        .output()
        .unwrap();
    assert!(
        reference.status.success(),
        "the numpy reference failed (scripts/bench-inference installs numpy and tokenizers): {}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&reference.stdout).unwrap();
    let r_secs = r["seconds"].as_f64().unwrap();
    let r_tokens = r["tokens"].as_f64().unwrap();
    let start = Instant::now();
    let ours = api
        .embed(bearer(
            EmbedRequest {
                model: "minilm".into(),
                texts: bench_texts(texts),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let o_secs = start.elapsed().as_secs_f64();
    let o_tokens = ours.usage.unwrap().prompt_tokens as f64;
    assert_eq!(ours.embeddings.len(), texts);
    let (o_eps, r_eps) = (texts as f64 / o_secs, texts as f64 / r_secs);

    println!(
        "{rounds} generations of {tokens} deltas each way, upstream pacing {delay:?}, loopback"
    );
    println!("direct to the upstream: TTFT p50 {d_ttft:.2} ms, {d_rate:.0} tokens/s");
    println!(
        "through the node (gRPC, session token): TTFT p50 {n_ttft:.2} ms, {n_rate:.0} tokens/s"
    );
    println!(
        "unpaced upstream: direct {:.0} tokens/s, through the node {:.0} tokens/s",
        mean(&fd),
        mean(&fnode)
    );
    println!(
        "local backend (bert-tiny shape, random weights): {eps:.0} embeddings/s, batches of 32"
    );
    println!("ttft_direct_ms_p50={d_ttft:.2}");
    println!("ttft_node_ms_p50={n_ttft:.2}");
    println!("ttft_added_ms_p50={:.2}", n_ttft - d_ttft);
    println!("tokens_per_s_ratio={:.3}", n_rate / d_rate);
    println!("unpaced_tokens_per_s_ratio={:.3}", mean(&fnode) / mean(&fd));
    println!(
        "all-MiniLM-L6-v2, {texts} texts ({o_tokens} tokens), {} build: node {o_eps:.1} embeddings/s, {:.0} tokens/s; numpy + OpenBLAS {r_eps:.1} embeddings/s, {:.0} tokens/s",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        o_tokens / o_secs,
        r_tokens / r_secs
    );
    println!("embeddings_per_s={eps:.1}");
    println!("embed_real_per_s={o_eps:.1}");
    println!("embed_real_numpy_per_s={r_eps:.1}");
    println!("embed_real_ratio={:.3}", o_eps / r_eps);
    node.shutdown().await;
}
