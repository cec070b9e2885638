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

    /// @dev The EIP-712 struct hash of `bid`: keccak256(TYPEHASH, its eight fields as 32-byte words).
    /// @param bid The bid, in calldata.
    /// @return h The struct hash (not yet bound to a domain).
    /// NOTE: hashes the eight calldata words as they are, without `abi.encode`'s per-field copy
    /// and range checks (~400 gas per message in `settle`). All fields are static, so the struct
    /// is those eight words in calldata, and for well-formed calldata they are exactly its EIP-712
    /// encoding. Malformed words (dirty high bits) give a digest no EIP-712 signer signs, and any
    /// read of such a field by the contract reverts anyway.
    function hash(Bid calldata bid) internal pure returns (bytes32 h) {
        bytes32 typehash = TYPEHASH;
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, typehash)
            calldatacopy(add(ptr, 0x20), bid, 0x100)
            h := keccak256(ptr, 0x120)
        }
    }
}
