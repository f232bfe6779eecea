//! The DNS server (`[dns.server]`): plain DNS over UDP and TCP on `dns.server.listen`,
//! and DNS-over-HTTPS (RFC 8484, `GET`/`POST /dns-query`) on the HTTP listener, for
//! names under the pkarr zone ([`super::zone`] decides the answers). A key's packet
//! is the newer of the DHT's (the client's cache, else a lookup) and the one the
//! [`Keeper`] keeps, so an operator that is down still resolves. Only active operators' node keys
//! resolve unless `dns.server.any_key`; each client address is held to
//! `dns.server.rate_limit` queries per second (more are dropped, or `429` over HTTP).
//! The HTTP side also speaks the pkarr relay protocol (`GET`/`PUT /pkarr/<key>`), so
//! clients that cannot reach the DHT resolve and publish through any node.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine as _;
use hickory_proto::op::ResponseCode;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    MAX_RELAY_PAYLOAD,
    keep::Keeper,
    zone::{self, Parsed, Zone},
};
use crate::{acl::Acl, bucket::Bucket, config::DnsServerConfig, keys::NodeId, lock, metrics};

const TARGET: &str = "hanzo::dns::server";
/// The media type of DNS messages over HTTP.
const DNS_MESSAGE: &str = "application/dns-message";
/// Queries answered at once (a DHT lookup may take a while); more are dropped.
const IN_FLIGHT: usize = 256;
/// TCP connections served at once.
const CONNECTIONS: usize = 128;
/// How long a TCP connection may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a lookup on the DHT may take before the answer is SERVFAIL.
const LOOKUP: Duration = Duration::from_secs(5);
/// Client addresses whose rate is tracked; past this, idle ones are forgotten.
const TRACKED: usize = 65_536;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address is taken or not ours.
    #[error("cannot listen for DNS on {addr} (dns.server.listen): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The origin is no domain name.
    #[error("{0}")]
    Origin(String),
}

/// The server's handle: answers queries, whatever carried them.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    zone: Zone,
    client: pkarr::Client,
    keeper: Keeper,
    acl: Acl,
    any_key: bool,
    rate: f64,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
    answers: Family<metrics::Reason, Counter>,
    dropped: Family<metrics::Reason, Counter>,
}

/// Why a query got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    /// Its sender is over the rate limit.
    RateLimited,
    /// Not a DNS query at all.
    Malformed,
}

/// The DHT did not answer within [`LOOKUP`] and no packet is kept.
#[derive(Debug)]
struct LookupTimedOut;

/// What carried a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Stream,
}

impl Server {
    /// A server answering from `client` (the node's DHT client) and `keeper` for the
    /// operators `acl` names, as `config` says.
    pub fn new(
        config: &DnsServerConfig,
        (client, keeper): (pkarr::Client, Keeper),
        acl: Acl,
        registry: &metrics::Registry,
    ) -> Result<Self, Error> {
        let zone = Zone::new(&config.origin).map_err(Error::Origin)?;
        let inner = Inner {
            zone,
            client,
            keeper,
            acl,
            any_key: config.any_key,
            rate: f64::from(config.rate_limit.max(1)),
            clients: Mutex::default(),
            answers: Family::default(),
            dropped: Family::default(),
        };
        registry.register(
            "hanzo_dns_answers",
            "DNS answers given since start, by response code (noerror, nxdomain, refused, formerr, servfail, notimp)",
            inner.answers.clone(),
        );
        registry.register(
            "hanzo_dns_dropped",
            "DNS queries dropped since start, by reason (rate_limited, busy, malformed)",
            inner.dropped.clone(),
        );
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Whether `from` may send one more query now.
    fn admit(&self, from: IpAddr) -> bool {
        let now = Instant::now();
        let mut clients = lock(&self.inner.clients);
        if clients.len() >= TRACKED && !clients.contains_key(&from) {
            // Forget the addresses with a full bucket: they have been quiet.
            clients.retain(|_, b| !b.try_take(self.inner.rate, now));
        }
        let ok = clients
            .entry(from)
            .or_insert_with(|| Bucket::new(self.inner.rate))
            .try_take(1.0, now);
        if !ok {
            self.drop_for("rate_limited");
        }
        ok
    }

    fn drop_for(&self, reason: &str) {
        self.inner
            .dropped
            .get_or_create(&metrics::Reason::new(reason))
            .inc();
    }

    /// The answer to query `bytes` from `from`, or why none is sent.
    async fn respond(
        &self,
        from: IpAddr,
        bytes: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, Dropped> {
        if !self.admit(from) {
            return Err(Dropped::RateLimited);
        }
        let answer = match zone::parse(&self.inner.zone, bytes) {
            Parsed::Drop => {
                self.drop_for("malformed");
                return Err(Dropped::Malformed);
            }
            Parsed::Answer(a) => a,
            Parsed::Ask(q) => {
                if !self.serves(&q.key) {
                    debug!(target: TARGET, %from, key = %q.key, "refused: not an active operator's node key");
                    zone::refuse(&q, ResponseCode::Refused)
                } else {
                    let limit = match transport {
                        Transport::Udp => zone::udp_limit(&q),
                        Transport::Stream => usize::from(u16::MAX),
                    };
                    match self.lookup(&q.key).await {
                        Ok(Some(packet)) => {
                            zone::answer(&q, Some(&packet), packet.elapsed(), limit)
                        }
                        Ok(None) => zone::answer(&q, None, 0, limit),
                        Err(LookupTimedOut) => zone::refuse(&q, ResponseCode::ServFail),
                    }
                }
            }
        };
        self.count(&answer);
        Ok(answer)
    }

    /// The newest packet of `key`: the keeper's while it is fresh (seen within its
    /// TTL), else the newer of the DHT's (the cache, else a lookup) and the keeper's;
    /// what the DHT gave is offered to the keeper (a newer packet is kept, the same
    /// one counts as seen again).
    async fn lookup(
        &self,
        key: &pkarr::PublicKey,
    ) -> Result<Option<pkarr::SignedPacket>, LookupTimedOut> {
        if let Some(kept) = self.inner.keeper.fresh(key) {
            return Ok(Some(kept));
        }
        let found = self
            .inner
            .client
            .resolve(key, pkarr::ResolvePolicy::CacheFirst);
        let found = tokio::time::timeout(LOOKUP, found).await;
        let kept = self.inner.keeper.get(key);
        match (found, kept) {
            (Ok(Ok(p)), Some(k)) if k.more_recent_than(&p) => Ok(Some(k)),
            (Ok(Ok(p)), _) => {
                self.inner.keeper.offer(&p);
                Ok(Some(p))
            }
            (_, Some(k)) => Ok(Some(k)),
            (Ok(Err(_)), None) => Ok(None),
            (Err(_), None) => Err(LookupTimedOut),
        }
    }

    /// Whether `key`'s records are served: an active operator's node key, or any
    /// key with `dns.server.any_key`.
    fn serves(&self, key: &pkarr::PublicKey) -> bool {
        self.inner.any_key
            || self
                .inner
                .acl
                .snapshot()
                .is_operator(&NodeId(key.to_bytes()))
    }

    fn count(&self, answer: &[u8]) {
        let code = answer.get(3).map_or(0, |b| b & 0x0f);
        let name = match code {
            0 => "noerror",
            1 => "formerr",
            2 => "servfail",
            3 => "nxdomain",
            4 => "notimp",
            5 => "refused",
            _ => "other",
        };
        self.inner
            .answers
            .get_or_create(&metrics::Reason::new(name))
            .inc();
    }

    /// Binds `addr` for UDP and TCP and serves both until `cancel`. Returns the
    /// bound address (port 0 picks one, the same for both) and the serving task.
    pub async fn bind(
        &self,
        addr: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
        let listen = |source| Error::Listen { addr, source };
        let mut tries = 0;
        let (udp, tcp, bound) = loop {
            let udp = UdpSocket::bind(addr).await.map_err(listen)?;
            let bound = udp.local_addr().map_err(listen)?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => break (udp, tcp, bound),
                // Port 0: the port picked for UDP may be taken for TCP; pick another.
                Err(_) if addr.port() == 0 && tries < 32 => tries += 1,
                Err(e) => return Err(listen(e)),
            }
        };
        info!(target: TARGET, %bound, "DNS server listening (UDP and TCP)");
        let (a, b) = (self.clone(), self.clone());
        let task = tokio::spawn(async move {
            tokio::select! {
                () = a.serve_udp(udp) => {}
                () = b.serve_tcp(tcp) => {}
                () = cancel.cancelled() => {}
            }
        });
        Ok((bound, task))
    }

    async fn serve_udp(self, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let busy = Arc::new(Semaphore::new(IN_FLIGHT));
        // One byte more than a query may be, so an oversized one is seen as such.
        let mut buf = vec![0u8; zone::MAX_QUERY + 1];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some systems.
                    debug!(target: TARGET, err = %e, "UDP receive failed");
                    continue;
                }
            };
            let Ok(permit) = busy.clone().try_acquire_owned() else {
                self.drop_for("busy");
                continue;
            };
            let (server, socket, query) = (self.clone(), socket.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                if let Ok(answer) = server.respond(from.ip(), &query, Transport::Udp).await
                    && let Err(e) = socket.send_to(&answer, from).await
                {
                    debug!(target: TARGET, %from, err = %e, "UDP send failed");
                }
                drop(permit);
            });
        }
    }

    async fn serve_tcp(self, listener: TcpListener) {
        let busy = Arc::new(Semaphore::new(CONNECTIONS));
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(target: TARGET, err = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = busy.clone().try_acquire_owned() else {
                self.drop_for("busy");
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(why) = server.serve_connection(stream, from.ip()).await {
                    debug!(target: TARGET, %from, %why, "DNS over TCP connection closed");
                }
                drop(permit);
            });
        }
    }

    /// Queries on one TCP connection, each framed by a two-byte length (RFC 1035
    /// 4.2.2), until the client closes it or sits idle.
    async fn serve_connection(&self, mut stream: TcpStream, from: IpAddr) -> Result<(), String> {
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Err(_) => return Err("idle".into()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(len)) => usize::from(len),
            };
            if len > zone::MAX_QUERY {
                self.drop_for("malformed");
                return Err(format!("a {len}-byte query is over {}", zone::MAX_QUERY));
            }
            let mut query = vec![0u8; len];
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
                .await
                .map_err(|_| "idle mid-query".to_owned())?
                .map_err(|e| e.to_string())?;
            let answer = self
                .respond(from, &query, Transport::Stream)
                .await
                .map_err(|why| format!("query dropped: {why:?}"))?;
            let len = u16::try_from(answer.len()).map_err(|_| "answer over 64 KiB")?;
            let mut frame = len.to_be_bytes().to_vec();
            frame.extend_from_slice(&answer);
            tokio::time::timeout(TCP_IDLE, stream.write_all(&frame))
                .await
                .map_err(|_| "client stopped reading".to_owned())?
                .map_err(|e| e.to_string())?;
        }
    }
}

/// DNS-over-HTTPS (RFC 8484) at `/dns-query` and the pkarr relay protocol at
/// `/pkarr/<z-base-32 key>`, merged into the HTTP listener's router (which must be
/// served with the peer's address as `ConnectInfo`).
pub fn router(server: Server) -> Router {
    Router::new()
        .route("/dns-query", get(doh_get).post(doh_post))
        .route("/pkarr/{key}", get(relay_get).put(relay_put))
        .layer(DefaultBodyLimit::max(zone::MAX_QUERY))
        .with_state(server)
}

#[derive(serde::Deserialize)]
struct DohQuery {
    dns: Option<String>,
}

async fn doh_get(
    State(server): State<Server>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(q): Query<DohQuery>,
) -> Response {
    let Some(encoded) = q.dns else {
        return bad("give the query as ?dns=<base64url of the DNS message>");
    };
    if encoded.len() > zone::MAX_QUERY * 4 / 3 + 4 {
        return bad("the query is too large");
    }
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('='))
    else {
        return bad("dns= is not base64url");
    };
    doh(&server, from.ip(), &bytes).await
}

async fn doh_post(
    State(server): State<Server>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if media != DNS_MESSAGE {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send the query as {DNS_MESSAGE}\n"),
        )
            .into_response();
    }
    doh(&server, from.ip(), &body).await
}

async fn doh(server: &Server, from: IpAddr, query: &[u8]) -> Response {
    match server.respond(from, query, Transport::Stream).await {
        Err(Dropped::RateLimited) => over_limit(server, from).into_response(),
        Err(Dropped::Malformed) => bad("not a DNS query"),
        Ok(answer) => {
            let ttl = zone::min_ttl(&answer).unwrap_or(0);
            (
                [
                    (header::CONTENT_TYPE, DNS_MESSAGE.to_owned()),
                    (header::CACHE_CONTROL, format!("max-age={ttl}")),
                ],
                answer,
            )
                .into_response()
        }
    }
}

/// The relay's media type: `<64-byte signature><8-byte timestamp><DNS packet>`.
const RELAY_PAYLOAD: &str = "application/pkarr.org/relays#payload";

/// The key a relay path names, if this node serves it; else the status and why.
fn relay_key(
    server: &Server,
    from: IpAddr,
    z32: &str,
) -> Result<pkarr::PublicKey, (StatusCode, String)> {
    if !server.admit(from) {
        return Err(over_limit(server, from));
    }
    let key = pkarr::PublicKey::try_from(z32).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            format!("{z32:?} is not a z-base-32 public key\n"),
        )
    })?;
    if !server.serves(&key) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("{z32} is not an active operator's node key; this node relays only those\n"),
        ));
    }
    Ok(key)
}

/// `GET /pkarr/<key>`: the key's newest packet (the DHT's or the kept one).
async fn relay_get(
    State(server): State<Server>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(z32): Path<String>,
) -> Response {
    let key = match relay_key(&server, from.ip(), &z32) {
        Ok(k) => k,
        Err(refused) => return refused.into_response(),
    };
    match server.lookup(&key).await {
        Ok(Some(packet)) => (
            [(header::CONTENT_TYPE, RELAY_PAYLOAD)],
            packet.to_relay_payload(),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no packet for {z32} on the DHT\n"),
        )
            .into_response(),
        Err(LookupTimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("the DHT did not answer for {z32} within {LOOKUP:?}\n"),
        )
            .into_response(),
    }
}

/// `PUT /pkarr/<key>`: publishes a packet signed by the key on the DHT, unless a
/// newer one is known.
async fn relay_put(
    State(server): State<Server>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(z32): Path<String>,
    body: Bytes,
) -> Response {
    let key = match relay_key(&server, from.ip(), &z32) {
        Ok(k) => k,
        Err(refused) => return refused.into_response(),
    };
    if body.len() > MAX_RELAY_PAYLOAD {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a relay payload is at most {MAX_RELAY_PAYLOAD} bytes\n"),
        )
            .into_response();
    }
    let packet = match pkarr::SignedPacket::from_relay_payload(&key, &body) {
        Ok(p) => p,
        Err(e) => return bad(&format!("the payload is no packet signed by {z32}: {e}")),
    };
    let newer = |known: &str| {
        (
            StatusCode::CONFLICT,
            format!("a newer packet for {z32} is {known}; sign one dated after it\n"),
        )
            .into_response()
    };
    if server
        .inner
        .keeper
        .get(&key)
        .is_some_and(|k| !packet.more_recent_than(&k) && !packet.is_same_as(&k))
    {
        return newer("kept here");
    }
    match server.inner.client.publish(&packet).await {
        Ok(_) => {
            server.inner.keeper.offer(&packet);
            info!(target: TARGET, %from, key = %z32, "relayed a packet to the DHT");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(pkarr::errors::PublishError::NotMostRecent) => newer("known"),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("the DHT did not take the packet: {e}\n"),
        )
            .into_response(),
    }
}

fn over_limit(server: &Server, from: IpAddr) -> (StatusCode, String) {
    (
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "over dns.server.rate_limit ({}/s) for {from}\n",
            server.inner.rate
        ),
    )
}

fn bad(why: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
}
