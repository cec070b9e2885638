// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A matcher's signed receipt for a bid: the provider's proof of submission.
/// @dev The matcher signs it (same EIP-712 domain) when it accepts a bid into round `round`.
/// With it a provider can later prove, on chain, that the round's allocation passed over its bid.
library ReceiptLib {
    struct Receipt {
        bytes32 bidHash;
        uint64 round;
        uint64 issuedAt;
    }

    /// @dev The EIP-712 type hash, checked against the Python definition by the test suite.
    bytes32 internal constant TYPEHASH = keccak256("Receipt(bytes32 bidHash,uint64 round,uint64 issuedAt)");

    /// @dev The EIP-712 struct hash of `receipt`.
    function hash(Receipt calldata receipt) internal pure returns (bytes32) {
        return keccak256(abi.encode(TYPEHASH, receipt.bidHash, receipt.round, receipt.issuedAt));
    }
}
