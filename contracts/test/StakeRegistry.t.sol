// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.sol";
import {StakeRegistry} from "../src/StakeRegistry.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

contract Refuser {
    function register(StakeRegistry reg) external payable {
        reg.register{value: msg.value}(bytes32(uint256(0xdead)), "");
    }

    function unstakeAndWithdraw(StakeRegistry reg, uint256 amount) external {
        reg.requestUnstake(StakeRegistry.Role.Operator, amount);
    }

    function withdraw(StakeRegistry reg) external {
        reg.withdraw(StakeRegistry.Role.Operator);
    }
    // No receive(): every payment to this contract fails.
}

contract StakeRegistryTest is Base {
    StakeRegistry reg;
    bytes32 constant KEY_A = bytes32(uint256(0xa1));
    bytes32 constant KEY_B = bytes32(uint256(0xb2));
    uint64 constant UNBONDING = 7 days;

    event ParamsChanged(uint256 minOperatorStake, uint256 minCallerStake, uint64 unbondingPeriod);
    event OperatorRegistered(address indexed operator, bytes32 indexed nodeKey, string endpoint, uint256 stake);
    event NodeKeyChanged(address indexed operator, bytes32 indexed oldNodeKey, bytes32 indexed newNodeKey);
    event EndpointChanged(address indexed operator, string endpoint);
    event StakeDeposited(address indexed account, StakeRegistry.Role indexed role, uint256 amount, uint256 stake);
    event UnstakeRequested(
        address indexed account,
        StakeRegistry.Role indexed role,
        uint256 amount,
        uint256 stake,
        uint256 unbonding,
        uint64 releaseAt
    );
    event Withdrawn(address indexed account, StakeRegistry.Role indexed role, uint256 amount);
    event Slashed(
        address indexed account,
        StakeRegistry.Role indexed role,
        uint256 amount,
        uint256 stake,
        uint256 unbonding,
        string reason
    );
    event SlashedFundsWithdrawn(address indexed to, uint256 amount);

    function setUp() public {
        setUpAccounts();
        vm.warp(1_000_000);
        reg = new StakeRegistry(1 ether, 0.1 ether, UNBONDING, address(this));
    }

    function registerAlice() internal {
        vm.prank(ALICE);
        reg.register{value: 2 ether}(KEY_A, "tcp://a:1");
    }

    // ---- construction and params ----

    function test_constructorSetsParamsAndRoles() public {
        vm.expectEmit(false, false, false, true);
        emit ParamsChanged(3 ether, 1 ether, 60);
        StakeRegistry r = new StakeRegistry(3 ether, 1 ether, 60, ALICE);
        vm.assertEq(r.minOperatorStake(), 3 ether, "min operator");
        vm.assertEq(r.minCallerStake(), 1 ether, "min caller");
        vm.assertEq(uint256(r.unbondingPeriod()), 60, "unbonding");
        vm.assertEq(r.hasRole(r.DEFAULT_ADMIN_ROLE(), ALICE), true, "admin");
        vm.assertEq(r.hasRole(r.SLASHER_ROLE(), ALICE), true, "slasher");
    }

    function test_setParams() public {
        vm.expectEmit(false, false, false, true, address(reg));
        emit ParamsChanged(5 ether, 2 ether, 1 days);
        reg.setParams(5 ether, 2 ether, 1 days);
        vm.assertEq(reg.minOperatorStake(), 5 ether, "min operator");
        vm.assertEq(reg.minCallerStake(), 2 ether, "min caller");
        vm.assertEq(uint256(reg.unbondingPeriod()), 1 days, "unbonding");
    }

    function test_setParams_revertsForNonAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, BOB, reg.DEFAULT_ADMIN_ROLE()
            )
        );
        vm.prank(BOB);
        reg.setParams(0, 0, 0);
    }

    // ---- register ----

    function test_register() public {
        vm.expectEmit(true, true, false, true, address(reg));
        emit OperatorRegistered(ALICE, KEY_A, "tcp://a:1", 2 ether);
        registerAlice();
        (bytes32 key, string memory endpoint, uint256 stake, uint256 unbonding, uint64 releaseAt) = reg.operator(ALICE);
        vm.assertEq(key, KEY_A, "node key");
        vm.assertEq(endpoint, "tcp://a:1", "endpoint");
        vm.assertEq(stake, 2 ether, "stake");
        vm.assertEq(unbonding, 0, "unbonding");
        vm.assertEq(uint256(releaseAt), 0, "releaseAt");
        vm.assertEq(reg.operatorOfNodeKey(KEY_A), ALICE, "key index");
        vm.assertEq(reg.isActiveOperator(ALICE), true, "active");
        vm.assertEq(address(reg).balance, 2 ether, "held");
    }

    function test_register_revertsBelowMinimum() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.StakeBelowMinimum.selector, 0.5 ether, 1 ether));
        vm.prank(ALICE);
        reg.register{value: 0.5 ether}(KEY_A, "");
    }

    function test_register_revertsOnZeroKey() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroNodeKey.selector));
        vm.prank(ALICE);
        reg.register{value: 1 ether}(bytes32(0), "");
    }

    function test_register_revertsTwice() public {
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.AlreadyRegistered.selector, ALICE));
        vm.prank(ALICE);
        reg.register{value: 1 ether}(KEY_B, "");
    }

    function test_register_revertsOnTakenKey() public {
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NodeKeyTaken.selector, KEY_A, ALICE));
        vm.prank(BOB);
        reg.register{value: 1 ether}(KEY_A, "");
    }

    function test_register_revertsOnLongEndpoint() public {
        bytes memory long = new bytes(257);
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.EndpointTooLong.selector, 257, 256));
        vm.prank(ALICE);
        reg.register{value: 1 ether}(KEY_A, string(long));
    }

    // ---- node key and endpoint ----

    function test_setNodeKey() public {
        registerAlice();
        vm.expectEmit(true, true, true, true, address(reg));
        emit NodeKeyChanged(ALICE, KEY_A, KEY_B);
        vm.prank(ALICE);
        reg.setNodeKey(KEY_B);
        vm.assertEq(reg.operatorOfNodeKey(KEY_A), address(0), "old key freed");
        vm.assertEq(reg.operatorOfNodeKey(KEY_B), ALICE, "new key");
        // The old key is free for others now.
        vm.prank(BOB);
        reg.register{value: 1 ether}(KEY_A, "");
        vm.assertEq(reg.operatorOfNodeKey(KEY_A), BOB, "reused");
    }

    function test_setNodeKey_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NotRegistered.selector, ALICE));
        vm.prank(ALICE);
        reg.setNodeKey(KEY_B);
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NodeKeyTaken.selector, KEY_A, ALICE));
        vm.prank(ALICE);
        reg.setNodeKey(KEY_A);
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroNodeKey.selector));
        vm.prank(ALICE);
        reg.setNodeKey(bytes32(0));
    }

    function test_setEndpoint() public {
        registerAlice();
        vm.expectEmit(true, false, false, true, address(reg));
        emit EndpointChanged(ALICE, "tcp://b:2");
        vm.prank(ALICE);
        reg.setEndpoint("tcp://b:2");
        (, string memory endpoint,,,) = reg.operator(ALICE);
        vm.assertEq(endpoint, "tcp://b:2", "endpoint");
    }

    function test_setEndpoint_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NotRegistered.selector, ALICE));
        vm.prank(ALICE);
        reg.setEndpoint("x");
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.EndpointTooLong.selector, 300, 256));
        vm.prank(ALICE);
        reg.setEndpoint(string(new bytes(300)));
    }

    // ---- deposits ----

    function test_depositOperator() public {
        registerAlice();
        vm.expectEmit(true, true, false, true, address(reg));
        emit StakeDeposited(ALICE, StakeRegistry.Role.Operator, 3 ether, 5 ether);
        vm.prank(ALICE);
        reg.depositOperator{value: 3 ether}();
        (,, uint256 stake,,) = reg.operator(ALICE);
        vm.assertEq(stake, 5 ether, "stake");
    }

    function test_depositOperator_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NotRegistered.selector, ALICE));
        vm.prank(ALICE);
        reg.depositOperator{value: 1 ether}();
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroAmount.selector));
        vm.prank(ALICE);
        reg.depositOperator();
    }

    function test_callerDeposit() public {
        vm.expectEmit(true, true, false, true, address(reg));
        emit StakeDeposited(BOB, StakeRegistry.Role.Caller, 0.1 ether, 0.1 ether);
        vm.prank(BOB);
        reg.deposit{value: 0.1 ether}();
        // Once above the minimum, any top-up is fine.
        vm.prank(BOB);
        reg.deposit{value: 1 wei}();
        (uint256 stake,,) = reg.caller(BOB);
        vm.assertEq(stake, 0.1 ether + 1, "stake");
    }

    function test_callerDeposit_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroAmount.selector));
        vm.prank(BOB);
        reg.deposit();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.StakeBelowMinimum.selector, 0.05 ether, 0.1 ether));
        vm.prank(BOB);
        reg.deposit{value: 0.05 ether}();
    }

    // ---- unbonding ----

    function test_unbondingArithmetic() public {
        registerAlice(); // 2 ether
        vm.expectEmit(true, true, false, true, address(reg));
        emit UnstakeRequested(ALICE, StakeRegistry.Role.Operator, 1.5 ether, 0.5 ether, 1.5 ether, 1_000_000 + UNBONDING);
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Operator, 1.5 ether);
        // Unbonding stake does not count: 0.5 < 1 ether minimum.
        vm.assertEq(reg.isActiveOperator(ALICE), false, "inactive");

        // A second request a day later adds up and restarts the period.
        vm.warp(1_000_000 + 1 days);
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Operator, 0.25 ether);
        (,, uint256 stake, uint256 unbonding, uint64 releaseAt) = reg.operator(ALICE);
        vm.assertEq(stake, 0.25 ether, "stake");
        vm.assertEq(unbonding, 1.75 ether, "unbonding");
        vm.assertEq(uint256(releaseAt), 1_000_000 + 1 days + UNBONDING, "releaseAt");

        // Too early by one second.
        vm.warp(releaseAt - 1);
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.StillUnbonding.selector, releaseAt, releaseAt - 1));
        vm.prank(ALICE);
        reg.withdraw(StakeRegistry.Role.Operator);

        vm.warp(releaseAt);
        uint256 before = ALICE.balance;
        vm.expectEmit(true, true, false, true, address(reg));
        emit Withdrawn(ALICE, StakeRegistry.Role.Operator, 1.75 ether);
        vm.prank(ALICE);
        reg.withdraw(StakeRegistry.Role.Operator);
        vm.assertEq(ALICE.balance, before + 1.75 ether, "paid out");
        (,, stake, unbonding, releaseAt) = reg.operator(ALICE);
        vm.assertEq(stake, 0.25 ether, "stake kept");
        vm.assertEq(unbonding, 0, "unbonding cleared");
        vm.assertEq(uint256(releaseAt), 0, "releaseAt cleared");
        vm.assertEq(address(reg).balance, 0.25 ether, "held");

        // Nothing left to withdraw.
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NothingToWithdraw.selector));
        vm.prank(ALICE);
        reg.withdraw(StakeRegistry.Role.Operator);
    }

    function test_callerUnbonding() public {
        vm.prank(BOB);
        reg.deposit{value: 1 ether}();
        vm.prank(BOB);
        reg.requestUnstake(StakeRegistry.Role.Caller, 1 ether);
        (uint256 stake, uint256 unbonding, uint64 releaseAt) = reg.caller(BOB);
        vm.assertEq(stake, 0, "stake");
        vm.assertEq(unbonding, 1 ether, "unbonding");
        vm.warp(releaseAt);
        uint256 before = BOB.balance;
        vm.prank(BOB);
        reg.withdraw(StakeRegistry.Role.Caller);
        vm.assertEq(BOB.balance, before + 1 ether, "paid out");
    }

    function test_requestUnstake_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroAmount.selector));
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Caller, 0);
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NotRegistered.selector, ALICE));
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Operator, 1);
        registerAlice();
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.InsufficientStake.selector, 3 ether, 2 ether));
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Operator, 3 ether);
    }

    function test_withdraw_revertsWhenTransferFails() public {
        Refuser r = new Refuser();
        r.register{value: 1 ether}(reg);
        r.unstakeAndWithdraw(reg, 1 ether);
        vm.warp(block.timestamp + UNBONDING);
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.TransferFailed.selector, address(r), 1 ether));
        r.withdraw(reg);
    }

    // ---- slashing ----

    function test_slashTakesActiveStakeFirst() public {
        registerAlice(); // 2 ether
        vm.prank(ALICE);
        reg.requestUnstake(StakeRegistry.Role.Operator, 0.5 ether); // 1.5 active, 0.5 unbonding
        vm.expectEmit(true, true, false, true, address(reg));
        emit Slashed(ALICE, StakeRegistry.Role.Operator, 1 ether, 0.5 ether, 0.5 ether, "double sign");
        reg.slash(ALICE, StakeRegistry.Role.Operator, 1 ether, "double sign");
        vm.assertEq(reg.isActiveOperator(ALICE), false, "below minimum");

        // The rest of the active stake, then into unbonding.
        vm.expectEmit(true, true, false, true, address(reg));
        emit Slashed(ALICE, StakeRegistry.Role.Operator, 0.75 ether, 0, 0.25 ether, "again");
        reg.slash(ALICE, StakeRegistry.Role.Operator, 0.75 ether, "again");
        (,, uint256 stake, uint256 unbonding,) = reg.operator(ALICE);
        vm.assertEq(stake, 0, "stake");
        vm.assertEq(unbonding, 0.25 ether, "unbonding");
        vm.assertEq(reg.slashedFunds(), 1.75 ether, "slashed funds");
    }

    function test_slashCaller() public {
        vm.prank(BOB);
        reg.deposit{value: 1 ether}();
        reg.slash(BOB, StakeRegistry.Role.Caller, 0.4 ether, "abuse");
        (uint256 stake,,) = reg.caller(BOB);
        vm.assertEq(stake, 0.6 ether, "stake");
    }

    function test_slash_reverts() public {
        registerAlice();
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, BOB, reg.SLASHER_ROLE())
        );
        vm.prank(BOB);
        reg.slash(ALICE, StakeRegistry.Role.Operator, 1, "");
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.ZeroAmount.selector));
        reg.slash(ALICE, StakeRegistry.Role.Operator, 0, "");
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.InsufficientStake.selector, 3 ether, 2 ether));
        reg.slash(ALICE, StakeRegistry.Role.Operator, 3 ether, "");
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NotRegistered.selector, BOB));
        reg.slash(BOB, StakeRegistry.Role.Operator, 1, "");
    }

    function test_withdrawSlashed() public {
        registerAlice();
        reg.slash(ALICE, StakeRegistry.Role.Operator, 1 ether, "x");
        vm.expectEmit(true, false, false, true, address(reg));
        emit SlashedFundsWithdrawn(CAROL, 1 ether);
        uint256 before = CAROL.balance;
        reg.withdrawSlashed(payable(CAROL));
        vm.assertEq(CAROL.balance, before + 1 ether, "paid");
        vm.assertEq(reg.slashedFunds(), 0, "cleared");
        vm.expectRevert(abi.encodeWithSelector(StakeRegistry.NothingToWithdraw.selector));
        reg.withdrawSlashed(payable(CAROL));
    }

    function test_withdrawSlashed_revertsForNonAdmin() public {
        vm.expectRevert(
            abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, BOB, reg.DEFAULT_ADMIN_ROLE()
            )
        );
        vm.prank(BOB);
        reg.withdrawSlashed(payable(BOB));
    }
}
