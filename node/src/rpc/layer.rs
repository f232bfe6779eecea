//! The one layer every gRPC call passes, unary or streaming: authenticate, check role
//! and stake against the live ACL, apply the rate limit, count the call.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures_util::future::BoxFuture;

use super::{Auth, Metrics};
use crate::unix_now;

/// Wraps the services with [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
}

impl AuthLayer {
    /// A layer checking calls with `auth` and counting them in `metrics`.
    pub fn new(auth: Auth, metrics: Arc<Metrics>) -> Self {
        Self {
            auth,
            metrics,
            methods: Arc::new(super::methods()),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is the one that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let path = req.uri().path();
        // Unknown paths are counted under one label, so metrics stay bounded.
        let method = if self.layer.methods.contains(path) {
            path.to_owned()
        } else {
            "unknown".to_owned()
        };
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let metrics = self.layer.metrics.clone();
        match self.layer.auth.authorize(path, authorization, unix_now()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                let call = inner.call(req);
                Box::pin(async move {
                    let mut response = call.await?;
                    malformed_is_invalid_argument(&mut response);
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from);
                    metrics.observe(&method, code_name(code), started.elapsed().as_secs_f64());
                    Ok(response)
                })
            }
            Err(refusal) => {
                tracing::debug!(target: super::TARGET, %method, reason = refusal.reason, "call refused");
                metrics.auth_failure(refusal.reason);
                metrics.observe(
                    &method,
                    code_name(refusal.status.code()),
                    started.elapsed().as_secs_f64(),
                );
                let response = refusal.status.into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// tonic answers a request body that does not decode as the method's message with
/// INTERNAL; it is the caller's mistake, so it becomes INVALID_ARGUMENT (the message
/// is kept).
fn malformed_is_invalid_argument<R>(response: &mut http::Response<R>) {
    let headers = response.headers();
    let internal = headers.get("grpc-status").is_some_and(|v| v == "13");
    let decode = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| {
            m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
        });
    if internal && decode {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The upper-snake name of a code, as gRPC spells it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
