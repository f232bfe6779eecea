// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @notice Names of identities and repositories: 1–64 bytes of a-z, 0-9, '-', '_', '.',
/// not starting with '.' or '-', so they are safe as URL path segments and file names.
library Handles {
    uint256 internal constant MAX_LENGTH = 64;

    error InvalidName(string name);

    function check(string calldata name) internal pure {
        bytes calldata b = bytes(name);
        if (b.length == 0 || b.length > MAX_LENGTH || b[0] == "." || b[0] == "-") revert InvalidName(name);
        for (uint256 i = 0; i < b.length; i++) {
            bytes1 c = b[i];
            bool ok = (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "-" || c == "_" || c == ".";
            if (!ok) revert InvalidName(name);
        }
    }
}
