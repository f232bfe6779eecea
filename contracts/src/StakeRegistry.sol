// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title StakeRegistry
/// @notice Native-currency stake for the two kinds of staked accounts of a hanzo network:
/// operators, who run nodes and register the node's ed25519 key, and callers (dApps,
/// platforms), who are served RPC. Stake under unbonding does not count. Every state
/// change emits an event carrying the resulting values, so a log reader can follow the
/// registry without calls.
contract StakeRegistry is AccessControl, ReentrancyGuard {
    /// @notice Which balance of an account an action applies to.
    enum Role {
        Operator,
        Caller
    }

    /// @notice May call `slash`.
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");

    /// @notice Longest accepted endpoint string, in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;

    struct Balance {
        uint256 stake;
        uint256 unbonding;
        uint64 releaseAt;
    }

    struct Operator {
        bytes32 nodeKey;
        string endpoint;
        Balance balance;
    }

    uint256 public minOperatorStake;
    uint256 public minCallerStake;
    uint64 public unbondingPeriod;
    /// @notice Slashed stake held until an admin withdraws it.
    uint256 public slashedFunds;

    mapping(address => Operator) private _operators;
    mapping(bytes32 => address) public operatorOfNodeKey;
    mapping(address => Balance) private _callers;

    error ZeroNodeKey();
    error NodeKeyTaken(bytes32 nodeKey, address operator);
    error AlreadyRegistered(address operator);
    error NotRegistered(address operator);
    error EndpointTooLong(uint256 length, uint256 max);
    error StakeBelowMinimum(uint256 stake, uint256 minimum);
    error ZeroAmount();
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw();
    error StillUnbonding(uint64 releaseAt, uint64 now_);
    error TransferFailed(address to, uint256 amount);

    /// @notice Stake parameters; emitted at construction and on every change.
    event ParamsChanged(uint256 minOperatorStake, uint256 minCallerStake, uint64 unbondingPeriod);
    event OperatorRegistered(address indexed operator, bytes32 indexed nodeKey, string endpoint, uint256 stake);
    event NodeKeyChanged(address indexed operator, bytes32 indexed oldNodeKey, bytes32 indexed newNodeKey);
    event EndpointChanged(address indexed operator, string endpoint);
    /// @notice `stake` is the account's active stake for `role` after the deposit.
    event StakeDeposited(address indexed account, Role indexed role, uint256 amount, uint256 stake);
    /// @notice `stake` and `unbonding` are the balances after the request; all unbonding
    /// stake is released at `releaseAt`.
    event UnstakeRequested(
        address indexed account, Role indexed role, uint256 amount, uint256 stake, uint256 unbonding, uint64 releaseAt
    );
    event Withdrawn(address indexed account, Role indexed role, uint256 amount);
    /// @notice Slashing takes from active stake first, then from unbonding stake.
    event Slashed(
        address indexed account, Role indexed role, uint256 amount, uint256 stake, uint256 unbonding, string reason
    );
    event SlashedFundsWithdrawn(address indexed to, uint256 amount);

    constructor(uint256 minOperatorStake_, uint256 minCallerStake_, uint64 unbondingPeriod_, address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(SLASHER_ROLE, admin);
        _setParams(minOperatorStake_, minCallerStake_, unbondingPeriod_);
    }

    // ---- operators ----

    /// @notice Register the sender as an operator running the node with `nodeKey`
    /// (its ed25519 public key), reachable at `endpoint`, staking `msg.value`.
    function register(bytes32 nodeKey, string calldata endpoint) external payable {
        Operator storage op = _operators[msg.sender];
        if (op.nodeKey != bytes32(0)) revert AlreadyRegistered(msg.sender);
        _claimNodeKey(nodeKey);
        _checkEndpoint(endpoint);
        if (msg.value < minOperatorStake) revert StakeBelowMinimum(msg.value, minOperatorStake);
        op.nodeKey = nodeKey;
        op.endpoint = endpoint;
        op.balance.stake = msg.value;
        emit OperatorRegistered(msg.sender, nodeKey, endpoint, msg.value);
    }

    /// @notice Move the sender's registration to a new node key.
    function setNodeKey(bytes32 nodeKey) external {
        Operator storage op = _registered(msg.sender);
        bytes32 old = op.nodeKey;
        _claimNodeKey(nodeKey);
        delete operatorOfNodeKey[old];
        op.nodeKey = nodeKey;
        emit NodeKeyChanged(msg.sender, old, nodeKey);
    }

    function setEndpoint(string calldata endpoint) external {
        Operator storage op = _registered(msg.sender);
        _checkEndpoint(endpoint);
        op.endpoint = endpoint;
        emit EndpointChanged(msg.sender, endpoint);
    }

    /// @notice Add `msg.value` to the sender's operator stake.
    function depositOperator() external payable {
        Operator storage op = _registered(msg.sender);
        if (msg.value == 0) revert ZeroAmount();
        op.balance.stake += msg.value;
        emit StakeDeposited(msg.sender, Role.Operator, msg.value, op.balance.stake);
    }

    // ---- callers ----

    /// @notice Add `msg.value` to the sender's caller stake; the result must reach the
    /// caller minimum.
    function deposit() external payable {
        if (msg.value == 0) revert ZeroAmount();
        Balance storage b = _callers[msg.sender];
        uint256 stake = b.stake + msg.value;
        if (stake < minCallerStake) revert StakeBelowMinimum(stake, minCallerStake);
        b.stake = stake;
        emit StakeDeposited(msg.sender, Role.Caller, msg.value, stake);
    }

    // ---- both ----

    /// @notice Start unbonding `amount` of the sender's `role` stake. It stops counting at
    /// once and can be withdrawn after `unbondingPeriod`; a new request restarts the
    /// period for everything unbonding.
    function requestUnstake(Role role, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Balance storage b = _balance(msg.sender, role);
        if (amount > b.stake) revert InsufficientStake(amount, b.stake);
        b.stake -= amount;
        b.unbonding += amount;
        b.releaseAt = uint64(block.timestamp) + unbondingPeriod;
        emit UnstakeRequested(msg.sender, role, amount, b.stake, b.unbonding, b.releaseAt);
    }

    /// @notice Pay out the sender's unbonded `role` stake once its period is over.
    function withdraw(Role role) external nonReentrant {
        Balance storage b = _balance(msg.sender, role);
        uint256 amount = b.unbonding;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < b.releaseAt) revert StillUnbonding(b.releaseAt, uint64(block.timestamp));
        b.unbonding = 0;
        b.releaseAt = 0;
        emit Withdrawn(msg.sender, role, amount);
        _send(payable(msg.sender), amount);
    }

    // ---- slashing and admin ----

    /// @notice Take up to `amount` from `account`'s `role` stake, active stake first.
    function slash(address account, Role role, uint256 amount, string calldata reason)
        external
        onlyRole(SLASHER_ROLE)
    {
        if (amount == 0) revert ZeroAmount();
        Balance storage b = role == Role.Operator ? _registered(account).balance : _callers[account];
        uint256 available = b.stake + b.unbonding;
        if (amount > available) revert InsufficientStake(amount, available);
        uint256 fromStake = amount < b.stake ? amount : b.stake;
        b.stake -= fromStake;
        b.unbonding -= amount - fromStake;
        slashedFunds += amount;
        emit Slashed(account, role, amount, b.stake, b.unbonding, reason);
    }

    function withdrawSlashed(address payable to) external onlyRole(DEFAULT_ADMIN_ROLE) nonReentrant {
        uint256 amount = slashedFunds;
        if (amount == 0) revert NothingToWithdraw();
        slashedFunds = 0;
        emit SlashedFundsWithdrawn(to, amount);
        _send(to, amount);
    }

    function setParams(uint256 minOperatorStake_, uint256 minCallerStake_, uint64 unbondingPeriod_)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        _setParams(minOperatorStake_, minCallerStake_, unbondingPeriod_);
    }

    // ---- views ----

    function operator(address account)
        external
        view
        returns (bytes32 nodeKey, string memory endpoint, uint256 stake, uint256 unbonding, uint64 releaseAt)
    {
        Operator storage op = _operators[account];
        return (op.nodeKey, op.endpoint, op.balance.stake, op.balance.unbonding, op.balance.releaseAt);
    }

    function caller(address account) external view returns (uint256 stake, uint256 unbonding, uint64 releaseAt) {
        Balance storage b = _callers[account];
        return (b.stake, b.unbonding, b.releaseAt);
    }

    /// @notice Whether `account` is a registered operator whose active stake meets the minimum.
    function isActiveOperator(address account) external view returns (bool) {
        Operator storage op = _operators[account];
        return op.nodeKey != bytes32(0) && op.balance.stake >= minOperatorStake;
    }

    // ---- internals ----

    function _setParams(uint256 minOperatorStake_, uint256 minCallerStake_, uint64 unbondingPeriod_) private {
        minOperatorStake = minOperatorStake_;
        minCallerStake = minCallerStake_;
        unbondingPeriod = unbondingPeriod_;
        emit ParamsChanged(minOperatorStake_, minCallerStake_, unbondingPeriod_);
    }

    function _claimNodeKey(bytes32 nodeKey) private {
        if (nodeKey == bytes32(0)) revert ZeroNodeKey();
        address holder = operatorOfNodeKey[nodeKey];
        if (holder != address(0)) revert NodeKeyTaken(nodeKey, holder);
        operatorOfNodeKey[nodeKey] = msg.sender;
    }

    function _checkEndpoint(string calldata endpoint) private pure {
        if (bytes(endpoint).length > MAX_ENDPOINT_LENGTH) {
            revert EndpointTooLong(bytes(endpoint).length, MAX_ENDPOINT_LENGTH);
        }
    }

    function _registered(address account) private view returns (Operator storage op) {
        op = _operators[account];
        if (op.nodeKey == bytes32(0)) revert NotRegistered(account);
    }

    function _balance(address account, Role role) private view returns (Balance storage) {
        return role == Role.Operator ? _registered(account).balance : _callers[account];
    }

    function _send(address payable to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
