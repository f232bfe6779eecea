// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IdentityToken} from "./IdentityToken.sol";
import {Handles} from "./Handles.sol";

/// @title RepoToken
/// @notice A git repository on a hanzo network: an ERC721 token with a unique name, an
/// owner identity (who may rewrite history), committers and readers (identity ids) and
/// preferred replicators (node keys). The token holder manages all of it.
contract RepoToken is ERC721 {
    enum Member {
        Committer,
        Reader
    }

    IdentityToken public immutable identities;

    struct Repo {
        string name;
        uint256 ownerIdentity;
        bool isPrivate;
    }

    uint256 public nextId = 1;
    mapping(uint256 => Repo) private _repos;
    mapping(bytes32 => uint256) private _idOfName;
    mapping(uint256 => mapping(uint256 => mapping(Member => bool))) private _members;
    mapping(uint256 => mapping(bytes32 => bool)) private _replicators;

    error NotHolder(uint256 repoId, address sender);
    error NotIdentityHolder(uint256 identity, address sender);
    error UnknownIdentity(uint256 identity);
    error UnknownRepo(string name);
    error NameTaken(string name, uint256 repoId);
    error AlreadyMember(uint256 repoId, uint256 identity, Member role);
    error NotMember(uint256 repoId, uint256 identity, Member role);
    error ZeroNodeKey();
    error AlreadyReplicator(uint256 repoId, bytes32 nodeKey);
    error NotReplicator(uint256 repoId, bytes32 nodeKey);

    event RepoCreated(
        uint256 indexed repoId, address indexed holder, string name, uint256 indexed ownerIdentity, bool isPrivate
    );
    event OwnerIdentityChanged(uint256 indexed repoId, uint256 indexed ownerIdentity);
    event VisibilityChanged(uint256 indexed repoId, bool isPrivate);
    event MemberAdded(uint256 indexed repoId, uint256 indexed identity, Member role);
    event MemberRemoved(uint256 indexed repoId, uint256 indexed identity, Member role);
    event ReplicatorAdded(uint256 indexed repoId, bytes32 indexed nodeKey);
    event ReplicatorRemoved(uint256 indexed repoId, bytes32 indexed nodeKey);
    event RepoBurned(uint256 indexed repoId, string name);

    constructor(IdentityToken identities_) ERC721("Hanzo Repository", "HREPO") {
        identities = identities_;
    }

    /// @notice Create repo `name` owned by identity `ownerIdentity`, which the sender must hold.
    function create(string calldata name, uint256 ownerIdentity, bool isPrivate) external returns (uint256 repoId) {
        Handles.check(name);
        bytes32 h = keccak256(bytes(name));
        uint256 existing = _idOfName[h];
        if (existing != 0) revert NameTaken(name, existing);
        _onlyIdentityHolder(ownerIdentity);
        repoId = nextId++;
        _idOfName[h] = repoId;
        _repos[repoId] = Repo(name, ownerIdentity, isPrivate);
        _safeMint(msg.sender, repoId);
        emit RepoCreated(repoId, msg.sender, name, ownerIdentity, isPrivate);
    }

    /// @notice Hand ownership of the repo's history to `ownerIdentity`, which the sender must hold.
    function setOwnerIdentity(uint256 repoId, uint256 ownerIdentity) external {
        _onlyHolder(repoId);
        _onlyIdentityHolder(ownerIdentity);
        _repos[repoId].ownerIdentity = ownerIdentity;
        emit OwnerIdentityChanged(repoId, ownerIdentity);
    }

    function setPrivate(uint256 repoId, bool isPrivate) external {
        _onlyHolder(repoId);
        _repos[repoId].isPrivate = isPrivate;
        emit VisibilityChanged(repoId, isPrivate);
    }

    function addMember(uint256 repoId, uint256 identity, Member role) external {
        _onlyHolder(repoId);
        if (!identities.exists(identity)) revert UnknownIdentity(identity);
        if (_members[repoId][identity][role]) revert AlreadyMember(repoId, identity, role);
        _members[repoId][identity][role] = true;
        emit MemberAdded(repoId, identity, role);
    }

    function removeMember(uint256 repoId, uint256 identity, Member role) external {
        _onlyHolder(repoId);
        if (!_members[repoId][identity][role]) revert NotMember(repoId, identity, role);
        delete _members[repoId][identity][role];
        emit MemberRemoved(repoId, identity, role);
    }

    function addReplicator(uint256 repoId, bytes32 nodeKey) external {
        _onlyHolder(repoId);
        if (nodeKey == bytes32(0)) revert ZeroNodeKey();
        if (_replicators[repoId][nodeKey]) revert AlreadyReplicator(repoId, nodeKey);
        _replicators[repoId][nodeKey] = true;
        emit ReplicatorAdded(repoId, nodeKey);
    }

    function removeReplicator(uint256 repoId, bytes32 nodeKey) external {
        _onlyHolder(repoId);
        if (!_replicators[repoId][nodeKey]) revert NotReplicator(repoId, nodeKey);
        delete _replicators[repoId][nodeKey];
        emit ReplicatorRemoved(repoId, nodeKey);
    }

    /// @notice Destroy the repo; every node drops it and its name becomes free.
    function burn(uint256 repoId) external {
        _onlyHolder(repoId);
        string memory name = _repos[repoId].name;
        delete _idOfName[keccak256(bytes(name))];
        delete _repos[repoId];
        _burn(repoId);
        emit RepoBurned(repoId, name);
    }

    // ---- views ----

    function repo(uint256 repoId) external view returns (string memory name, uint256 ownerIdentity, bool isPrivate) {
        Repo storage r = _repos[repoId];
        return (r.name, r.ownerIdentity, r.isPrivate);
    }

    function idOfName(string calldata name) external view returns (uint256 repoId) {
        repoId = _idOfName[keccak256(bytes(name))];
        if (repoId == 0) revert UnknownRepo(name);
    }

    function isMember(uint256 repoId, uint256 identity, Member role) external view returns (bool) {
        return _members[repoId][identity][role];
    }

    function isReplicator(uint256 repoId, bytes32 nodeKey) external view returns (bool) {
        return _replicators[repoId][nodeKey];
    }

    // ---- internals ----

    function _onlyHolder(uint256 repoId) private view {
        if (_ownerOf(repoId) != msg.sender) revert NotHolder(repoId, msg.sender);
    }

    function _onlyIdentityHolder(uint256 identity) private view {
        if (!identities.exists(identity)) revert UnknownIdentity(identity);
        if (identities.ownerOf(identity) != msg.sender) revert NotIdentityHolder(identity, msg.sender);
    }
}
