// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A matcher's signed receipt for a bid: the provider's proof of submission.
/// @dev The matcher's registered receipt signer signs it (same EIP-712 domain) when the matcher
/// accepts a bid for round `round` or later. With it a provider can later prove, on chain, that a
/// round of `matcher` at or after `round` passed over its bid.
library ReceiptLib {
    struct Receipt {
        /// The matcher that accepted the bid; the bid must name the same matcher.
        address matcher;
        bytes32 bidHash;
        /// The first round of `matcher` whose input contains the bid.
        uint64 round;
        /// Chain time of the state the matcher checked the provider's stake against.
        uint64 issuedAt;
    }

    /// @dev The EIP-712 type hash, checked against the Python definition by the test suite.
    bytes32 internal constant TYPEHASH =
        keccak256("Receipt(address matcher,bytes32 bidHash,uint64 round,uint64 issuedAt)");

    /// @dev The EIP-712 struct hash of `receipt`.
    function hash(Receipt calldata receipt) internal pure returns (bytes32) {
        return keccak256(abi.encode(TYPEHASH, receipt.matcher, receipt.bidHash, receipt.round, receipt.issuedAt));
    }
}
