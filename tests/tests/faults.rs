//! Faults with real parts on loopback: the chain RPC goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use hanzo_e2e::{
    faults::Proxy,
    rpc::{bearer, served, session},
    *,
};
use hanzo_node::rpc::proto::{
    GetHealthRequest, GetStatusRequest, ServingStatus, auth_service_client::AuthServiceClient,
    node_service_client::NodeServiceClient,
};
use tonic::Code;

/// The chain RPC stops answering: the node keeps serving from its last ACL, reports
/// not-ready with the reason, and catches up (a deposit made meanwhile counts) once
/// the RPC is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_chain_rpc_goes_away_serves_its_last_acl_and_resumes() {
    let net = Devnet::start().await;
    net.client(3)
        .await
        .deposit_caller(milli(500))
        .await
        .unwrap();
    let proxy = Proxy::start(format!("127.0.0.1:{}", net.anvil.port()).parse().unwrap()).await;
    let mut config = net.config();
    config.chain.rpc_url = proxy.url();
    let (node, ch) = served(&net, config).await;
    let mut api = NodeServiceClient::new(ch.clone());
    let token = session(&ch, &net.dev_key(3)).await;
    let ready = http_get(node.http_addr, "/readiness").await;
    assert!(
        ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200"),
        "{ready}"
    );

    // Down: not ready, with the reason; callers are still served from the last ACL.
    proxy.set_down(true);
    let why = eventually(Duration::from_secs(30), async || {
        let r = http_get(node.http_addr, "/readiness").await;
        r.contains(" 503 ").then_some(r)
    })
    .await;
    assert!(why.contains("not ready: chain sync failing"), "{why}");
    assert!(
        why.contains(&proxy.url()),
        "the reason names the RPC: {why}"
    );
    let health = api
        .get_health(GetHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::NotServing);
    api.get_status(bearer(GetStatusRequest {}, &token))
        .await
        .unwrap();

    // Meanwhile on chain: another caller deposits. The node cannot see it yet.
    net.client(5)
        .await
        .deposit_caller(milli(500))
        .await
        .unwrap();
    let block = net.confirm().await;
    let mut auth = AuthServiceClient::new(ch.clone());
    let req = rpc::sign_in_request(auth.clone(), &net.dev_key(5), None).await;
    assert_eq!(
        auth.sign_in(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Back: it catches up, is ready, and the new caller is served.
    proxy.set_down(false);
    node.synced_to(block).await;
    eventually(Duration::from_secs(30), async || {
        let r = http_get(node.http_addr, "/readiness").await;
        r.contains(" 200 ").then_some(())
    })
    .await;
    let newcomer = session(&ch, &net.dev_key(5)).await;
    api.get_status(bearer(GetStatusRequest {}, &newcomer))
        .await
        .unwrap();
    node.shutdown().await;
}
