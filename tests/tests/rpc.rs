//! gRPC against a real node over a socket, with a real tonic client: staked callers
//! sign in with their wallet (SIWE) and are served; the unstaked, replayed nonces,
//! another chain's messages and expired tokens are refused with the reason; a caller
//! who unstakes is refused on the next call; one call signed on its own (EIP-712) is
//! served once; rate limits and malformed requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use hanzo_e2e::{
    rpc::{bearer, connect, list_services, served, sign_in_request},
    *,
};
use hanzo_node::{
    acl::StakeRole,
    node::Node,
    rpc::{
        eip712,
        proto::{
            GetHealthRequest, GetRefsRequest, GetStatusRequest, Role, ServingStatus, SignInRequest,
            auth_service_client::AuthServiceClient, node_service_client::NodeServiceClient,
            repo_service_client::RepoServiceClient,
        },
    },
    unix_now,
};
use prost::Message;
use tonic::{Code, Request, transport::Channel};

async fn channel(node: &Node) -> Channel {
    connect(node.rpc_addr.expect("rpc on")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staked_callers_are_served_and_everyone_else_is_told_why_not() {
    let net = Devnet::start().await;
    // Account 3 holds caller stake; account 4 holds too little.
    net.stake_caller(3).await;
    let poor = net.client(4).await;
    poor.deposit_caller(milli(100)).await.unwrap();
    poor.request_unstake(StakeRole::Caller, milli(80))
        .await
        .unwrap();
    let mut config = net.config();
    config.rpc.session_ttl = Duration::from_secs(3);
    let (node, ch) = served(&net, config).await;
    let mut auth = AuthServiceClient::new(ch.clone());
    let mut api = NodeServiceClient::new(ch);

    // Health needs nothing.
    let health = api
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    assert_eq!(health.node_key, net.node_key().public().to_string());

    // A client that is not ours lists the services by reflection: buf (from npm).
    let services = list_services(node.rpc_addr.unwrap(), "grpc-v1");
    for s in [
        "hanzo.node.v1.NodeService",
        "hanzo.node.v1.AuthService",
        "hanzo.node.v1.OperatorService",
        "hanzo.node.v1.RepoService",
        "hanzo.node.v1.ChainService",
    ] {
        assert!(
            services.lines().any(|l| l == s),
            "{s} not listed: {services}"
        );
    }

    // A browser's gRPC-Web call (HTTP/1.1, framed body, trailers in the body).
    let web = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(node.rpc_addr.unwrap())
            .await
            .unwrap();
        let head = format!(
            "POST /hanzo.node.v1.NodeService/GetHealth HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
            node.rpc_addr.unwrap()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(web.starts_with("HTTP/1.1 200"), "{web}");
    assert!(web.contains("application/grpc-web+proto"), "{web}");
    assert!(web.contains("grpc-status:0"), "{web}");
    assert!(web.contains(&health.node_key), "{web}");

    // No token: told how to sign in.
    let e = api.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("AuthService/GetNonce"),
        "{}",
        e.message()
    );

    // Too little stake: told how much is missing.
    let poor = net.dev_key(4);
    let e = auth
        .sign_in(sign_in_request(auth.clone(), &poor, None).await)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("stake 0.02 ETH is below the minimum 0.1 ETH"),
        "{}",
        e.message()
    );

    // Another chain's message.
    let staked = net.dev_key(3);
    let e = auth
        .sign_in(sign_in_request(auth.clone(), &staked, Some(1)).await)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("chain id 1"), "{}", e.message());

    // Staked: signs in and is served.
    let req = sign_in_request(auth.clone(), &staked, None).await;
    let session = auth.sign_in(req.clone()).await.unwrap().into_inner();
    assert_eq!(session.role(), Role::Caller);
    assert_eq!(session.address, staked.address().to_checksum(None));
    let status = api
        .get_status(bearer(GetStatusRequest {}, &session.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.address, staked.address().to_checksum(None));
    assert_eq!(status.stake_wei, milli(500).to_string());
    assert!(status.health.is_some());

    // The same signed message again: the nonce is spent.
    let e = auth.sign_in(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("nonce already used"),
        "{}",
        e.message()
    );

    // The 3-second session expires.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let e = api
        .get_status(bearer(GetStatusRequest {}, &session.token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // Unstaking: the next call after the node sees it is refused.
    let fresh = auth
        .sign_in(sign_in_request(auth.clone(), &staked, None).await)
        .await
        .unwrap()
        .into_inner();
    net.client(3)
        .await
        .request_unstake(StakeRole::Caller, milli(500))
        .await
        .unwrap();
    node.synced_to(net.confirm().await).await;
    let e = api
        .get_status(bearer(GetStatusRequest {}, &fresh.token))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("below the minimum"), "{}", e.message());

    // Every refusal is counted by reason.
    let metrics = http_get(node.http_addr, "/metrics").await;
    for reason in [
        "no_token",
        "no_stake",
        "wrong_chain",
        "nonce_replayed",
        "expired_token",
    ] {
        assert!(
            metrics.contains(&format!(
                "hanzo_rpc_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} missing from\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "hanzo_rpc_requests_total{method=\"/hanzo.node.v1.NodeService/GetStatus\",code=\"OK\"}"
        ),
        "{metrics}"
    );
    node.shutdown().await;
}

/// `msg` with EIP-712 metadata signed by `key` for `method` over `signed_body`.
fn signed<T>(
    msg: T,
    key: &alloy::signers::local::PrivateKeySigner,
    node: &hanzo_node::keys::NodeId,
    method: &str,
    signed_body: &[u8],
    nonce: &str,
    deadline: u64,
) -> Request<T> {
    let typed = eip712::request(method, signed_body, node, 31337, nonce, deadline);
    let mut req = Request::new(msg);
    for (name, value) in eip712::sign(key, &typed, 31337).unwrap() {
        req.metadata_mut().insert(name, value.parse().unwrap());
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_call_signed_with_eip712_is_served_once_and_only_as_signed() {
    let net = Devnet::start().await;
    net.client(3)
        .await
        .deposit_caller(milli(200))
        .await
        .unwrap();
    let node = Node::start(net.config()).await.unwrap();
    node.synced_to(net.confirm().await).await;
    let ch = channel(&node).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let mut repos = RepoServiceClient::new(ch);
    let key = net.dev_key(3);
    let id = net.node_key().public();
    let deadline = unix_now() + 120;
    const STATUS: &str = "/hanzo.node.v1.NodeService/GetStatus";
    const REFS: &str = "/hanzo.node.v1.RepoService/GetRefs";

    // Served without a session, as the signer.
    let status = api
        .get_status(signed(
            GetStatusRequest {},
            &key,
            &id,
            STATUS,
            &[],
            "n-1",
            deadline,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.address, key.address().to_checksum(None));
    assert_eq!(status.role(), Role::Caller);

    // The same nonce again.
    let e = api
        .get_status(signed(
            GetStatusRequest {},
            &key,
            &id,
            STATUS,
            &[],
            "n-1",
            deadline,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("already used"), "{}", e.message());

    // Signed for one message, sent with another: refused as a mismatch, naming the
    // signer the caller claimed (x-hanzo-address), not a stranger's address.
    let asked = GetRefsRequest {
        repo: "demo".into(),
    };
    let body = asked.encode_to_vec();
    let mut tampered = signed(asked.clone(), &key, &id, REFS, &body, "n-2", deadline);
    *tampered.get_mut() = GetRefsRequest {
        repo: "other".into(),
    };
    let e = repos.get_refs(tampered).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message()
            .contains("the signature does not match this request")
            && e.message().contains(&format!("not {}", key.address())),
        "{}",
        e.message()
    );
    // Without the claimed address, the recovered stranger has no stake, and the
    // refusal says it may be a mismatch.
    let mut anonymous = signed(asked.clone(), &key, &id, REFS, &body, "n-2", deadline);
    anonymous.metadata_mut().remove(eip712::ADDRESS);
    *anonymous.get_mut() = GetRefsRequest {
        repo: "other".into(),
    };
    let e = repos.get_refs(anonymous).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        !e.message().contains(&key.address().to_string())
            && e.message()
                .contains("if it is not yours, the signed fields differ from this request"),
        "{}",
        e.message()
    );
    // As signed: served (there is no such repo).
    let e = repos
        .get_refs(signed(asked, &key, &id, REFS, &body, "n-2", deadline))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Signed for another method, another node, or with a passed deadline.
    let e = api
        .get_status(signed(
            GetStatusRequest {},
            &key,
            &id,
            REFS,
            &[],
            "n-3",
            deadline,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("does not match this request"),
        "{}",
        e.message()
    );
    let other = hanzo_node::keys::NodeKey::generate().public();
    let e = api
        .get_status(signed(
            GetStatusRequest {},
            &key,
            &other,
            STATUS,
            &[],
            "n-4",
            deadline,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("does not match this request"),
        "{}",
        e.message()
    );
    let e = api
        .get_status(signed(
            GetStatusRequest {},
            &key,
            &id,
            STATUS,
            &[],
            "n-5",
            unix_now() - 1,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("has passed"), "{}", e.message());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_and_malformed_requests_get_their_codes() {
    let net = Devnet::start().await;
    net.client(3)
        .await
        .deposit_caller(milli(100))
        .await
        .unwrap();
    let mut config = net.config();
    config.rpc.base_rate = 5.0;
    config.rpc.max_rate = 5.0;
    let (node, ch) = served(&net, config).await;
    let mut auth = AuthServiceClient::new(ch.clone());
    let mut api = NodeServiceClient::new(ch.clone());
    let key = net.dev_key(3);
    let session = auth
        .sign_in(sign_in_request(auth.clone(), &key, None).await)
        .await
        .unwrap()
        .into_inner();

    // 5 requests/s: a burst of 30 is cut down, with the reason. At most the bucket
    // (5) plus what refilled while the burst ran gets through, however slow the
    // machine.
    let mut limited = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..30 {
        if let Err(e) = api
            .get_status(bearer(GetStatusRequest {}, &session.token))
            .await
        {
            limited.push(e);
        }
    }
    let allowed = 5.0 + 5.0 * started.elapsed().as_secs_f64() + 1.0;
    let served = 30 - limited.len();
    assert!(
        !limited.is_empty() && served as f64 <= allowed,
        "{served} served, at most {allowed:.1} allowed"
    );
    assert!(limited.iter().all(|e| e.code() == Code::ResourceExhausted));
    assert!(
        limited[0].message().contains("rate limit: 5 requests/s"),
        "{}",
        limited[0].message()
    );

    // An oversized sign-in message, and garbage instead of a signature.
    let e = auth
        .sign_in(SignInRequest {
            message: "x".repeat(10_000),
            signature: vec![1; 65],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("4096-byte limit"), "{}", e.message());
    let mut req = sign_in_request(auth.clone(), &key, None).await;
    req.signature = vec![7; 3];
    let e = auth.sign_in(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("signature"), "{}", e.message());

    // Bytes that are no protobuf message of the method's type.
    let mut raw = tonic::client::Grpc::new(ch);
    raw.ready().await.unwrap();
    let e = raw
        .unary::<Vec<u8>, Vec<u8>, _>(
            Request::new(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
            "/hanzo.node.v1.AuthService/SignIn".parse().unwrap(),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The node is still up.
    assert!(api.get_health(GetHealthRequest {}).await.is_ok());
    node.shutdown().await;
}

/// A codec that sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, Self::Error> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// A self-signed leaf certificate and its key, from openssl, for `localhost`.
fn self_signed(
    dir: &std::path::Path,
    name: &str,
    usage: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        // A leaf certificate trusted directly (webpki refuses a CA as end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", &format!("extendedKeyUsage={usage}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_serves_clients_that_trust_the_certificate_and_mtls_only_known_clients() {
    let net = Devnet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "server", "serverAuth");
    let mut config = net.config();
    config.rpc.tls_cert = Some(cert.clone());
    config.rpc.tls_key = Some(key);
    let node = Node::start(config.clone()).await.unwrap();
    let port = node.rpc_addr.unwrap().port();
    let trusting = || {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&cert).unwrap(),
            ))
            .domain_name("localhost")
    };
    let health = async |port: u16, tls: tonic::transport::ClientTlsConfig| {
        let ch = Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        NodeServiceClient::new(ch)
            .get_health(GetHealthRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    };

    // A client that trusts the certificate gets health over TLS.
    let h = health(port, trusting()).await.unwrap();
    assert_eq!(h.node_key, net.node_key().public().to_string());
    // A plaintext client gets nothing.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            NodeServiceClient::new(ch)
                .get_health(GetHealthRequest {})
                .await
                .is_err()
        );
    }
    node.shutdown().await;

    // mTLS: only a client presenting a certificate the node trusts is served.
    let (client_cert, client_key) = self_signed(dir.path(), "client", "clientAuth");
    config.rpc.tls_client_ca = Some(client_cert.clone());
    let node = Node::start(config).await.unwrap();
    let port = node.rpc_addr.unwrap().port();
    let e = health(port, trusting()).await.unwrap_err();
    assert!(!e.is_empty());
    let (stranger_cert, stranger_key) = self_signed(dir.path(), "stranger", "clientAuth");
    let identity = |c: &std::path::Path, k: &std::path::Path| {
        tonic::transport::Identity::from_pem(std::fs::read(c).unwrap(), std::fs::read(k).unwrap())
    };
    assert!(
        health(
            port,
            trusting().identity(identity(&stranger_cert, &stranger_key))
        )
        .await
        .is_err()
    );
    let h = health(
        port,
        trusting().identity(identity(&client_cert, &client_key)),
    )
    .await
    .unwrap();
    assert_eq!(h.node_key, net.node_key().public().to_string());
    node.shutdown().await;
}
