// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.sol";
import {IdentityToken} from "../src/IdentityToken.sol";
import {RepoToken} from "../src/RepoToken.sol";
import {Handles} from "../src/Handles.sol";

contract IdentityTokenTest is Base {
    IdentityToken ids;
    bytes32 constant SSH1 = bytes32(uint256(0x5511));
    bytes32 constant SSH2 = bytes32(uint256(0x5522));
    bytes32 immutable ETH_BOB = bytes32(uint256(uint160(BOB)));

    event IdentityMinted(uint256 indexed id, address indexed holder, string handle);
    event KeyAdded(uint256 indexed id, IdentityToken.KeyKind kind, bytes32 key);
    event KeyRevoked(uint256 indexed id, IdentityToken.KeyKind kind, bytes32 key);
    event KeysCleared(uint256 indexed id, address indexed newHolder);

    function setUp() public {
        ids = new IdentityToken();
    }

    function mintAlice() internal returns (uint256 id) {
        vm.prank(ALICE);
        id = ids.mint("alice");
    }

    function test_mint() public {
        vm.expectEmit(true, true, false, true, address(ids));
        emit IdentityMinted(1, ALICE, "alice");
        uint256 id = mintAlice();
        vm.assertEq(id, 1, "first id");
        vm.assertEq(ids.ownerOf(1), ALICE, "holder");
        vm.assertEq(ids.handleOf(1), "alice", "handle");
        vm.assertEq(ids.idOfHandle("alice"), 1, "by handle");
        vm.assertEq(ids.exists(1), true, "exists");
        vm.assertEq(ids.exists(2), false, "not minted");
        vm.prank(BOB);
        vm.assertEq(ids.mint("bob"), 2, "second id");
    }

    function test_mint_revertsOnTakenHandle() public {
        mintAlice();
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.HandleTaken.selector, "alice", 1));
        vm.prank(BOB);
        ids.mint("alice");
    }

    function test_mint_revertsOnInvalidHandle() public {
        string[5] memory bad = ["", "Alice", "a b", "-x", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"];
        for (uint256 i = 0; i < bad.length; i++) {
            vm.expectRevert(abi.encodeWithSelector(Handles.InvalidName.selector, bad[i]));
            ids.mint(bad[i]);
        }
        vm.prank(ALICE);
        ids.mint("a.b-c_9");
    }

    function test_idOfHandle_revertsWhenUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.UnknownHandle.selector, "nobody"));
        ids.idOfHandle("nobody");
    }

    function test_addAndRevokeKeys() public {
        uint256 id = mintAlice();
        vm.expectEmit(true, false, false, true, address(ids));
        emit KeyAdded(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.startPrank(ALICE);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH2);
        ids.addKey(id, IdentityToken.KeyKind.Eth, ETH_BOB);
        vm.assertEq(ids.keyOwner(IdentityToken.KeyKind.Ssh, SSH1), id, "ssh1");
        vm.assertEq(ids.keyOwner(IdentityToken.KeyKind.Eth, ETH_BOB), id, "eth");
        // Kinds are separate namespaces.
        vm.assertEq(ids.keyOwner(IdentityToken.KeyKind.Eth, SSH1), 0, "kind matters");
        vm.assertEq(ids.keysOf(id).length, 3, "three keys");

        vm.expectEmit(true, false, false, true, address(ids));
        emit KeyRevoked(id, IdentityToken.KeyKind.Ssh, SSH1);
        ids.revokeKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.stopPrank();
        vm.assertEq(ids.keyOwner(IdentityToken.KeyKind.Ssh, SSH1), 0, "revoked");
        IdentityToken.Key[] memory keys = ids.keysOf(id);
        vm.assertEq(keys.length, 2, "two keys");
        vm.assertEq(keys[0].key, ETH_BOB, "last moved into the gap");
        vm.assertEq(keys[1].key, SSH2, "order");
    }

    function test_addKey_reverts() public {
        uint256 id = mintAlice();
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.startPrank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.ZeroKey.selector));
        ids.addKey(id, IdentityToken.KeyKind.Ssh, bytes32(0));
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.stopPrank();
        // The same key cannot belong to a second identity.
        vm.prank(BOB);
        uint256 bob = ids.mint("bob");
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.KeyTaken.selector, IdentityToken.KeyKind.Ssh, SSH1, id));
        vm.prank(BOB);
        ids.addKey(bob, IdentityToken.KeyKind.Ssh, SSH1);
    }

    function test_addKey_revertsPastMaximum() public {
        uint256 id = mintAlice();
        vm.startPrank(ALICE);
        for (uint256 i = 1; i <= 16; i++) {
            ids.addKey(id, IdentityToken.KeyKind.Ssh, bytes32(i));
        }
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.TooManyKeys.selector, id, 16));
        ids.addKey(id, IdentityToken.KeyKind.Ssh, bytes32(uint256(17)));
        vm.stopPrank();
    }

    function test_revokeKey_reverts() public {
        uint256 id = mintAlice();
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        ids.revokeKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.KeyNotFound.selector, id, IdentityToken.KeyKind.Ssh, SSH1));
        vm.prank(ALICE);
        ids.revokeKey(id, IdentityToken.KeyKind.Ssh, SSH1);
    }

    function test_transferClearsKeys() public {
        uint256 id = mintAlice();
        vm.startPrank(ALICE);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        ids.addKey(id, IdentityToken.KeyKind.Eth, ETH_BOB);
        vm.expectEmit(true, true, false, true, address(ids));
        emit KeysCleared(id, CAROL);
        ids.transferFrom(ALICE, CAROL, id);
        vm.stopPrank();
        vm.assertEq(ids.keysOf(id).length, 0, "no keys");
        vm.assertEq(ids.keyOwner(IdentityToken.KeyKind.Ssh, SSH1), 0, "index cleared");
        vm.assertEq(ids.handleOf(id), "alice", "handle stays");
        // The new holder manages keys; the old one no longer can.
        vm.prank(CAROL);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH1);
        vm.expectRevert(abi.encodeWithSelector(IdentityToken.NotHolder.selector, id, ALICE));
        vm.prank(ALICE);
        ids.addKey(id, IdentityToken.KeyKind.Ssh, SSH2);
    }
}

contract RepoTokenTest is Base {
    IdentityToken ids;
    RepoToken repos;
    uint256 alice;
    uint256 bob;
    bytes32 constant NODE = bytes32(uint256(0x90de));

    event RepoCreated(
        uint256 indexed repoId, address indexed holder, string name, uint256 indexed ownerIdentity, bool isPrivate
    );
    event OwnerIdentityChanged(uint256 indexed repoId, uint256 indexed ownerIdentity);
    event VisibilityChanged(uint256 indexed repoId, bool isPrivate);
    event MemberAdded(uint256 indexed repoId, uint256 indexed identity, RepoToken.Member role);
    event MemberRemoved(uint256 indexed repoId, uint256 indexed identity, RepoToken.Member role);
    event ReplicatorAdded(uint256 indexed repoId, bytes32 indexed nodeKey);
    event ReplicatorRemoved(uint256 indexed repoId, bytes32 indexed nodeKey);
    event RepoBurned(uint256 indexed repoId, string name);
    event DefaultBranchChanged(uint256 indexed repoId, string branch);
    event RefRuleSet(uint256 indexed repoId, string pattern, uint256[] signers, uint8 threshold);
    event RefRuleRemoved(uint256 indexed repoId, string pattern);

    function setUp() public {
        ids = new IdentityToken();
        repos = new RepoToken(ids);
        vm.prank(ALICE);
        alice = ids.mint("alice");
        vm.prank(BOB);
        bob = ids.mint("bob");
    }

    function createDemo() internal returns (uint256 repoId) {
        vm.prank(ALICE);
        repoId = repos.create("demo", alice, false);
    }

    function test_create() public {
        vm.expectEmit(true, true, true, true, address(repos));
        emit RepoCreated(1, ALICE, "demo", alice, true);
        vm.prank(ALICE);
        uint256 id = repos.create("demo", alice, true);
        (string memory name, uint256 owner, bool isPrivate) = repos.repo(id);
        vm.assertEq(name, "demo", "name");
        vm.assertEq(owner, alice, "owner identity");
        vm.assertEq(isPrivate, true, "private");
        vm.assertEq(repos.ownerOf(id), ALICE, "holder");
        vm.assertEq(repos.idOfName("demo"), id, "by name");
        vm.assertEq(address(repos.identities()), address(ids), "identities");
    }

    function test_create_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(Handles.InvalidName.selector, "Demo"));
        repos.create("Demo", alice, false);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.UnknownIdentity.selector, 99));
        repos.create("demo", 99, false);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotIdentityHolder.selector, alice, BOB));
        vm.prank(BOB);
        repos.create("demo", alice, false);
        createDemo();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NameTaken.selector, "demo", 1));
        vm.prank(BOB);
        repos.create("demo", bob, false);
    }

    function test_idOfName_revertsWhenUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(RepoToken.UnknownRepo.selector, "nope"));
        repos.idOfName("nope");
    }

    function test_members() public {
        uint256 id = createDemo();
        vm.expectEmit(true, true, false, true, address(repos));
        emit MemberAdded(id, bob, RepoToken.Member.Committer);
        vm.startPrank(ALICE);
        repos.addMember(id, bob, RepoToken.Member.Committer);
        repos.addMember(id, bob, RepoToken.Member.Reader);
        vm.assertEq(repos.isMember(id, bob, RepoToken.Member.Committer), true, "committer");
        vm.assertEq(repos.isMember(id, bob, RepoToken.Member.Reader), true, "reader");
        vm.expectEmit(true, true, false, true, address(repos));
        emit MemberRemoved(id, bob, RepoToken.Member.Committer);
        repos.removeMember(id, bob, RepoToken.Member.Committer);
        vm.stopPrank();
        vm.assertEq(repos.isMember(id, bob, RepoToken.Member.Committer), false, "removed");
        vm.assertEq(repos.isMember(id, bob, RepoToken.Member.Reader), true, "roles are separate");
    }

    function test_members_revert() public {
        uint256 id = createDemo();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.addMember(id, bob, RepoToken.Member.Committer);
        vm.startPrank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.UnknownIdentity.selector, 42));
        repos.addMember(id, 42, RepoToken.Member.Committer);
        repos.addMember(id, bob, RepoToken.Member.Committer);
        vm.expectRevert(
            abi.encodeWithSelector(RepoToken.AlreadyMember.selector, id, bob, RepoToken.Member.Committer)
        );
        repos.addMember(id, bob, RepoToken.Member.Committer);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotMember.selector, id, bob, RepoToken.Member.Reader));
        repos.removeMember(id, bob, RepoToken.Member.Reader);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.removeMember(id, bob, RepoToken.Member.Committer);
    }

    function test_replicators() public {
        uint256 id = createDemo();
        vm.startPrank(ALICE);
        vm.expectEmit(true, true, false, true, address(repos));
        emit ReplicatorAdded(id, NODE);
        repos.addReplicator(id, NODE);
        vm.assertEq(repos.isReplicator(id, NODE), true, "added");
        vm.expectRevert(abi.encodeWithSelector(RepoToken.AlreadyReplicator.selector, id, NODE));
        repos.addReplicator(id, NODE);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.ZeroNodeKey.selector));
        repos.addReplicator(id, bytes32(0));
        vm.expectEmit(true, true, false, true, address(repos));
        emit ReplicatorRemoved(id, NODE);
        repos.removeReplicator(id, NODE);
        vm.assertEq(repos.isReplicator(id, NODE), false, "removed");
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotReplicator.selector, id, NODE));
        repos.removeReplicator(id, NODE);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.addReplicator(id, NODE);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.removeReplicator(id, NODE);
    }

    function test_visibilityAndOwner() public {
        uint256 id = createDemo();
        vm.expectEmit(true, false, false, true, address(repos));
        emit VisibilityChanged(id, true);
        vm.prank(ALICE);
        repos.setPrivate(id, true);
        (,, bool isPrivate) = repos.repo(id);
        vm.assertEq(isPrivate, true, "private");
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.setPrivate(id, false);

        // Hand the repo to Bob, who then names his own identity as owner.
        vm.prank(ALICE);
        repos.transferFrom(ALICE, BOB, id);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotIdentityHolder.selector, alice, BOB));
        vm.prank(BOB);
        repos.setOwnerIdentity(id, alice);
        vm.expectEmit(true, true, false, true, address(repos));
        emit OwnerIdentityChanged(id, bob);
        vm.prank(BOB);
        repos.setOwnerIdentity(id, bob);
        (, uint256 owner,) = repos.repo(id);
        vm.assertEq(owner, bob, "owner identity");
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, ALICE));
        vm.prank(ALICE);
        repos.setOwnerIdentity(id, alice);
    }

    function test_burnFreesName() public {
        uint256 id = createDemo();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.burn(id);
        vm.expectEmit(true, false, false, true, address(repos));
        emit RepoBurned(id, "demo");
        vm.prank(ALICE);
        repos.burn(id);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.UnknownRepo.selector, "demo"));
        repos.idOfName("demo");
        vm.prank(BOB);
        uint256 again = repos.create("demo", bob, false);
        vm.assertEq(again, id + 1, "fresh id");
    }

    function test_defaultBranch() public {
        uint256 id = createDemo();
        vm.assertEq(repos.defaultBranch(id), "", "none at first");
        vm.expectEmit(true, false, false, true, address(repos));
        emit DefaultBranchChanged(id, "unstable");
        vm.prank(ALICE);
        repos.setDefaultBranch(id, "unstable");
        vm.assertEq(repos.defaultBranch(id), "unstable", "set");
        vm.prank(ALICE);
        repos.setDefaultBranch(id, "release/2.x");
        vm.assertEq(repos.defaultBranch(id), "release/2.x", "nested");
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.setDefaultBranch(id, "main");
        string[9] memory bad = ["a b", "a..b", "-x", ".x", "x/", "x.lock", "a//b", "x*", "a/.b"];
        for (uint256 i = 0; i < bad.length; i++) {
            vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidRefName.selector, bad[i]));
            vm.prank(ALICE);
            repos.setDefaultBranch(id, bad[i]);
        }
        vm.prank(ALICE);
        repos.setDefaultBranch(id, "");
        vm.assertEq(repos.defaultBranch(id), "", "cleared");
    }

    function signers(uint256 a, uint256 b) internal pure returns (uint256[] memory s) {
        s = new uint256[](2);
        s[0] = a;
        s[1] = b;
    }

    function test_refRules() public {
        uint256 id = createDemo();
        uint256[] memory both = signers(alice, bob);
        vm.expectEmit(true, false, false, true, address(repos));
        emit RefRuleSet(id, "refs/heads/main", both, 2);
        vm.prank(ALICE);
        repos.setRefRule(id, "refs/heads/main", both, 2);
        (uint256[] memory got, uint8 k) = repos.refRule(id, "refs/heads/main");
        vm.assertEq(k, 2, "threshold");
        vm.assertEq(got.length, 2, "signers");
        vm.assertEq(got[1], bob, "second signer");

        // Replacing a rule keeps one entry for the pattern.
        vm.prank(ALICE);
        repos.setRefRule(id, "refs/heads/main", both, 1);
        vm.prank(ALICE);
        repos.setRefRule(id, "refs/tags/v*", both, 2);
        vm.assertEq(repos.refRulePatterns(id).length, 2, "two patterns");
        (, k) = repos.refRule(id, "refs/heads/main");
        vm.assertEq(k, 1, "replaced");

        vm.expectEmit(true, false, false, true, address(repos));
        emit RefRuleRemoved(id, "refs/heads/main");
        vm.prank(ALICE);
        repos.removeRefRule(id, "refs/heads/main");
        string[] memory left = repos.refRulePatterns(id);
        vm.assertEq(left.length, 1, "one left");
        vm.assertEq(left[0], "refs/tags/v*", "the tag rule is left");
        (got, k) = repos.refRule(id, "refs/heads/main");
        vm.assertEq(k, 0, "no rule");
        vm.assertEq(got.length, 0, "no signers");
    }

    function test_refRules_revert() public {
        uint256 id = createDemo();
        uint256[] memory both = signers(alice, bob);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.setRefRule(id, "refs/heads/main", both, 1);
        vm.startPrank(ALICE);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidRefName.selector, "heads/main"));
        repos.setRefRule(id, "heads/main", both, 1);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidRefName.selector, "refs/"));
        repos.setRefRule(id, "refs/", both, 1);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidRefName.selector, "refs/heads/a b"));
        repos.setRefRule(id, "refs/heads/a b", both, 1);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidThreshold.selector, 0, 2));
        repos.setRefRule(id, "refs/heads/main", both, 0);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.InvalidThreshold.selector, 3, 2));
        repos.setRefRule(id, "refs/heads/main", both, 3);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.DuplicateSigner.selector, alice));
        repos.setRefRule(id, "refs/heads/main", signers(alice, alice), 1);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.UnknownIdentity.selector, 77));
        repos.setRefRule(id, "refs/heads/main", signers(alice, 77), 1);
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NoRefRule.selector, id, "refs/heads/main"));
        repos.removeRefRule(id, "refs/heads/main");
        for (uint256 i = 0; i < repos.MAX_RULES(); i++) {
            repos.setRefRule(id, string.concat("refs/heads/b", vm.toString(i)), both, 1);
        }
        vm.expectRevert(abi.encodeWithSelector(RepoToken.TooManyRules.selector, id));
        repos.setRefRule(id, "refs/heads/one-more", both, 1);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(RepoToken.NotHolder.selector, id, BOB));
        vm.prank(BOB);
        repos.removeRefRule(id, "refs/heads/b0");
    }

    function test_burnClearsSettings() public {
        uint256 id = createDemo();
        vm.startPrank(ALICE);
        repos.setDefaultBranch(id, "unstable");
        repos.setRefRule(id, "refs/heads/main", signers(alice, bob), 2);
        repos.burn(id);
        vm.stopPrank();
        vm.assertEq(repos.defaultBranch(id), "", "default branch cleared");
        vm.assertEq(repos.refRulePatterns(id).length, 0, "patterns cleared");
        (, uint8 k) = repos.refRule(id, "refs/heads/main");
        vm.assertEq(k, 0, "rule cleared");
    }
}
