//! gRPC helpers: a channel to a node, and a wallet's sign-in.

use alloy::signers::{SignerSync, local::PrivateKeySigner};
use hanzo_node::{
    config::Config,
    node::Node,
    rpc::{
        proto::{GetNonceRequest, SignInRequest, auth_service_client::AuthServiceClient},
        siwe,
    },
    unix_now,
};
use tonic::{Request, transport::Channel};

/// A channel to the gRPC listener at `addr`.
pub async fn connect(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("URL")
        .connect()
        .await
        .expect("gRPC connects")
}

/// A node started from `config` and synced to the chain's head, with a channel to its
/// gRPC listener.
pub async fn served(net: &crate::Devnet, config: Config) -> (Node, Channel) {
    let node = Node::start(config).await.expect("node starts");
    node.synced_to(net.confirm().await).await;
    let ch = connect(node.rpc_addr.expect("rpc on")).await;
    (node, ch)
}

/// A SIWE sign-in request for `key`, as a wallet would sign it: for the chain the
/// node names, or for `chain`.
pub async fn sign_in_request(
    mut auth: AuthServiceClient<Channel>,
    key: &PrivateKeySigner,
    chain: Option<u64>,
) -> SignInRequest {
    let n = auth
        .get_nonce(GetNonceRequest {})
        .await
        .expect("nonce")
        .into_inner();
    let now = unix_now();
    let message = siwe::message(&siwe::Message {
        domain: n.domain,
        address: key.address(),
        uri: n.uri,
        chain_id: chain.unwrap_or(n.chain_id),
        nonce: n.nonce,
        issued_at: now,
        expires_at: Some(now + 300),
        statement: Some("Sign in to a hanzo node.".into()),
        ..Default::default()
    });
    let signature = key.sign_message_sync(message.as_bytes()).expect("sign");
    SignInRequest {
        message,
        signature: signature.as_bytes().to_vec(),
    }
}

/// A signed-in session token for `key`.
pub async fn session(ch: &Channel, key: &PrivateKeySigner) -> String {
    let mut auth = AuthServiceClient::new(ch.clone());
    let req = sign_in_request(auth.clone(), key, None).await;
    auth.sign_in(req).await.expect("sign in").into_inner().token
}

/// `msg` carrying `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    req
}

/// The services the gRPC listener at `addr` lists by reflection, as `buf curl` (from
/// npm: a client that is not ours) reads them with `reflect_protocol` (`grpc-v1`,
/// `grpc-v1alpha`); one per line.
pub fn list_services(addr: std::net::SocketAddr, reflect_protocol: &str) -> String {
    let out = std::process::Command::new(
        crate::repo_root().join("node_modules/@bufbuild/buf-linux-x64/bin/buf"),
    )
    .args([
        "curl",
        "--list-services",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
    ])
    .args(["--reflect-protocol", reflect_protocol])
    .arg(format!("http://{addr}"))
    .output()
    .expect("buf runs (scripts/setup installs it)");
    crate::ok(&out)
}
