// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A provider's signed bid to serve GPU units in one market.
/// @dev `capacity` is in units; `price` is in credit base units per unit-hour; `maxDuration` in seconds.
library BidLib {
    struct Bid {
        address provider;
        /// The only matcher that may settle this bid, and the one its receipts come from.
        address matcher;
        bytes32 market;
        uint32 capacity;
        uint64 price;
        uint32 maxDuration;
        uint64 deadline;
        uint256 nonce;
    }

    /// @dev The EIP-712 type hash, checked against the Python definition by the test suite.
    bytes32 internal constant TYPEHASH = keccak256(
        "Bid(address provider,address matcher,bytes32 market,uint32 capacity,uint64 price,uint32 maxDuration,uint64 deadline,uint256 nonce)"
    );

    /// @dev The EIP-712 struct hash of `bid`.
    /// @param bid The bid, in calldata.
    /// @return The struct hash (not yet bound to a domain).
    function hash(Bid calldata bid) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TYPEHASH,
                bid.provider,
                bid.matcher,
                bid.market,
                bid.capacity,
                bid.price,
                bid.maxDuration,
                bid.deadline,
                bid.nonce
            )
        );
    }
}
