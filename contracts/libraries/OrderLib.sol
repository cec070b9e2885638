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

    /// @dev The EIP-712 struct hash of `order`: keccak256(TYPEHASH, its eight fields as 32-byte words).
    /// @param order The order, in calldata.
    /// @return h The struct hash (not yet bound to a domain).
    /// NOTE: hashes the eight calldata words as they are, without `abi.encode`'s per-field copy
    /// and range checks (~400 gas per message in `settle`). All fields are static, so the struct
    /// is those eight words in calldata, and for well-formed calldata they are exactly its EIP-712
    /// encoding. Malformed words (dirty high bits) give a digest no EIP-712 signer signs, and any
    /// read of such a field by the contract reverts anyway.
    function hash(Order calldata order) internal pure returns (bytes32 h) {
        bytes32 typehash = TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), order, 0x100)
            h := keccak256(ptr, 0x120)
        }
    }
}
