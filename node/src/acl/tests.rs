use super::*;

const ETHER: u64 = 1_000_000_000_000_000_000;

fn wei(milli_eth: u64) -> U256 {
    U256::from(milli_eth) * U256::from(ETHER / 1000)
}

fn addr(n: u8) -> Address {
    Address::repeat_byte(n)
}

/// alice (id 1, key 0xa1) owns repo demo (id 7); bob (id 2, key 0xb2) exists.
fn snapshot() -> Snapshot {
    let mut s = State::default();
    let changes = [
        Change::Params(Params {
            min_operator_stake: wei(1000),
            min_caller_stake: wei(100),
            unbonding_period: 60,
        }),
        Change::IdentityMinted {
            id: 1,
            holder: addr(1),
            handle: "alice".into(),
        },
        Change::IdentityMinted {
            id: 2,
            holder: addr(2),
            handle: "bob".into(),
        },
        Change::KeyAdded {
            id: 1,
            key: Key::Ssh(SshKey([0xa1; 32])),
        },
        Change::KeyAdded {
            id: 2,
            key: Key::Ssh(SshKey([0xb2; 32])),
        },
        Change::RepoCreated {
            id: 7,
            holder: addr(1),
            name: "demo".into(),
            owner_identity: 1,
            private: false,
        },
    ];
    for c in changes {
        s.apply(c);
    }
    Snapshot {
        state: s,
        ..Default::default()
    }
}

#[test]
fn may_push_follows_membership_and_names_the_reason() {
    let mut snap = snapshot();
    let bob = SshKey([0xb2; 32]);
    let err = snap
        .may_push(&bob, &[], "demo", "refs/heads/main", false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "key {} belongs to identity bob, who is not a committer of repo demo",
            bob.fingerprint()
        )
    );
    snap.state.apply(Change::MemberAdded {
        repo: 7,
        identity: 2,
        role: Member::Committer,
    });
    let pusher = snap
        .may_push(&bob, &[], "demo", "refs/heads/main", false)
        .unwrap();
    assert_eq!((pusher.handle.as_str(), pusher.is_owner), ("bob", false));
    // Committers cannot rewrite; the owner can.
    assert!(matches!(
        snap.may_push(&bob, &[], "demo", "refs/heads/main", true),
        Err(Denied::NotOwner { .. })
    ));
    assert!(
        snap.may_push(&SshKey([0xa1; 32]), &[], "demo", "refs/heads/main", true)
            .unwrap()
            .is_owner
    );
    snap.state.apply(Change::MemberRemoved {
        repo: 7,
        identity: 2,
        role: Member::Committer,
    });
    assert!(
        snap.may_push(&bob, &[], "demo", "refs/heads/main", false)
            .is_err()
    );

    assert_eq!(
        snap.may_push(&bob, &[], "nope", "refs/heads/main", false)
            .unwrap_err(),
        Denied::UnknownRepo("nope".into())
    );
    assert!(matches!(
        snap.may_push(&SshKey([9; 32]), &[], "demo", "refs/heads/main", false),
        Err(Denied::UnknownKey(_))
    ));
}

#[test]
fn revoked_and_cleared_keys_stop_resolving() {
    let mut snap = snapshot();
    let alice = Key::Ssh(SshKey([0xa1; 32]));
    assert_eq!(snap.identity_of(&alice).map(|(id, _)| id), Some(1));
    snap.state.apply(Change::KeyRevoked { id: 1, key: alice });
    assert!(snap.identity_of(&alice).is_none());
    snap.state.apply(Change::KeyAdded { id: 1, key: alice });
    snap.state.apply(Change::IdentityTransferred {
        id: 1,
        holder: addr(9),
    });
    snap.state.apply(Change::KeysCleared { id: 1 });
    assert!(snap.identity_of(&alice).is_none());
    assert_eq!(snap.state.identities[&1].holder, addr(9));
}

#[test]
fn private_repos_are_read_by_members_only() {
    let mut snap = snapshot();
    let bob = Key::Ssh(SshKey([0xb2; 32]));
    assert!(snap.may_read(None, "demo").is_ok(), "public repo");
    snap.state.apply(Change::RepoVisibility {
        id: 7,
        private: true,
    });
    assert!(matches!(
        snap.may_read(Some(&bob), "demo"),
        Err(Denied::NotReader { .. })
    ));
    assert!(snap.may_read(None, "demo").is_err());
    snap.state.apply(Change::MemberAdded {
        repo: 7,
        identity: 2,
        role: Member::Reader,
    });
    assert!(snap.may_read(Some(&bob), "demo").is_ok());
    assert!(
        snap.may_read(Some(&Key::Ssh(SshKey([0xa1; 32]))), "demo")
            .is_ok(),
        "owner"
    );
}

#[test]
fn stake_counts_only_while_active_and_above_minimum() {
    let mut snap = snapshot();
    let node = NodeId([5; 32]);
    snap.state.apply(Change::OperatorRegistered {
        operator: addr(5),
        node_key: node,
        endpoint: String::new(),
        stake: wei(2000),
    });
    assert!(snap.is_operator(&node));
    assert_eq!(snap.rpc_role(&addr(5), &node), Role::Admin);
    assert_eq!(
        snap.rpc_role(&addr(5), &NodeId([6; 32])),
        Role::OperatorPeer
    );
    // Unbonding moves stake out of what counts.
    let (role, account) = (StakeRole::Operator, addr(5));
    snap.state.apply(Change::Stake {
        account,
        role,
        stake: wei(500),
    });
    snap.state.apply(Change::Unbonding {
        account,
        role,
        unbonding: wei(1500),
    });
    assert!(!snap.is_operator(&node));
    assert_eq!(snap.rpc_role(&addr(5), &node), Role::Anonymous);

    let caller = addr(8);
    assert_eq!(
        snap.check_caller(&caller).unwrap_err().to_string(),
        "stake 0 ETH is below the minimum 0.1 ETH; deposit at least 0.1 ETH more"
    );
    snap.state.apply(Change::Stake {
        account: caller,
        role: StakeRole::Caller,
        stake: wei(20),
    });
    assert_eq!(
        snap.check_caller(&caller).unwrap_err().to_string(),
        "stake 0.02 ETH is below the minimum 0.1 ETH; deposit at least 0.08 ETH more"
    );
    snap.state.apply(Change::Stake {
        account: caller,
        role: StakeRole::Caller,
        stake: wei(100),
    });
    assert_eq!(snap.rpc_role(&caller, &node), Role::Caller);
}

#[test]
fn replicators_prefer_named_active_nodes() {
    let mut snap = snapshot();
    for n in [5u8, 6] {
        snap.state.apply(Change::OperatorRegistered {
            operator: addr(n),
            node_key: NodeId([n; 32]),
            endpoint: String::new(),
            stake: wei(1000),
        });
    }
    assert_eq!(
        snap.replicators("demo").unwrap(),
        vec![NodeId([5; 32]), NodeId([6; 32])]
    );
    snap.state.apply(Change::ReplicatorAdded {
        repo: 7,
        node: NodeId([6; 32]),
    });
    assert_eq!(snap.replicators("demo").unwrap(), vec![NodeId([6; 32])]);
    // A preferred node that is not an active operator does not count.
    snap.state.apply(Change::ReplicatorRemoved {
        repo: 7,
        node: NodeId([6; 32]),
    });
    snap.state.apply(Change::ReplicatorAdded {
        repo: 7,
        node: NodeId([42; 32]),
    });
    assert_eq!(snap.replicators("demo").unwrap().len(), 2);
}

#[test]
fn burned_repo_frees_its_name() {
    let mut snap = snapshot();
    snap.state.apply(Change::RepoBurned { id: 7 });
    assert_eq!(
        snap.may_read(None, "demo").unwrap_err(),
        Denied::UnknownRepo("demo".into())
    );
}

#[test]
fn eth_formats_without_trailing_zeros() {
    assert_eq!(eth(wei(200)), "0.2 ETH");
    assert_eq!(eth(wei(1000)), "1 ETH");
    assert_eq!(eth(U256::ZERO), "0 ETH");
}

#[test]
fn patterns_match_within_a_path_segment() {
    for (pattern, name, want) in [
        ("refs/heads/main", "refs/heads/main", true),
        ("refs/heads/main", "refs/heads/mainline", false),
        ("refs/tags/v*", "refs/tags/v1.2", true),
        ("refs/tags/v*", "refs/tags/v", true),
        ("refs/tags/v*", "refs/tags/x1", false),
        ("refs/tags/v*", "refs/tags/v1/evil", false),
        ("refs/heads/*", "refs/heads/feature/x", false),
        ("refs/heads/*/x", "refs/heads/feature/x", true),
        ("refs/heads/re*se-*", "refs/heads/release-2", true),
        ("refs/heads/re*se-*", "refs/heads/rel/se-2", false),
        ("refs/*/main", "refs/heads/main", true),
        ("refs/*", "refs/heads/main", false),
    ] {
        assert_eq!(pattern_matches(pattern, name), want, "{pattern} ~ {name}");
    }
}

fn rule(signers: &[IdentityId], threshold: u8) -> RefRule {
    RefRule {
        signers: signers.iter().copied().collect(),
        threshold,
    }
}

#[test]
fn a_ref_rule_decides_who_moves_its_refs() {
    let mut snap = snapshot();
    let (alice, bob) = (SshKey([0xa1; 32]), SshKey([0xb2; 32]));
    // Bob is no committer, but the tag rule names him; main's rule names only bob, so
    // even the owner may not move main.
    for (pattern, rule) in [
        ("refs/tags/v*", rule(&[2], 1)),
        ("refs/heads/main", rule(&[2], 1)),
        ("refs/heads/release-*", rule(&[1, 2], 2)),
    ] {
        snap.state.apply(Change::RefRuleSet {
            repo: 7,
            pattern: pattern.into(),
            rule,
        });
    }
    let pusher = snap
        .may_push(&bob, &[], "demo", "refs/tags/v1", false)
        .unwrap();
    assert_eq!(pusher.handle, "bob");
    let err = snap
        .may_push(&alice, &[], "demo", "refs/heads/main", false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "key {} belongs to identity alice, who may not move refs/heads/main of repo demo: its ref rule refs/heads/main on chain allows only bob",
            alice.fingerprint()
        )
    );
    // A rewrite of a ruled ref still needs the owner.
    assert!(matches!(
        snap.may_push(&bob, &[], "demo", "refs/heads/main", true),
        Err(Denied::NotOwner { .. })
    ));
    // Refs no rule matches: committers and the owner, as before.
    assert!(
        snap.may_push(&alice, &[], "demo", "refs/heads/dev", false)
            .is_ok()
    );
    assert!(matches!(
        snap.may_push(&bob, &[], "demo", "refs/heads/dev", false),
        Err(Denied::NotCommitter { .. })
    ));
    // Two signatures are needed: one signer's alone is not enough, and says whose
    // are missing; a second key of the same identity, or a non-signer's, adds none.
    let err = snap
        .may_push(&alice, &[], "demo", "refs/heads/release-1", false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refs/heads/release-1 of repo demo needs the signatures of 2 of alice, bob (ref rule refs/heads/release-* on chain); signed so far by alice"
    );
    let Denied::NeedsSignatures(ruled) = err else {
        unreachable!()
    };
    assert_eq!(ruled.missing, "bob");
    snap.state.apply(Change::KeyAdded {
        id: 1,
        key: Key::Ssh(SshKey([0xa2; 32])),
    });
    snap.state.apply(Change::IdentityMinted {
        id: 3,
        holder: addr(3),
        handle: "carol".into(),
    });
    snap.state.apply(Change::KeyAdded {
        id: 3,
        key: Key::Ssh(SshKey([0xc3; 32])),
    });
    for others in [
        &[SshKey([0xa2; 32])][..],
        &[SshKey([0xc3; 32]), SshKey([9; 32])],
    ] {
        assert!(matches!(
            snap.may_push(&alice, others, "demo", "refs/heads/release-1", false),
            Err(Denied::NeedsSignatures(_))
        ));
    }
    // Bob's signature completes it, whoever pushes last; a rewrite needs the owner
    // among them, which alice is.
    assert_eq!(
        snap.may_push(&bob, &[alice], "demo", "refs/heads/release-1", true)
            .unwrap()
            .handle,
        "bob"
    );
    snap.state.apply(Change::RefRuleSet {
        repo: 7,
        pattern: "refs/heads/release-*".into(),
        rule: rule(&[2, 3], 2),
    });
    assert!(matches!(
        snap.may_push(
            &bob,
            &[SshKey([0xc3; 32])],
            "demo",
            "refs/heads/release-1",
            true
        ),
        Err(Denied::NotOwner { .. })
    ));
    assert!(
        snap.may_push(
            &bob,
            &[SshKey([0xc3; 32])],
            "demo",
            "refs/heads/release-1",
            false
        )
        .is_ok()
    );
    // Removing the rule gives main back to committers and the owner.
    snap.state.apply(Change::RefRuleRemoved {
        repo: 7,
        pattern: "refs/heads/main".into(),
    });
    assert!(
        snap.may_push(&alice, &[], "demo", "refs/heads/main", false)
            .is_ok()
    );
}

#[test]
fn the_most_specific_rule_governs() {
    let mut snap = snapshot();
    for (pattern, signers) in [
        ("refs/tags/*", &[1][..]),
        ("refs/tags/v*", &[2][..]),
        ("refs/tags/v1.*", &[1][..]),
        ("refs/tag*/v2", &[1][..]),
    ] {
        snap.state.apply(Change::RefRuleSet {
            repo: 7,
            pattern: pattern.into(),
            rule: rule(signers, 1),
        });
    }
    let (_, repo) = snap.repo("demo").unwrap();
    let governs = |name: &str| repo.rule_for(name).map(|(p, _)| p.to_owned());
    assert_eq!(governs("refs/tags/x").as_deref(), Some("refs/tags/*"));
    assert_eq!(governs("refs/tags/v3").as_deref(), Some("refs/tags/v*"));
    assert_eq!(governs("refs/tags/v1.0").as_deref(), Some("refs/tags/v1.*"));
    // Equal literal lengths ("refs/tags/v*" and "refs/tag*/v2" both have 11): the
    // first in byte order.
    assert_eq!(governs("refs/tags/v2").as_deref(), Some("refs/tag*/v2"));
    assert_eq!(governs("refs/heads/main"), None);
}
