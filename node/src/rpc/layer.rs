//! The one layer every gRPC call passes, unary or streaming: authenticate, check role
//! and stake against the live ACL, apply the rate limit, count the call.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};

use super::{Auth, Metrics, eip712};
use crate::unix_now;

/// Wraps the services with [`AuthService`].
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
    metrics: Arc<Metrics>,
    methods: Arc<HashSet<String>>,
    max_message: usize,
}

impl AuthLayer {
    /// A layer checking calls with `auth` and counting them in `metrics`; signed
    /// calls' messages are read up to `max_message` bytes.
    pub fn new(auth: Auth, metrics: Arc<Metrics>, max_message: usize) -> Self {
        Self {
            auth,
            metrics,
            methods: Arc::new(super::methods()),
            max_message,
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

type Body = tonic::body::Body;

impl<S, R> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
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
        let layer = self.layer.clone();
        if authorization.is_none()
            && let Some(signed) = signed(req.headers())
        {
            // The signature covers the message: read it first.
            return Box::pin(async move {
                let (parts, body) = req.into_parts();
                let checked = match single_message(body, layer.max_message).await {
                    Ok(bytes) => layer
                        .auth
                        .authorize_signed(parts.uri.path(), &signed, &bytes[5..], unix_now())
                        .map(|caller| (caller, bytes)),
                    Err(refusal) => Err(refusal),
                };
                match checked {
                    Ok((caller, bytes)) => {
                        let mut req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
                        req.extensions_mut().insert(caller);
                        layer.served(inner.call(req), method, started).await
                    }
                    Err(refusal) => Ok(layer.refused(refusal, &method, started)),
                }
            });
        }
        match self.layer.auth.authorize(path, authorization, unix_now()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                Box::pin(layer.served(inner.call(req), method, started))
            }
            Err(refusal) => {
                let response = layer.refused(refusal, &method, started);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

impl AuthLayer {
    /// The response of a call let through, counted under its code.
    async fn served<R, E>(
        self,
        call: impl Future<Output = Result<http::Response<R>, E>>,
        method: String,
        started: Instant,
    ) -> Result<http::Response<R>, E> {
        let mut response = call.await?;
        malformed_is_invalid_argument(&mut response);
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map_or(tonic::Code::Ok, tonic::Code::from);
        self.metrics
            .observe(&method, code_name(code), started.elapsed().as_secs_f64());
        Ok(response)
    }

    /// The answer to a refused call, counted by reason and code.
    fn refused<R: Default>(
        &self,
        refusal: super::auth::Refusal,
        method: &str,
        started: Instant,
    ) -> http::Response<R> {
        tracing::debug!(target: super::TARGET, %method, reason = refusal.reason, "call refused");
        self.metrics.auth_failure(refusal.reason);
        self.metrics.observe(
            method,
            code_name(refusal.status.code()),
            started.elapsed().as_secs_f64(),
        );
        refusal.status.into_http()
    }
}

/// The EIP-712 metadata of a call signed on its own, if it has any.
fn signed(headers: &http::HeaderMap) -> Option<eip712::Signed> {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let signature = get(eip712::SIGNATURE)?;
    Some(eip712::Signed {
        signature,
        nonce: get(eip712::NONCE).unwrap_or_default(),
        deadline: get(eip712::DEADLINE).unwrap_or_default(),
        address: get(eip712::ADDRESS),
    })
}

/// The body of a signed call: one uncompressed gRPC message (5-byte frame header
/// included), at most `max` bytes.
async fn single_message(body: Body, max: usize) -> Result<Bytes, super::auth::Refusal> {
    let malformed = |why: &str| super::auth::Refusal {
        status: tonic::Status::invalid_argument(format!(
            "a signed call carries exactly one uncompressed message of at most {max} bytes (unary calls; sign in for streams): {why}"
        )),
        reason: "malformed_signed_call",
    };
    let bytes = Limited::new(body, max + 5)
        .collect()
        .await
        .map_err(|e| malformed(&e.to_string()))?
        .to_bytes();
    let Some((&[flag, a, b, c, d], _)) = bytes.split_first_chunk::<5>() else {
        return Err(malformed("no message"));
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if flag != 0 || bytes.len() != 5 + len {
        return Err(malformed("a compressed message, or more than one"));
    }
    Ok(bytes)
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
