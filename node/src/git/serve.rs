//! Smart HTTP: `GET /<repo>.git/info/refs?service=…`, `POST /<repo>.git/git-upload-pack`,
//! `POST /<repo>.git/git-upload-archive` (`git archive --remote`) and
//! `POST /<repo>.git/git-receive-pack`. Errors are `text/plain`, which git shows
//! on `remote:` lines.

use std::{
    io::Read,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};
use tracing::warn;

use super::{BodyReader, Error, Git, TARGET, pktline, receive, register, repos, token};
use crate::{
    acl::{Key, RepoId, Snapshot},
    unix_now,
};

/// Tips kept under `refs/superseded/` are not advertised to clients (as stock git's
/// `transfer.hideRefs` hides refs), but may still be fetched by id, so the owner can
/// restore one (`hanzo-node repo restore`).
const HIDE_SUPERSEDED: [&str; 4] = [
    "-c",
    "transfer.hideRefs=refs/superseded/",
    "-c",
    "uploadpack.allowTipSHA1InWant=true",
];

/// The git routes, served beside the node's other HTTP endpoints.
pub fn router(git: Git) -> Router {
    Router::new()
        .route("/{repo}/info/refs", get(info_refs))
        .route("/{repo}/git-upload-pack", post(upload_pack))
        .route("/{repo}/git-upload-archive", post(upload_archive))
        .route("/{repo}/git-receive-pack", post(receive_pack))
        .with_state(git)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_response(err: &Error) -> Response {
    match err {
        Error::NotFound(why) => text(StatusCode::NOT_FOUND, why.clone()),
        Error::Rejected(why) => text(StatusCode::BAD_REQUEST, why.clone()),
        Error::Internal(why) => {
            warn!(target: TARGET, %why, "git request failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the node's log",
            )
        }
    }
}

fn git_response(content_type: &str, body: Body) -> Response {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// `demo.git` or `demo` → `demo`.
fn repo_name(segment: &str) -> &str {
    segment.strip_suffix(".git").unwrap_or(segment)
}

/// The `Git-Protocol` header, passed to git as `GIT_PROTOCOL` when it is well formed.
fn git_protocol(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    (value.len() < 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=:.,-_".contains(&b)))
    .then(|| value.to_owned())
}

/// A read that is not allowed: 401 asks git for credentials, 403 and 404 say why.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut res = text(self.0, self.1);
        if self.0 == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hanzo-node\""),
            );
        }
        res
    }
}

impl Git {
    /// Whether the request may read repo `name`: public repos are open; private ones
    /// need a read token (HTTP basic auth password) whose key may read.
    fn authorize_read(
        &self,
        snapshot: &Snapshot,
        name: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refused> {
        let (_, repo) = snapshot
            .repo(name)
            .map_err(|e| Refused(StatusCode::NOT_FOUND, e.to_string()))?;
        if !repo.private {
            return Ok(());
        }
        let Some(token) = basic_password(headers) else {
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                format!(
                    "repo {name} is private: set up the credential helper (see the README: `git config credential.helper '!hanzo-node git-credential --key ~/.ssh/id_ed25519'` and credential.useHttpPath true)"
                ),
            ));
        };
        let lifetime = self.inner.config.max_token_lifetime.as_secs();
        let key = token::verify(&token, name, unix_now(), lifetime)
            .map_err(|e| Refused(StatusCode::FORBIDDEN, e.to_string()))?;
        snapshot
            .may_read(Some(&Key::Ssh(key)), name)
            .map_err(|e| Refused(StatusCode::FORBIDDEN, e.to_string()))
    }

    fn idle(&self) -> Duration {
        self.inner.config.idle_timeout
    }
}

fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    Some(password.to_owned())
}

/// The repo a request names, after the read check: its name, token id and directory.
async fn readable_repo(
    git: &Git,
    segment: &str,
    headers: &HeaderMap,
) -> Result<(String, RepoId, std::path::PathBuf), Response> {
    let name = repo_name(segment);
    let snapshot = git.inner.acl.snapshot();
    git.authorize_read(&snapshot, name, headers)
        .map_err(IntoResponse::into_response)?;
    let (id, dir) = git
        .open(&snapshot, name)
        .await
        .map_err(|e| error_response(&e))?;
    Ok((name.to_owned(), id, dir))
}

#[derive(serde::Deserialize)]
struct Service {
    service: Option<String>,
}

async fn info_refs(
    State(git): State<Git>,
    Path(segment): Path<String>,
    Query(q): Query<Service>,
    headers: HeaderMap,
) -> Response {
    let (_, id, dir) = match readable_repo(&git, &segment, &headers).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    match q.service.as_deref() {
        Some("git-upload-pack") => {
            let protocol = git_protocol(&headers);
            let v2 = protocol.as_deref().is_some_and(|p| p.contains("version=2"));
            let mut cmd = tokio::process::Command::new("git");
            cmd.args(HIDE_SUPERSEDED)
                .args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stderr(Stdio::null());
            if let Some(p) = &protocol {
                cmd.env("GIT_PROTOCOL", p);
            }
            let out = match cmd.output().await {
                Ok(out) if out.status.success() => out.stdout,
                Ok(out) => {
                    return error_response(&Error::Internal(format!(
                        "git upload-pack --advertise-refs: {}",
                        out.status
                    )));
                }
                Err(e) => {
                    return error_response(&Error::Internal(format!("cannot run git: {e}")));
                }
            };
            let mut body = Vec::with_capacity(out.len() + 40);
            if !v2 {
                pktline::write(&mut body, b"# service=git-upload-pack\n");
                pktline::flush(&mut body);
            }
            body.extend_from_slice(&out);
            git_response(
                "application/x-git-upload-pack-advertisement",
                Body::from(body),
            )
        }
        Some("git-receive-pack") => {
            let refs = match tokio::task::spawn_blocking(move || repos::refs(&dir)).await {
                Ok(Ok(mut refs)) => {
                    // Kept and pending tips are fetched, not pushed to.
                    refs.retain(|(name, _)| {
                        !name.starts_with(register::SUPERSEDED_PREFIX)
                            && !name.starts_with(super::pending::PREFIX)
                    });
                    refs
                }
                Ok(Err(e)) => return error_response(&e),
                Err(e) => return error_response(&Error::Internal(e.to_string())),
            };
            let nonce = git.inner.nonces.issue(id, unix_now());
            git_response(
                "application/x-git-receive-pack-advertisement",
                Body::from(receive::advertise(&refs, &nonce)),
            )
        }
        _ => text(
            StatusCode::FORBIDDEN,
            "only git's smart HTTP protocol is served (use git 1.6.6 or newer)",
        ),
    }
}

/// The request body as a reader that fails when the client sends nothing for `idle`.
fn body_reader(body: Body, idle: Duration) -> BodyReader {
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(idle, s.next()).await {
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "client sent nothing for {} (git.idle_timeout)",
                        humantime::format_duration(idle)
                    ),
                )),
                None,
            )),
            Ok(None) => None,
            Ok(Some(item)) => Some((item.map_err(std::io::Error::other), Some(s))),
        }
    });
    Box::new(StreamReader::new(Box::pin(stream)))
}

/// Reads the whole body, at most `max` bytes after gzip decoding.
async fn read_small_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    idle: Duration,
) -> Result<Vec<u8>, Error> {
    let too_big = || {
        Error::Rejected(format!(
            "request larger than {max} bytes (git.max_request_bytes)"
        ))
    };
    let mut raw = Vec::new();
    body_reader(body, idle)
        .take(max as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| Error::Rejected(format!("reading request: {e}")))?;
    if raw.len() > max {
        return Err(too_big());
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Rejected(format!("request is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(too_big());
    }
    Ok(out)
}

async fn upload_pack(
    State(git): State<Git>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_read(&git, &segment, &headers, body, ReadService::Pack).await
}

/// `git archive --remote=<url>`: stock git's `upload-archive`, within the repo's read
/// rights, as `git http-backend` serves it with `http.uploadarchive` on. Only refs
/// and what they reach can be archived (git's `uploadArchive.allowUnreachable` is off).
async fn upload_archive(
    State(git): State<Git>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve_read(&git, &segment, &headers, body, ReadService::Archive).await
}

/// The read services stock git answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadService {
    Pack,
    Archive,
}

/// Runs stock git's `service` on a readable repo with the request body as its input,
/// streaming its output as the response.
async fn serve_read(
    git: &Git,
    segment: &str,
    headers: &HeaderMap,
    body: Body,
    service: ReadService,
) -> Response {
    let (_, _, dir) = match readable_repo(git, segment, headers).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    let request = match read_small_body(
        body,
        headers,
        git.inner.config.max_request_bytes,
        git.idle(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    git.count_fetch();
    let mut cmd = tokio::process::Command::new("git");
    let (name, content_type) = match service {
        ReadService::Pack => {
            cmd.args(HIDE_SUPERSEDED)
                .args(["upload-pack", "--stateless-rpc"]);
            ("upload-pack", "application/x-git-upload-pack-result")
        }
        ReadService::Archive => {
            cmd.arg("upload-archive");
            ("upload-archive", "application/x-git-upload-archive-result")
        }
    };
    cmd.arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(p) = git_protocol(headers) {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return error_response(&Error::Internal(format!("cannot run git: {e}"))),
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return error_response(&Error::Internal(format!("git {name} has no pipes")));
    };
    // The response streams from git's stdout. A client that stops reading stops the
    // stream being polled; when nothing was taken for `idle_timeout`, git is stopped
    // so that a stalled reader does not hold a process.
    let start = tokio::time::Instant::now();
    let last_taken = Arc::new(AtomicU64::new(0));
    let idle = git.idle();
    let taken = last_taken.clone();
    tokio::spawn(async move {
        // A client that hangs up early makes git fail to write; that is not our error.
        let _ = stdin.write_all(&request).await;
        drop(stdin);
        loop {
            tokio::select! {
                _ = child.wait() => return,
                () = tokio::time::sleep(idle / 4) => {}
            }
            let since = start
                .elapsed()
                .saturating_sub(Duration::from_millis(taken.load(Ordering::Relaxed)));
            if since > idle {
                warn!(target: TARGET, "client stopped reading for {}; stopping git {name} (git.idle_timeout)", humantime::format_duration(idle));
                let _ = child.kill().await;
                return;
            }
        }
    });
    let stream = ReaderStream::with_capacity(stdout, 1 << 16).map_ok(move |chunk| {
        let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_taken.store(millis, Ordering::Relaxed);
        chunk
    });
    git_response(content_type, Body::from_stream(stream))
}

async fn receive_pack(
    State(git): State<Git>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (name, id, dir) = match readable_repo(&git, &segment, &headers).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    if headers.contains_key(header::CONTENT_ENCODING) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed push requests are not accepted",
        );
    }
    let mut reader = body_reader(body, git.idle());
    let request = match receive::read_request(&mut reader, git.inner.config.max_request_bytes).await
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if request.commands.is_empty() {
        return git_response("application/x-git-receive-pack-result", Body::empty());
    }
    let report = git.push((&name, id, &dir), &request, &mut reader).await;
    git_response(
        "application/x-git-receive-pack-result",
        Body::from(report.encode(request.caps)),
    )
}
