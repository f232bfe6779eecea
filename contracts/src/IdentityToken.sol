// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {Handles} from "./Handles.sol";

/// @title IdentityToken
/// @notice A person's identity on a hanzo network: an ERC721 token with a unique handle
/// that carries the person's keys — ed25519 SSH keys (for signed git pushes) and
/// Ethereum addresses. A key belongs to at most one identity. The holder adds and
/// revokes keys; when the token moves to a new holder its keys are cleared.
contract IdentityToken is ERC721 {
    enum KeyKind {
        /// 32-byte ed25519 public key, as in an `ssh-ed25519` key line.
        Ssh,
        /// Ethereum address, left-padded to 32 bytes.
        Eth
    }

    struct Key {
        KeyKind kind;
        bytes32 key;
    }

    /// @notice Most keys one identity can carry (bounds the cost of clearing them).
    uint256 public constant MAX_KEYS = 16;

    uint256 public nextId = 1;
    mapping(uint256 => string) public handleOf;
    mapping(bytes32 => uint256) private _idOfHandle;
    /// @notice Identity holding a key (0 if none), by keccak256(kind, key).
    mapping(bytes32 => uint256) private _keyOwner;
    mapping(uint256 => Key[]) private _keys;

    error NotHolder(uint256 id, address sender);
    error HandleTaken(string handle, uint256 id);
    error UnknownHandle(string handle);
    error KeyTaken(KeyKind kind, bytes32 key, uint256 id);
    error KeyNotFound(uint256 id, KeyKind kind, bytes32 key);
    error ZeroKey();
    error TooManyKeys(uint256 id, uint256 max);

    event IdentityMinted(uint256 indexed id, address indexed holder, string handle);
    event KeyAdded(uint256 indexed id, KeyKind kind, bytes32 key);
    event KeyRevoked(uint256 indexed id, KeyKind kind, bytes32 key);
    /// @notice All keys of `id` were dropped because the token moved to `newHolder`.
    event KeysCleared(uint256 indexed id, address indexed newHolder);

    constructor() ERC721("Hanzo Identity", "HID") {}

    /// @notice Mint an identity named `handle` (see `Handles`) to the sender.
    function mint(string calldata handle) external returns (uint256 id) {
        Handles.check(handle);
        bytes32 h = keccak256(bytes(handle));
        uint256 existing = _idOfHandle[h];
        if (existing != 0) revert HandleTaken(handle, existing);
        id = nextId++;
        _idOfHandle[h] = id;
        handleOf[id] = handle;
        _safeMint(msg.sender, id);
        emit IdentityMinted(id, msg.sender, handle);
    }

    function addKey(uint256 id, KeyKind kind, bytes32 key) external {
        _onlyHolder(id);
        if (key == bytes32(0)) revert ZeroKey();
        bytes32 slot = _slot(kind, key);
        uint256 owner = _keyOwner[slot];
        if (owner != 0) revert KeyTaken(kind, key, owner);
        if (_keys[id].length >= MAX_KEYS) revert TooManyKeys(id, MAX_KEYS);
        _keyOwner[slot] = id;
        _keys[id].push(Key(kind, key));
        emit KeyAdded(id, kind, key);
    }

    function revokeKey(uint256 id, KeyKind kind, bytes32 key) external {
        _onlyHolder(id);
        bytes32 slot = _slot(kind, key);
        if (_keyOwner[slot] != id) revert KeyNotFound(id, kind, key);
        delete _keyOwner[slot];
        Key[] storage keys = _keys[id];
        for (uint256 i = 0; i < keys.length; i++) {
            if (keys[i].kind == kind && keys[i].key == key) {
                keys[i] = keys[keys.length - 1];
                keys.pop();
                break;
            }
        }
        emit KeyRevoked(id, kind, key);
    }

    // ---- views ----

    /// @notice The identity holding `key`, or 0.
    function keyOwner(KeyKind kind, bytes32 key) external view returns (uint256) {
        return _keyOwner[_slot(kind, key)];
    }

    function idOfHandle(string calldata handle) external view returns (uint256 id) {
        id = _idOfHandle[keccak256(bytes(handle))];
        if (id == 0) revert UnknownHandle(handle);
    }

    function keysOf(uint256 id) external view returns (Key[] memory) {
        return _keys[id];
    }

    /// @notice Whether identity `id` has been minted.
    function exists(uint256 id) external view returns (bool) {
        return _ownerOf(id) != address(0);
    }

    // ---- internals ----

    /// Clears keys on every transfer between two holders (not on mint).
    function _update(address to, uint256 id, address auth) internal override returns (address from) {
        from = super._update(to, id, auth);
        if (from != address(0) && to != from) {
            Key[] storage keys = _keys[id];
            for (uint256 i = 0; i < keys.length; i++) {
                delete _keyOwner[_slot(keys[i].kind, keys[i].key)];
            }
            delete _keys[id];
            emit KeysCleared(id, to);
        }
    }

    function _onlyHolder(uint256 id) private view {
        if (_ownerOf(id) != msg.sender) revert NotHolder(id, msg.sender);
    }

    function _slot(KeyKind kind, bytes32 key) private pure returns (bytes32) {
        return keccak256(abi.encode(kind, key));
    }
}
