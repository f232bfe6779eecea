//! The OpenAI-compatible HTTP API on the node's HTTP listener, for dApps that already
//! use an OpenAI SDK: `GET /v1/models`, `POST /v1/chat/completions` (SSE when
//! `stream` is set) and `POST /v1/embeddings`. Callers send their session token as
//! the API key (`Authorization: Bearer <token>`); the same checks as gRPC apply
//! (stake, role, rate), and usage is metered the same way.

use std::convert::Infallible;

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tonic::Code;

use super::{Caller, context::Context};
use crate::{
    inference::{Generation, narrow},
    unix_now,
};

/// The routes, for the HTTP listener.
pub fn router(ctx: Context) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .with_state(ctx)
}

/// An OpenAI-shaped error with the HTTP status of the gRPC code.
fn error(status: &tonic::Status) -> Response {
    let http = match status.code() {
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({"error": {"message": status.message(), "type": format!("{:?}", status.code()), "code": http.as_u16()}});
    (http, Json(body)).into_response()
}

fn bad(msg: &str) -> Response {
    error(&tonic::Status::invalid_argument(msg))
}

fn caller(ctx: &Context, path: &str, headers: &HeaderMap) -> Result<Caller, tonic::Status> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match ctx.auth.authorize(path, authorization, unix_now()) {
        Ok(Some(c)) => {
            // A session with a spent token budget is refused here, as on gRPC.
            ctx.auth.tokens_left(&c)?;
            Ok(c)
        }
        Ok(None) => Err(tonic::Status::unauthenticated("sign in first")),
        Err(refusal) => {
            ctx.metrics.auth_failure(refusal.reason);
            Err(refusal.status)
        }
    }
}

async fn models(State(ctx): State<Context>, headers: HeaderMap) -> Response {
    if let Err(e) = caller(&ctx, "/hanzo.node.v1.InferenceService/ListModels", &headers) {
        return error(&e);
    }
    let Ok(inf) = ctx.inference() else {
        return error(&tonic::Status::unavailable("this node serves no inference"));
    };
    let data: Vec<Value> = inf
        .models()
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| json!({"id": m.name, "object": "model", "owned_by": "hanzo-node"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn chat(State(ctx): State<Context>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let c = match caller(&ctx, "/hanzo.node.v1.InferenceService/Generate", &headers) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let Ok(inf) = ctx.inference().cloned() else {
        return error(&tonic::Status::unavailable("this node serves no inference"));
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_owned) else {
        return bad("`model` is missing");
    };
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return bad("`messages` is missing");
    };
    let messages = messages
        .iter()
        .map(|m| {
            (
                m.get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                m.get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    let stop = match req.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let g = Generation {
        model: model.clone(),
        messages,
        max_tokens: match (
            req.get("max_tokens")
                .or_else(|| req.get("max_completion_tokens"))
                .and_then(Value::as_u64),
            ctx.auth.tokens_left(&c).ok().flatten(),
        ) {
            (None, None) => None,
            (asked, left) => Some(
                u32::try_from(asked.unwrap_or(u64::MAX).min(left.unwrap_or(u64::MAX)))
                    .unwrap_or(u32::MAX),
            ),
        },
        temperature: req.get("temperature").and_then(Value::as_f64).map(narrow),
        stop,
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let id = format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>()));
    let created = unix_now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let (auth, caller) = (ctx.auth.clone(), c.clone());
    let run = tokio::spawn(async move {
        let result = inf.generate(caller.address, g, tx).await;
        if let Ok(f) = &result {
            auth.spend(&caller, super::inference::total(f.usage), unix_now());
        }
        result
    });
    if !stream {
        let mut text = String::new();
        while let Some(d) = rx.recv().await {
            text.push_str(&d);
        }
        return match run.await {
            Ok(Ok(f)) => Json(json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": f.reason}],
                "usage": {"prompt_tokens": f.usage.prompt_tokens, "completion_tokens": f.usage.completion_tokens,
                          "total_tokens": f.usage.prompt_tokens + f.usage.completion_tokens},
            }))
            .into_response(),
            Ok(Err(e)) => error(&tonic::Status::from(e)),
            Err(e) => error(&tonic::Status::internal(e.to_string())),
        };
    }
    // SSE: each delta as it comes, then the finish reason with usage, then [DONE].
    // When the client goes, the body is dropped, the delta channel closes and the
    // upstream request is cancelled.
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let event = |v: Value| Ok(format!("data: {v}\n\n"));
        while let Some(d) = rx.recv().await {
            if out_tx
                .send(event(chunk(json!({"content": d}), Value::Null)))
                .await
                .is_err()
            {
                return;
            }
        }
        let last = match run.await {
            Ok(Ok(f)) => {
                let mut v = chunk(json!({}), json!(f.reason));
                v["usage"] = json!({"prompt_tokens": f.usage.prompt_tokens, "completion_tokens": f.usage.completion_tokens,
                    "total_tokens": f.usage.prompt_tokens + f.usage.completion_tokens});
                v
            }
            Ok(Err(e)) => json!({"error": {"message": e.to_string()}}),
            Err(e) => json!({"error": {"message": e.to_string()}}),
        };
        let _ = out_tx.send(event(last)).await;
        let _ = out_tx.send(Ok("data: [DONE]\n\n".into())).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        ))
        .unwrap_or_else(|e| error(&tonic::Status::internal(e.to_string())))
}

async fn embeddings(
    State(ctx): State<Context>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let c = match caller(&ctx, "/hanzo.node.v1.InferenceService/Embed", &headers) {
        Ok(c) => c,
        Err(e) => return error(&e),
    };
    let Ok(inf) = ctx.inference() else {
        return error(&tonic::Status::unavailable("this node serves no inference"));
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON");
    };
    let Some(model) = req.get("model").and_then(Value::as_str) else {
        return bad("`model` is missing");
    };
    let texts: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => return bad("`input` is a string or an array of strings"),
    };
    match inf.embed(c.address, model, texts).await {
        Ok((vectors, usage)) => {
            ctx.auth
                .spend(&c, super::inference::total(usage), unix_now());
            let data: Vec<Value> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}}))
            .into_response()
        }
        Err(e) => error(&tonic::Status::from(e)),
    }
}
