// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Unordered nonces: a bitmap of 256 nonces per storage word, as in Permit2.
/// @dev A nonce is consumed when its message is completely filled, or when its signer cancels
/// it. Partial fills are tracked by digest elsewhere and do not consume the nonce, so one signed
/// order or bid can fill across rounds. Cancellations are also recorded in a second bitmap that
/// `settle` never reads, so a consumed nonce can be told apart from a cancelled one afterwards.
abstract contract UnorderedNonces is UnderbidBase {
    /// @dev signer => word position => bitmap of consumed nonces.
    mapping(address => mapping(uint256 => uint256)) public nonceBitmap;
    /// @dev signer => word position => bitmap of cancelled nonces (a subset of `nonceBitmap`).
    mapping(address => mapping(uint256 => uint256)) public cancelledBitmap;

    /// @dev Cancels every nonce whose bit is set in `mask`, in word `wordPos` of the caller's bitmap.
    /// @param wordPos The nonce's high 248 bits (`nonce >> 8`).
    /// @param mask Bits to cancel (bit `nonce & 0xff`).
    function cancelNonces(uint256 wordPos, uint256 mask) external {
        nonceBitmap[msg.sender][wordPos] |= mask;
        cancelledBitmap[msg.sender][wordPos] |= mask;
        emit NonceCancelled(msg.sender, wordPos, mask);
    }

    /// @dev True if `nonce` of `signer` was consumed or cancelled.
    function isNonceUsed(address signer, uint256 nonce) public view returns (bool) {
        return nonceBitmap[signer][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    /// @dev True if `nonce` of `signer` was cancelled by its signer.
    function isNonceCancelled(address signer, uint256 nonce) public view returns (bool) {
        return cancelledBitmap[signer][nonce >> 8] & (1 << (nonce & 0xff)) != 0;
    }

    /// @dev Reverts with `NonceUsed` if `nonce` of `signer` is consumed or cancelled.
    function _requireNonceFree(address signer, uint256 nonce) internal view {
        if (isNonceUsed(signer, nonce)) revert NonceUsed(signer, nonce);
    }

    /// @dev Marks `nonce` of `signer` consumed.
    function _consumeNonce(address signer, uint256 nonce) internal {
        nonceBitmap[signer][nonce >> 8] |= 1 << (nonce & 0xff);
    }
}
