// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Unordered nonces with fill records: a nonce names one message, the first one filled.
/// @dev Two bits per nonce, 128 nonces per storage word (as Permit2's bitmap, with a second bit):
/// - *claimed*: a message with this nonce has been (at least partly) filled;
/// - *void*: nothing more can fill with this nonce (its message was completely filled, or the
///   nonce was cancelled).
/// A message can fill while its nonce is unclaimed, or while it is the message that claimed it
/// (its fill record is non-zero) and the nonce is not void. So any set of messages sharing a
/// (signer, nonce) fills at most the units of one of them. Partial fills are recorded by digest in
/// `fills`; a bid's record also keeps the last round that filled it, which a challenge reads. A
/// message filled completely in one go (the common case) writes only its two bits, no record:
/// for a bid, "claimed and void with no record" means exactly that its first fill used it up,
/// and the court then takes a lease of the bid as proof of the round (see `MatcherCourt`).
/// While a nonce is unclaimed no message can have a record, so verifying a fresh message reads only
/// the (usually warm) bitmap word, never a cold `fills` slot.
///
/// Cancelling is announced: `requestCancel` marks the nonce at once (an honest matcher drops the
/// message, and the provider can no longer use it in a challenge), and `cancelNonces` voids it
/// `noticePeriod` later, so a cancellation cannot land between a matcher's simulation and its batch.
abstract contract UnorderedNonces is UnderbidBase {
    /// @dev What a message has filled so far, across rounds.
    struct Fill {
        uint32 filled;
        /// For bids: the last round (of the bid's matcher) that filled it.
        uint64 lastRound;
    }

    /// @dev signer => word position (`nonce >> 7`) => two bits per nonce (claimed, void).
    mapping(address => mapping(uint256 => uint256)) public nonceBitmap;
    /// @dev message digest => fill record.
    mapping(bytes32 => Fill) public fills;
    /// @dev signer => nonce => when its cancellation was requested (zero: never).
    mapping(address => mapping(uint256 => uint256)) public cancelRequestedAt;

    /// @dev Announces the cancellation of the caller's `nonces`; `cancelNonces` can void them
    /// `noticePeriod` later. A nonce already announced keeps its first announcement time.
    function requestCancel(uint256[] calldata nonces) external {
        uint256 effectiveAt = block.timestamp + noticePeriod;
        for (uint256 i; i < nonces.length; ++i) {
            if (cancelRequestedAt[msg.sender][nonces[i]] != 0) continue;
            cancelRequestedAt[msg.sender][nonces[i]] = block.timestamp;
            emit CancelRequested(msg.sender, nonces[i], effectiveAt);
        }
    }

    /// @dev Voids the caller's `nonces` whose cancellation was announced at least `noticePeriod` ago.
    /// Reverts with `CancelNotRequested` (not announced) and `NoticeNotOver`.
    function cancelNonces(uint256[] calldata nonces) external {
        for (uint256 i; i < nonces.length; ++i) {
            uint256 nonce = nonces[i];
            uint256 requestedAt = cancelRequestedAt[msg.sender][nonce];
            if (requestedAt == 0) revert CancelNotRequested(msg.sender, nonce);
            if (block.timestamp < requestedAt + noticePeriod) revert NoticeNotOver(requestedAt + noticePeriod);
            nonceBitmap[msg.sender][nonce >> 7] |= 2 << ((nonce & 0x7f) << 1);
            emit NonceCancelled(msg.sender, nonce);
        }
    }

    /// @dev Whether `nonce` of `signer` was claimed by a fill, and whether it is void.
    function nonceState(address signer, uint256 nonce) public view returns (bool claimed, bool voided) {
        uint256 bits = nonceBitmap[signer][nonce >> 7] >> ((nonce & 0x7f) << 1);
        return (bits & 1 != 0, bits & 2 != 0);
    }

    /// @dev True if nothing can fill with `nonce` of `signer` any more.
    function isNonceUsed(address signer, uint256 nonce) public view returns (bool) {
        (, bool voided) = nonceState(signer, nonce);
        return voided;
    }

    /// @dev True if `signer` announced the cancellation of `nonce`.
    function isNonceCancelled(address signer, uint256 nonce) public view returns (bool) {
        return cancelRequestedAt[signer][nonce] != 0;
    }

    /// @dev Units of a message still fillable: zero if its nonce is void or was claimed by
    /// another message.
    /// @param digest The message's EIP-712 digest.
    /// @param signer The buyer or provider.
    /// @param nonce The message's nonce.
    /// @param total The order's `units` or the bid's `capacity`.
    function remainingOf(bytes32 digest, address signer, uint256 nonce, uint256 total) public view returns (uint256) {
        (bool claimed, bool voided) = nonceState(signer, nonce);
        if (voided) return 0;
        uint256 filled = fills[digest].filled;
        if (claimed && filled == 0) return 0;
        return filled >= total ? 0 : total - filled;
    }

    /// @dev Reverts with `NonceUsed` unless a message with `digest` may still fill with `nonce`.
    /// @return filled Units the message has filled so far.
    /// @return slot The storage slot of the nonce's bitmap word, for `_recordFill` (which then
    /// need not hash the two mapping keys again).
    function _requireFillable(bytes32 digest, address signer, uint256 nonce)
        internal
        view
        returns (uint256 filled, uint256 slot)
    {
        mapping(uint256 => uint256) storage words = nonceBitmap[signer];
        uint256 position = nonce >> 7;
        uint256 word;
        // The slot of `words[position]`, kept for `_recordFill`; the read is the mapping read.
        assembly ("memory-safe") {
            mstore(0x00, position)
            mstore(0x20, words.slot)
            slot := keccak256(0x00, 0x40)
            word := sload(slot)
        }
        uint256 bits = word >> ((nonce & 0x7f) << 1);
        if (bits & 2 != 0) revert NonceUsed(signer, nonce);
        // An unclaimed nonce has no filled message: the first fill claims it. So the (cold) fill
        // record is read only for a nonce already claimed, to tell its message from another one.
        if (bits & 1 != 0) {
            filled = fills[digest].filled;
            if (filled == 0) revert NonceUsed(signer, nonce);
        }
    }

    /// @dev Records that a message now has `total - left` units filled: claims its nonce on the
    /// first fill and voids it once nothing is left. The fill record is written only while the
    /// message is partly filled (for a bid, with `round`, and kept up to date by every later fill);
    /// a message used up by its first fill writes only its nonce bits.
    /// @param slot The nonce's bitmap word, as `_requireFillable` returned it for this message.
    function _recordFill(
        uint256 slot,
        bytes32 digest,
        uint256 nonce,
        uint256 total,
        uint256 left,
        uint64 round,
        bool isBid
    ) internal {
        uint256 shift = (nonce & 0x7f) << 1;
        uint256 word;
        // Safe: `slot` is `nonceBitmap[signer][nonce >> 7]`, computed by `_requireFillable`.
        assembly ("memory-safe") {
            word := sload(slot)
        }
        // What it had filled before this batch: nothing while its nonce was unclaimed, else its
        // record (read when the batch verified it, so warm now).
        uint256 before = (word >> shift) & 1 == 0 ? 0 : fills[digest].filled;
        uint256 filledNow = total - left;
        // Slither: unit counts, compared exactly on purpose: nothing to record when this batch filled nothing.
        // slither-disable-next-line incorrect-equality
        if (filledNow == before) return;
        // Slither: unit counts: the first fill claims the nonce, a message with nothing left voids it.
        // slither-disable-next-line incorrect-equality
        uint256 bits = (before == 0 ? 1 : 0) | (left == 0 ? 2 : 0);
        if (bits != 0) {
            word |= bits << shift;
            assembly ("memory-safe") {
                sstore(slot, word)
            }
        }
        if (isBid) {
            if (before != 0 || left != 0) fills[digest] = Fill(uint32(filledNow), round);
        } else if (left != 0) {
            fills[digest].filled = uint32(filledNow);
        }
    }
}
