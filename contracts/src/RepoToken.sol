// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {IdentityToken} from "./IdentityToken.sol";
import {Handles} from "./Handles.sol";

/// @title RepoToken
/// @notice A git repository on a hanzo network: an ERC721 token with a unique name, an
/// owner identity (who may rewrite history), committers and readers (identity ids) and
/// preferred replicators (node keys), the default branch, and ref rules: which identities
/// may move the refs a pattern names, and how many of them must sign each update. The
/// token holder manages all of it.
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

    /// Most signers a ref rule names, and most rules a repo has.
    uint256 public constant MAX_RULE_SIGNERS = 32;
    uint256 public constant MAX_RULES = 32;
    /// Longest ref pattern or branch name, in bytes.
    uint256 public constant MAX_REF_LENGTH = 255;

    struct RefRule {
        uint256[] signers;
        uint8 threshold;
    }

    uint256 public nextId = 1;
    mapping(uint256 => Repo) private _repos;
    mapping(bytes32 => uint256) private _idOfName;
    mapping(uint256 => mapping(uint256 => mapping(Member => bool))) private _members;
    mapping(uint256 => mapping(bytes32 => bool)) private _replicators;
    mapping(uint256 => string) private _defaultBranch;
    mapping(uint256 => string[]) private _patterns;
    mapping(uint256 => mapping(bytes32 => RefRule)) private _rules;

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
    error InvalidRefName(string name);
    error InvalidThreshold(uint8 threshold, uint256 signers);
    error DuplicateSigner(uint256 identity);
    error TooManyRules(uint256 repoId);
    error NoRefRule(uint256 repoId, string pattern);

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
    /// `branch` is a branch name without `refs/heads/`; empty: no default set.
    event DefaultBranchChanged(uint256 indexed repoId, string branch);
    /// Refs matching `pattern` move only with the signatures of `threshold` distinct
    /// identities among `signers` (replacing any earlier rule for the same pattern).
    event RefRuleSet(uint256 indexed repoId, string pattern, uint256[] signers, uint8 threshold);
    event RefRuleRemoved(uint256 indexed repoId, string pattern);

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

    /// @notice Make `branch` (a name without `refs/heads/`, e.g. `unstable`) what clones
    /// check out: every node points the repo's `HEAD` at it. Empty clears it.
    function setDefaultBranch(uint256 repoId, string calldata branch) external {
        _onlyHolder(repoId);
        if (bytes(branch).length != 0) _checkRefName(branch, false);
        _defaultBranch[repoId] = branch;
        emit DefaultBranchChanged(repoId, branch);
    }

    /// @notice Refs matching `pattern` (a full ref name such as `refs/heads/main`; `*`
    /// stands for any characters but `/`, as in `refs/tags/v*`) may then be moved only by
    /// `signers`, and each update needs the signatures of `threshold` distinct ones.
    function setRefRule(uint256 repoId, string calldata pattern, uint256[] calldata signers, uint8 threshold)
        external
    {
        _onlyHolder(repoId);
        _checkRefName(pattern, true);
        if (threshold == 0 || threshold > signers.length || signers.length > MAX_RULE_SIGNERS) {
            revert InvalidThreshold(threshold, signers.length);
        }
        for (uint256 i = 0; i < signers.length; i++) {
            if (!identities.exists(signers[i])) revert UnknownIdentity(signers[i]);
            for (uint256 j = 0; j < i; j++) {
                if (signers[j] == signers[i]) revert DuplicateSigner(signers[i]);
            }
        }
        bytes32 h = keccak256(bytes(pattern));
        RefRule storage rule = _rules[repoId][h];
        if (rule.threshold == 0) {
            if (_patterns[repoId].length >= MAX_RULES) revert TooManyRules(repoId);
            _patterns[repoId].push(pattern);
        }
        rule.signers = signers;
        rule.threshold = threshold;
        emit RefRuleSet(repoId, pattern, signers, threshold);
    }

    function removeRefRule(uint256 repoId, string calldata pattern) external {
        _onlyHolder(repoId);
        bytes32 h = keccak256(bytes(pattern));
        if (_rules[repoId][h].threshold == 0) revert NoRefRule(repoId, pattern);
        delete _rules[repoId][h];
        string[] storage patterns = _patterns[repoId];
        for (uint256 i = 0; i < patterns.length; i++) {
            if (keccak256(bytes(patterns[i])) == h) {
                patterns[i] = patterns[patterns.length - 1];
                patterns.pop();
                break;
            }
        }
        emit RefRuleRemoved(repoId, pattern);
    }

    /// @notice Destroy the repo; every node drops it and its name becomes free.
    function burn(uint256 repoId) external {
        _onlyHolder(repoId);
        string memory name = _repos[repoId].name;
        delete _idOfName[keccak256(bytes(name))];
        delete _repos[repoId];
        delete _defaultBranch[repoId];
        string[] storage patterns = _patterns[repoId];
        for (uint256 i = 0; i < patterns.length; i++) {
            delete _rules[repoId][keccak256(bytes(patterns[i]))];
        }
        delete _patterns[repoId];
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

    function defaultBranch(uint256 repoId) external view returns (string memory) {
        return _defaultBranch[repoId];
    }

    /// @notice The patterns of repo `repoId`'s ref rules, in no particular order.
    function refRulePatterns(uint256 repoId) external view returns (string[] memory) {
        return _patterns[repoId];
    }

    /// @notice The rule for `pattern` exactly; threshold 0 when there is none.
    function refRule(uint256 repoId, string calldata pattern)
        external
        view
        returns (uint256[] memory signers, uint8 threshold)
    {
        RefRule storage r = _rules[repoId][keccak256(bytes(pattern))];
        return (r.signers, r.threshold);
    }

    // ---- internals ----

    /// A ref name git accepts (`git check-ref-format`), in printable ASCII: a full
    /// name under `refs/` when `full` (and then `*` is allowed), else a branch name.
    function _checkRefName(string calldata name, bool full) private pure {
        bytes calldata b = bytes(name);
        bool ok = b.length > 0 && b.length <= MAX_REF_LENGTH && b[0] != "/" && b[0] != "-" && b[0] != "."
            && b[b.length - 1] != "/" && b[b.length - 1] != ".";
        if (full) ok = ok && b.length > 5 && keccak256(b[:5]) == keccak256("refs/");
        for (uint256 i = 0; ok && i < b.length; i++) {
            bytes1 c = b[i];
            bytes1 prev = i > 0 ? b[i - 1] : bytes1(0);
            ok = c > 0x20 && c < 0x7f && c != "~" && c != "^" && c != ":" && c != "?" && c != "["
                && c != "\\" && (c != "*" || full) && !(c == "." && prev == ".") && !(c == "/" && prev == "/")
                && !(c == "{" && prev == "@") && !(c == "." && prev == "/");
        }
        if (ok && b.length >= 5) ok = keccak256(b[b.length - 5:]) != keccak256(".lock");
        if (!ok) revert InvalidRefName(name);
    }

    function _onlyHolder(uint256 repoId) private view {
        if (_ownerOf(repoId) != msg.sender) revert NotHolder(repoId, msg.sender);
    }

    function _onlyIdentityHolder(uint256 identity) private view {
        if (!identities.exists(identity)) revert UnknownIdentity(identity);
        if (identities.ownerOf(identity) != msg.sender) revert NotIdentityHolder(identity, msg.sender);
    }
}
