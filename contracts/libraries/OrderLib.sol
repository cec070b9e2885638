// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A buyer's signed order for GPU time in one market.
/// @dev Prices are in credit base units (6 decimals) per unit-hour; `duration` is in seconds.
library OrderLib {
    struct Order {
        address buyer;
        /// The only matcher that may settle this order.
        address matcher;
        bytes32 market;
        uint32 units;
        uint32 duration;
        uint64 maxPrice;
        uint64 deadline;
        uint256 nonce;
    }

    /// @dev The EIP-712 type hash. The Python package derives the same string from its single
    /// definition and the test suite checks both against each other.
    bytes32 internal constant TYPEHASH = keccak256(
        "Order(address buyer,address matcher,bytes32 market,uint32 units,uint32 duration,uint64 maxPrice,uint64 deadline,uint256 nonce)"
    );

    /// @dev The EIP-712 struct hash of `order`.
    /// @param order The order, in calldata.
    /// @return The struct hash (not yet bound to a domain).
    function hash(Order calldata order) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TYPEHASH,
                order.buyer,
                order.matcher,
                order.market,
                order.units,
                order.duration,
                order.maxPrice,
                order.deadline,
                order.nonce
            )
        );
    }
}
