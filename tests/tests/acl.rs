//! Chain → ACL, end to end against a real anvil: what the contracts say shows in the
//! node's ACL once confirmed, never before, and survives restarts and reorgs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use alloy::providers::ext::AnvilApi;
use hanzo_e2e::*;
use hanzo_node::{
    acl::{Denied, Key, Member, StakeRole},
    keys::SshKey,
};

const WAIT: Duration = Duration::from_secs(20);

fn ssh_key(byte: u8) -> SshKey {
    SshKey([byte; 32])
}

#[tokio::test]
async fn operator_appears_once_confirmed_and_stake_stops_counting_on_unstake_and_slash() {
    let net = Devnet::start().await;
    let node = net.node().await;
    let node_id = net.node_key().public();
    let operator = net.client(1).await;

    let r = operator
        .register_operator(node_id.to_b256(), "127.0.0.1:9000", ether(2))
        .await
        .unwrap();
    let block = r.block_number.unwrap();
    // The node has seen everything before the registration, but the registration
    // itself is not yet two blocks deep.
    let snap = node.synced_to(block - 2).await;
    assert!(
        !snap.is_operator(&node_id),
        "applied before it was confirmed"
    );
    net.mine(2).await;
    let snap = node.synced_to(block).await;
    assert!(snap.is_operator(&node_id));
    let (addr, op) = snap.state.operator_by_node(&node_id).unwrap();
    assert_eq!(*addr, net.dev_address(1));
    assert_eq!(op.endpoint, "127.0.0.1:9000");
    assert_eq!(op.balance.stake, ether(2));

    // Unstaking 1.5 of 2 ETH leaves 0.5, below the 1 ETH minimum.
    operator
        .request_unstake(StakeRole::Operator, milli(1500))
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(!snap.is_operator(&node_id), "unbonding stake still counted");
    let op = &snap.state.operators[&net.dev_address(1)];
    assert_eq!(
        (op.balance.stake, op.balance.unbonding),
        (milli(500), milli(1500))
    );

    // Top up, then the admin slashes it below the minimum again.
    operator.deposit_operator(ether(1)).await.unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(snap.is_operator(&node_id));
    let admin = net.client(0).await;
    admin
        .slash(net.dev_address(1), StakeRole::Operator, ether(1), "test")
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(!snap.is_operator(&node_id), "slashed stake still counted");
    let op = &snap.state.operators[&net.dev_address(1)];
    assert_eq!(op.balance.stake, milli(500));

    // A caller: staked, then unstaked.
    let caller = net.client(2).await;
    let who = net.dev_address(2);
    caller.deposit_caller(milli(200)).await.unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert_eq!(snap.check_caller(&who).unwrap(), milli(200));
    caller
        .request_unstake(StakeRole::Caller, milli(150))
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert_eq!(
        snap.check_caller(&who).unwrap_err().to_string(),
        "stake 0.05 ETH is below the minimum 0.1 ETH; deposit at least 0.05 ETH more"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn identities_keys_and_repo_membership_drive_may_push() {
    let net = Devnet::start().await;
    let node = net.node().await;
    let alice = net.client(1).await;
    let bob = net.client(2).await;

    alice.mint_identity("alice").await.unwrap();
    bob.mint_identity("bob").await.unwrap();
    alice
        .add_key("alice", &Key::Ssh(ssh_key(0xa1)))
        .await
        .unwrap();
    bob.add_key("bob", &Key::Ssh(ssh_key(0xb2))).await.unwrap();
    bob.add_key("bob", &Key::Eth(net.dev_address(2)))
        .await
        .unwrap();
    alice.create_repo("demo", "alice", false).await.unwrap();
    let snap = node.synced_to(net.confirm().await).await;

    // Found by key.
    let (_, who) = snap.identity_of(&Key::Ssh(ssh_key(0xb2))).unwrap();
    assert_eq!(who.handle, "bob");
    assert_eq!(
        snap.identity_of(&Key::Eth(net.dev_address(2)))
            .unwrap()
            .1
            .handle,
        "bob"
    );
    assert!(snap.identity_of(&Key::Ssh(ssh_key(0x77))).is_none());

    // Bob is not a committer yet; the refusal names key, identity and repo.
    let err = snap
        .may_push(&ssh_key(0xb2), &[], "demo", "refs/heads/main", false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "key {} belongs to identity bob, who is not a committer of repo demo",
            ssh_key(0xb2).fingerprint()
        )
    );
    assert!(
        snap.may_push(&ssh_key(0xa1), &[], "demo", "refs/heads/main", true)
            .unwrap()
            .is_owner
    );

    alice
        .set_member("demo", "bob", Member::Committer, true)
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    let pusher = snap
        .may_push(&ssh_key(0xb2), &[], "demo", "refs/heads/main", false)
        .unwrap();
    assert_eq!(pusher.handle, "bob");
    assert!(matches!(
        snap.may_push(&ssh_key(0xb2), &[], "demo", "refs/heads/main", true),
        Err(Denied::NotOwner { .. })
    ));

    alice
        .set_member("demo", "bob", Member::Committer, false)
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(matches!(
        snap.may_push(&ssh_key(0xb2), &[], "demo", "refs/heads/main", false),
        Err(Denied::NotCommitter { .. })
    ));

    // A revoked key stops resolving.
    bob.revoke_key("bob", &Key::Ssh(ssh_key(0xb2)))
        .await
        .unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(snap.identity_of(&Key::Ssh(ssh_key(0xb2))).is_none());
    node.shutdown().await;
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint() {
    let net = Devnet::start().await;
    let alice = net.client(1).await;
    alice.mint_identity("alice").await.unwrap();
    let node = net.node().await;
    let first = node.synced_to(net.confirm().await).await;
    let applied = first.events_applied;
    assert!(applied > 0);
    node.shutdown().await;

    alice.mint_identity("alice2").await.unwrap();
    let node = net.node().await;
    // Before any sync step, the ACL is the stored checkpoint, not an empty one.
    let resumed = node.acl.snapshot();
    assert_eq!(
        resumed.block, first.block,
        "did not resume from the checkpoint"
    );
    assert_eq!(resumed.state, first.state);
    let snap = node.synced_to(net.confirm().await).await;
    // Only the new mint's logs (Transfer + IdentityMinted) were applied on top:
    // nothing was replayed from the deployment block.
    assert_eq!(snap.events_applied, applied + 2);
    assert!(snap.state.identity_by_handle("alice2").is_some());
    node.shutdown().await;
}

#[tokio::test]
async fn shallow_reorg_never_shows_and_deep_reorg_is_rolled_back() {
    let net = Devnet::start().await;
    let node = net.node().await;
    let alice = net.client(1).await;
    node.synced_to(net.confirm().await).await;

    // Record every snapshot the node publishes.
    let mut watch = node.acl.clone();
    let seen = tokio::spawn(async move {
        let mut handles = Vec::new();
        while let Ok(snap) = watch.changed().await {
            handles.extend(snap.state.identities.values().map(|i| i.handle.clone()));
        }
        handles
    });

    // Shallow: a mint one block deep is reverted before it is confirmed.
    let base = net.provider.anvil_snapshot().await.unwrap();
    alice.mint_identity("ghost").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(net.provider.anvil_revert(base).await.unwrap());
    // The revert dropped a transaction: a fresh client does not reuse its nonce cache.
    let alice = net.client(1).await;
    net.mine(4).await;
    let snap = node.synced_to(net.head().await - 2).await;
    assert!(snap.state.identity_by_handle("ghost").is_none());

    // Deep: a mint confirmed and applied, then the chain forks below it.
    let base = net.provider.anvil_snapshot().await.unwrap();
    let reverted_to = net.head().await;
    alice.mint_identity("doomed").await.unwrap();
    let snap = node.synced_to(net.confirm().await).await;
    assert!(snap.state.identity_by_handle("doomed").is_some());
    assert!(net.provider.anvil_revert(base).await.unwrap());
    // A longer fork without the mint.
    net.mine(6).await;
    let head = net.head().await;
    eventually(WAIT, async || {
        let st = node.status.borrow().clone();
        (st.reorgs >= 1 && st.synced.is_some_and(|s| s + 2 >= head)).then_some(())
    })
    .await;
    let snap = node.acl.snapshot();
    assert!(
        snap.state.identity_by_handle("doomed").is_none(),
        "reorged-out mint still in the ACL"
    );
    assert!(snap.block.unwrap().number >= reverted_to);
    node.shutdown().await;
    let handles = seen.await.unwrap();
    assert!(
        !handles.contains(&"ghost".to_string()),
        "a shallow reorg showed in the ACL"
    );
}

#[tokio::test]
async fn websocket_endpoint_syncs_on_new_heads() {
    let net = Devnet::start().await;
    let mut config = net.config();
    config.chain.rpc_url = net.anvil.ws_endpoint();
    // Polling alone would wait a minute: only the head subscription can drive this.
    config.chain.poll_interval = Duration::from_secs(60);
    let node = hanzo_node::node::Node::start(config).await.unwrap();
    node.synced_to(net.head().await - 2).await;

    net.client(1).await.mint_identity("alice").await.unwrap();
    let block = net.confirm().await;
    let snap = tokio::time::timeout(WAIT, node.synced_to(block))
        .await
        .expect("no sync on new heads");
    assert!(snap.state.identity_by_handle("alice").is_some());
    node.shutdown().await;
}
