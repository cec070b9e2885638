// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {BuyerEscrow} from "./BuyerEscrow.sol";
import {ProviderStaking} from "./ProviderStaking.sol";
import {MatcherBinding} from "./MatcherBinding.sol";

/// @title Leases: escrow payment streams backed by provider collateral.
/// @dev A lease pays `units * price` credit base units per hour, accrued per second from `start`
/// to `end`. Settlement is lazy: balances move when someone touches the lease, and `leaseBalances`
/// shows the live figures. Amounts are computed from cumulative accruals, each rounded down, so the
/// payments of a lease add up to exactly the cost locked for it and no dust is created or lost.
///
/// Storage: a lease is ONE word (`LeaseRecord`), written once by `settle` and rewritten in place
/// (a non-zero slot: ~2.9k warm, ~5k cold) by heartbeats, payments and the close. It names its
/// buyer and provider by their compact account ids (`MatcherBinding`) and its price, start and
/// parameters version by a reference to the `BatchTerms` word that every lease of the same batch
/// and market shares. Before, a lease took two fresh words at opening and a third at its first
/// heartbeat (~44k + ~22k).
abstract contract Leases is BuyerEscrow, ProviderStaking, MatcherBinding {
    using SafeERC20 for *;

    /// @dev A lease as `getLease` shows it (the fields it had before leases were packed).
    struct Lease {
        address buyer;
        uint32 start;
        uint32 end;
        bool closed;
        /// The parameters version (`paramsAt`) this lease opened under and keeps to its end.
        uint24 paramsVersion;
        address provider;
        uint32 units;
        uint64 price;
        /// Accrual up to this time has been paid; zero means `start`.
        uint40 paidUntil;
        /// The latest heartbeat; zero means `start`.
        uint40 lastHeartbeat;
    }

    /// @dev The stored lease: one word.
    struct LeaseRecord {
        /// The buyer's compact account id; never zero for a lease that exists.
        uint32 buyerId;
        uint32 providerId;
        uint32 units;
        /// Key of the `BatchTerms` (price, start, parameters version) of the lease's batch and market.
        uint32 termsRef;
        /// The lease's end (its start plus the order's duration).
        uint40 end;
        /// Accrual up to this time has been paid; zero means `start`.
        uint40 paidUntil;
        /// The latest heartbeat; zero means `start`.
        uint40 lastHeartbeat;
        bool closed;
    }

    /// @dev What every lease one batch opens in one market shares: one word per (batch, market).
    /// @dev The bits of a `LeaseRecord` word that `claimRevenue`'s hot path matches: provider id (bits
    /// 32-63), batch terms ref (96-127) and closed state (248-255). A literal, for assembly.
    uint256 private constant _CLAIM_KEY_MASK = 0xff000000000000000000000000000000ffffffff00000000ffffffff00000000;

    struct BatchTerms {
        /// The round's uniform clearing price of the market.
        uint64 price;
        /// The batch's block time: every lease of the batch starts then.
        uint40 start;
        /// The parameters version the batch's leases opened under.
        uint24 paramsVersion;
        /// Copies of that version's `heartbeatInterval` and `heartbeatGrace` (the same word, so
        /// heartbeats and claims need not read `paramsAt`).
        uint32 heartbeatInterval;
        uint32 heartbeatGrace;
    }

    // Slither: written in _openLease (a Slither false positive).
    // slither-disable-next-line uninitialized-state
    mapping(bytes32 => LeaseRecord) internal _leases;
    /// @dev termsRef => the terms its leases share.
    mapping(uint32 => BatchTerms) internal _batchTerms;
    /// @dev The last `termsRef` given.
    uint32 internal _batchTermsCount;

    /// @dev The lease record. Reverts with `UnknownLease`.
    function getLease(bytes32 leaseId) external view returns (Lease memory) {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        return Lease(
            accountAt[lease.buyerId],
            uint32(batch.start),
            uint32(lease.end),
            lease.closed,
            batch.paramsVersion,
            accountAt[lease.providerId],
            lease.units,
            batch.price,
            lease.paidUntil,
            lease.lastHeartbeat
        );
    }

    /// @dev Live balances of a lease at the current block time.
    /// @return accruedUnpaid Credits the provider can claim now (accrual covered by heartbeats).
    /// @return remaining Credits still locked for the rest of the lease.
    /// @return collateral UBT locked from the provider's stake.
    /// Reverts with `UnknownLease`.
    function leaseBalances(bytes32 leaseId)
        external
        view
        returns (uint256 accruedUnpaid, uint256 remaining, uint256 collateral)
    {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        if (lease.closed) return (0, 0, 0);
        uint256 paid = _accrued(lease, batch, _paidUntil(lease, batch));
        uint256 covered = _lastHeartbeat(lease, batch) + batch.heartbeatInterval;
        uint256 payable_ = _accrued(lease, batch, block.timestamp < covered ? block.timestamp : covered);
        accruedUnpaid = payable_ > paid ? payable_ - paid : 0;
        remaining = _accrued(lease, batch, lease.end) - paid - accruedUnpaid;
        collateral = lease.units * stakePerUnit;
    }

    /// @dev Records a heartbeat for each of the caller's running leases.
    /// A lease that is closed (its buyer may close it at any time), has ended, or has a reportable
    /// fault is skipped with a `LeaseSkipped` event instead of reverting the whole batch, so no
    /// buyer or reporter can make a provider's batch fail. A heartbeat never erases a reportable
    /// fault: that gap must not be paid for.
    /// @param leaseIds Leases to heartbeat, all served by the caller.
    /// @return skipped How many leases were skipped.
    /// Reverts with `UnknownLease` and `NotLeaseProvider` (the caller's own mistakes).
    function heartbeat(bytes32[] calldata leaseIds) external returns (uint256 skipped) {
        // Leases name their provider by id: one read of the caller's id serves the whole batch.
        uint32 caller = _bindings[msg.sender].id;
        // The terms of the previous lease's batch: a provider's leases mostly share them.
        uint256 lastRef;
        uint256 start;
        uint256 interval;
        uint256 grace;
        for (uint256 i; i < leaseIds.length;) {
            bytes32 leaseId;
            assembly ("memory-safe") {
                // leaseIds[i] without the bounds check: i < leaseIds.length.
                leaseId := calldataload(add(leaseIds.offset, shl(5, i)))
            }
            // The hot path works on the raw word (Solidity's `LeaseRecord` layout, see `_store`):
            // one read, and one write of the `lastHeartbeat` bits; decoding the whole record into
            // memory cost ~2k gas per lease.
            (LeaseRecord storage record, uint256 word) = _providerLease(leaseId, caller);
            uint256 end = uint40(word >> 128);
            SkipReason reason;
            if (word >> 248 != 0) {
                reason = SkipReason.Closed;
            } else if (block.timestamp >= end) {
                reason = SkipReason.Ended;
            } else {
                uint256 ref = uint32(word >> 96);
                if (ref != lastRef) {
                    BatchTerms storage batch = _batchTerms[uint32(ref)];
                    (lastRef, start, interval, grace) = (ref, batch.start, batch.heartbeatInterval, batch.heartbeatGrace);
                }
                uint256 last = uint40(word >> 208);
                if (last == 0) last = start;
                uint256 stopAt = last + interval;
                if (stopAt < end && block.timestamp > stopAt + grace) {
                    reason = SkipReason.FaultPending;
                } else {
                    word = (word & ~(uint256(type(uint40).max) << 208)) | (block.timestamp << 208);
                    assembly ("memory-safe") {
                        sstore(record.slot, word)
                    }
                    emit Heartbeat(leaseId);
                    unchecked {
                        ++i;
                    }
                    continue;
                }
            }
            ++skipped;
            emit LeaseSkipped(leaseId, reason);
            unchecked {
                ++i;
            }
        }
    }

    /// @dev Pays the caller what its leases have accrued while covered by heartbeats, in one
    /// credit transfer (the credit token's `Transfer` from this contract to the caller is the
    /// payment's record; no per-lease event: see NOTE). A lease past its end is also closed:
    /// uncovered time is refunded to the buyer and the collateral unlocked (`LeaseClosed`).
    /// A closed lease, or one with a reportable fault, is skipped with a `LeaseSkipped` event.
    /// @param leaseIds Leases served by the caller.
    /// @return total Credits sent to the caller.
    /// @return skipped How many leases were skipped.
    /// Reverts with `UnknownLease` and `NotLeaseProvider`.
    /// NOTE: a running lease is paid on its raw word alone: one read, one write of its
    /// `paidUntil` bits (the batch terms of the previous lease remembered). Its buyer's escrow is
    /// not touched: `locked` holds a lease's whole cost until the lease closes, and what has been
    /// paid of it is the lease's own `paidUntil` (see `_settleAndClose`). So a claim costs the same
    /// however many buyers its leases have, and emits nothing per running lease: every balance it
    /// changes (the provider's credits, this contract's) shows in the credit's `Transfer`, and each
    /// lease's paid-until is its `getLease`. A lease past its end takes the general path, once.
    /// IMPORTANT: the assembly loop reads and writes the raw `LeaseRecord` and `BatchTerms` words
    /// at fixed bit offsets (Solidity's packed layouts, see `_store`); a change to either struct
    /// must change those offsets, and `test/foundry/SettleClaimAttacks.t.sol` checks the sums.
    function claimRevenue(bytes32[] calldata leaseIds) external nonReentrant returns (uint256 total, uint256 skipped) {
        uint256 callerId = _bindings[msg.sender].id;
        // What `_payRunning` needs of a lease's word (`_CLAIM_KEY_MASK`): its provider is the
        // caller, its terms are the remembered ones (`terms`, their raw word), it is open.
        uint256 key;
        uint256 terms;
        // leaseIds[i] is at calldata offset `at`.
        uint256 at;
        uint256 atEnd;
        assembly ("memory-safe") {
            at := leaseIds.offset
            atEnd := add(at, shl(5, leaseIds.length))
        }
        while (at != atEnd) {
            // The lease at `at`, in Solidity, in the general path's order: the first lease, and
            // then each lease `_payRunning` stopped at. (No lease is a zero word, which is caught
            // here.)
            bytes32 leaseId;
            assembly ("memory-safe") {
                leaseId := calldataload(at)
            }
            LeaseRecord storage record = _leases[leaseId];
            uint256 word;
            assembly ("memory-safe") {
                word := sload(record.slot)
            }
            if (uint32(word) == 0) revert UnknownLease(leaseId);
            if (uint32(word >> 32) != callerId) revert NotLeaseProvider(leaseId, msg.sender);
            uint256 ref = uint32(word >> 96);
            if (word & _CLAIM_KEY_MASK != key && word >> 248 == 0) {
                // New terms: remember them, and let `_payRunning` take this lease under them.
                // (It stops at it again only if it has ended or has a reportable fault, and
                // then the key matches here, so every pass moves on.)
                BatchTerms storage batch = _batchTerms[uint32(ref)];
                assembly ("memory-safe") {
                    terms := sload(batch.slot)
                }
                key = (callerId << 32) | (ref << 96);
            } else {
                at += 0x20;
                if (word >> 248 != 0) {
                    ++skipped;
                    emit LeaseSkipped(leaseId, SkipReason.Closed);
                } else if (block.timestamp >= _faultAt(_leases[leaseId], _batchTerms[uint32(ref)])) {
                    ++skipped;
                    emit LeaseSkipped(leaseId, SkipReason.FaultPending);
                } else {
                    total += _closeEnded(leaseId);
                }
            }
            uint256 paid;
            (at, paid) = _payRunning(at, atEnd, key, terms);
            total += paid;
        }
        if (total != 0) credit.safeTransfer(msg.sender, total);
    }

    /// @dev The hot path of `claimRevenue`: pays the caller's running open leases under one set
    /// of batch terms, from calldata offset `at` on, and stops at the first other lease (returning
    /// its offset) or at `atEnd`. Paying is `_payUpTo(now)` on the raw word, after the general
    /// path's tests in its order (closed, fault reportable, ended), the first of which `key`
    /// covers. A function of its own so that its loop's variables fit on the stack (inside
    /// `claimRevenue` solc spilled some to memory); that alone measured no gas change, the
    /// branch-free loop below is what saved ~100 gas a lease.
    /// @param key The expected `_CLAIM_KEY_MASK` bits of a lease word (caller, terms ref, open).
    /// @param terms The raw `BatchTerms` word of those terms.
    /// @return stopAt The offset of the first lease not paid here (`atEnd` if none).
    /// @return paid Credits accrued by the leases paid.
    /// Times and spans are below 2^41, units below 2^32 and the price below 2^64, so no sum,
    /// difference or product below can wrap (products stay below 2^137).
    function _payRunning(uint256 at, uint256 atEnd, uint256 key, uint256 terms)
        private
        returns (uint256 stopAt, uint256 paid)
    {
        assembly ("memory-safe") {
            let price := and(terms, 0xffffffffffffffff)
            let start := and(shr(64, terms), 0xffffffffff)
            let interval := and(shr(128, terms), 0xffffffff)
            // `_faultAt`'s "now > covered + grace" as "covered < late", one compare a lease.
            let late := 0
            if gt(timestamp(), and(shr(160, terms), 0xffffffff)) {
                late := sub(timestamp(), and(shr(160, terms), 0xffffffff))
            }
            mstore(0x20, _leases.slot)
            // Branch-free but for the stop: each `if` cost a jump and solc's stack shuffles around it.
            for {} lt(at, atEnd) { at := add(at, 0x20) } {
                mstore(0, calldataload(at))
                let slot := keccak256(0, 0x40)
                let word := sload(slot)
                // The last covered second: the last heartbeat (or the start, if none) + interval.
                let covered := and(shr(208, word), 0xffffffffff)
                covered := add(add(covered, mul(iszero(covered), start)), interval)
                // Not the key; ended; a fault reportable (the heartbeats stop short of the end
                // and the grace after the last covered second has passed).
                let end := and(shr(128, word), 0xffffffffff)
                if or(
                    or(xor(and(word, _CLAIM_KEY_MASK), key), iszero(lt(timestamp(), end))),
                    and(lt(covered, end), lt(covered, late))
                ) { break }
                // Running: pay from paid-until (or the start) up to min(now, covered), which
                // never lies before paid-until (both only grow); now < end needs no cap.
                let paidUntil := and(shr(168, word), 0xffffffffff)
                paidUntil := add(paidUntil, mul(iszero(paidUntil), start))
                covered := xor(covered, mul(xor(covered, timestamp()), lt(timestamp(), covered)))
                let perHour := mul(and(shr(64, word), 0xffffffff), price)
                paid := add(
                    paid,
                    sub(div(mul(perHour, sub(covered, start)), 3600), div(mul(perHour, sub(paidUntil, start)), 3600))
                )
                // Unchanged (a second claim in the same second) costs a warm no-op write.
                sstore(slot, or(and(word, not(shl(168, 0xffffffffff))), shl(168, covered)))
            }
            stopAt := at
        }
    }

    /// @dev Pays and closes a lease past its end (the general path, once in a lease's life);
    /// returns what the provider is owed. Reverts with `UnknownLease`.
    function _closeEnded(bytes32 leaseId) private returns (uint256 paid) {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        paid = _settleAndClose(leaseId, lease, batch, block.timestamp);
    }

    /// @dev The raw word of lease `leaseId`, served by the provider with account id `caller`
    /// (`heartbeat` and `claimRevenue` work on it). Reverts with `UnknownLease` and `NotLeaseProvider`.
    function _providerLease(bytes32 leaseId, uint32 caller)
        private
        view
        returns (LeaseRecord storage record, uint256 word)
    {
        record = _leases[leaseId];
        assembly ("memory-safe") {
            word := sload(record.slot)
        }
        if (uint32(word) == 0) revert UnknownLease(leaseId);
        if (uint32(word >> 32) != caller) revert NotLeaseProvider(leaseId, msg.sender);
    }

    /// @dev Closes a lease. Before its end only the buyer may: the provider is paid what accrued
    /// and the buyer is refunded the rest into free escrow. After its end anyone may, to pay the
    /// provider and release the collateral.
    /// Reverts with `UnknownLease`, `LeaseAlreadyClosed`, `NotLeaseBuyer` and `FaultPending`.
    function close(bytes32 leaseId) external nonReentrant {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        if (lease.closed) revert LeaseAlreadyClosed(leaseId);
        if (block.timestamp < lease.end && msg.sender != accountAt[lease.buyerId]) {
            revert NotLeaseBuyer(leaseId, msg.sender);
        }
        if (block.timestamp >= _faultAt(lease, batch)) revert FaultPending(leaseId);
        uint256 paid = _settleAndClose(leaseId, lease, batch, block.timestamp);
        if (paid != 0) credit.safeTransfer(accountAt[lease.providerId], paid);
    }

    /// @dev Reports a missed heartbeat. Accrual stops one interval after the last heartbeat; the
    /// provider is paid up to then, the buyer is refunded the rest, and `slashBps` of the collateral
    /// is slashed: `slashBuyerBps` of it to the buyer, `slashReporterBps` to the caller, the rest burned.
    /// Reverts with `UnknownLease`, `LeaseAlreadyClosed` and `HeartbeatNotMissed`.
    function reportFault(bytes32 leaseId) external nonReentrant {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        if (lease.closed) revert LeaseAlreadyClosed(leaseId);
        uint256 reportableAt = _faultAt(lease, batch);
        if (block.timestamp < reportableAt) revert HeartbeatNotMissed(leaseId, reportableAt);

        Params memory terms = _termsOf(batch);
        uint256 stopAt = _lastHeartbeat(lease, batch) + terms.heartbeatInterval;
        address provider = accountAt[lease.providerId];
        address buyer = accountAt[lease.buyerId];
        uint256 collateral = lease.units * stakePerUnit;
        uint256 paid = _settleAndClose(leaseId, lease, batch, stopAt);
        if (paid != 0) credit.safeTransfer(provider, paid);

        uint256 slashed = collateral * terms.slashBps / BPS;
        // Slither: intended: the buyer's share is a bps share of the rounded slash; burned = slashed - shares, so nothing is lost.
        // slither-disable-next-line divide-before-multiply
        uint256 toBuyer = slashed * terms.slashBuyerBps / BPS;
        // Slither: intended: the reporter's share is a bps share of the rounded slash; the rounding stays in `burned`.
        // slither-disable-next-line divide-before-multiply
        uint256 toReporter = slashed * terms.slashReporterBps / BPS;
        uint256 burned = slashed - toBuyer - toReporter;
        _slash(provider, slashed);
        totalSlashedBurned += burned;
        if (toBuyer != 0) ubt.safeTransfer(buyer, toBuyer);
        if (toReporter != 0) ubt.safeTransfer(msg.sender, toReporter);
        if (burned != 0) ubt.burn(burned);
        emit FaultReported(leaseId, msg.sender, slashed, toBuyer, toReporter, burned);
    }

    /// @dev The first time a fault on `leaseId` can be reported, or `type(uint256).max` when the
    /// provider's heartbeats already cover the lease to its end. Reverts with `UnknownLease`.
    function faultReportableAt(bytes32 leaseId) public view returns (uint256) {
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        return _faultAt(lease, batch);
    }

    /// @dev `faultReportableAt` of a lease already read.
    function _faultAt(LeaseRecord memory lease, BatchTerms memory batch) private pure returns (uint256) {
        uint256 stopAt = _lastHeartbeat(lease, batch) + batch.heartbeatInterval;
        if (stopAt >= lease.end) return type(uint256).max;
        return stopAt + batch.heartbeatGrace + 1;
    }

    /// @dev Pays the provider up to `until`, refunds the buyer the rest, marks `lease` closed and
    /// stores it.
    /// IMPORTANT: this is where a lease's escrow leaves `locked`, all of it at once: its whole
    /// cost (`settle` locked exactly `_leaseCost`, which is `_accrued(end)`), of which the
    /// unpaid part (`refund`) goes back to the buyer's free escrow and the paid part has already
    /// gone to the provider (claims, and `paid` here). So `locked` is always the whole cost of the
    /// buyer's open leases, no withdrawal can reach what a running lease still owes, and the
    /// payments and refund of a lease add up to its cost exactly.
    /// @return paid Credits owed to the provider; the caller transfers them.
    function _settleAndClose(bytes32 leaseId, LeaseRecord memory lease, BatchTerms memory batch, uint256 until)
        private
        returns (uint256 paid)
    {
        paid = _payUpTo(lease, batch, until);
        uint256 cost = _accrued(lease, batch, lease.end);
        uint256 refund = cost - _accrued(lease, batch, _paidUntil(lease, batch));
        lease.closed = true;
        EscrowAccount storage account = escrowOf[accountAt[lease.buyerId]];
        account.locked -= uint128(cost);
        if (refund != 0) account.free += uint128(refund);
        uint256 collateral = lease.units * stakePerUnit;
        _unlockStake(accountAt[lease.providerId], collateral);
        _store(leaseId, lease);
        emit LeaseClosed(leaseId, refund, collateral);
    }

    /// @dev Advances `lease.paidUntil` to `min(until, end, last heartbeat + interval)` (the
    /// caller stores it); the buyer's escrow leaves `locked` at the close (`_settleAndClose`).
    /// @return amount Credits owed to the provider for that span; the caller transfers them.
    function _payUpTo(LeaseRecord memory lease, BatchTerms memory batch, uint256 until)
        private
        pure
        returns (uint256 amount)
    {
        // Only time covered by heartbeats is paid for.
        uint256 covered = _lastHeartbeat(lease, batch) + batch.heartbeatInterval;
        if (until > covered) until = covered;
        if (until > lease.end) until = lease.end;
        uint256 paidUntil = _paidUntil(lease, batch);
        if (until <= paidUntil) return 0;
        amount = _accrued(lease, batch, until) - _accrued(lease, batch, paidUntil);
        lease.paidUntil = uint40(until);
    }

    /// @dev Records the terms every lease of this batch in one market shares: `price`, the block
    /// time as start and the current parameters version. Returns the reference leases store.
    function _newBatchTerms(uint256 price) internal returns (uint32 ref) {
        ref = ++_batchTermsCount;
        Params storage current = params;
        _batchTerms[ref] = BatchTerms(
            uint64(price), uint40(block.timestamp), paramsVersion, current.heartbeatInterval, current.heartbeatGrace
        );
    }

    /// @dev Opens a lease (its one storage word, written once) and emits nothing; the caller emits
    /// `LeaseOpened`. Reverts with `DuplicateLease`.
    /// NOTE: builds the word of `_store` (paid-until, last heartbeat and closed all zero) from the
    /// arguments, without a `LeaseRecord` in memory: `settle` opens one lease per match, and a
    /// memory record per lease grew memory, whose cost is quadratic, by 8 words each.
    function _openLease(
        bytes32 leaseId,
        uint32 buyerId,
        uint32 providerId,
        uint256 units,
        uint32 termsRef,
        uint256 duration
    ) internal {
        LeaseRecord storage record = _leases[leaseId];
        uint256 existing;
        assembly ("memory-safe") {
            existing := sload(record.slot)
        }
        if (uint32(existing) != 0) revert DuplicateLease(leaseId);
        uint256 word = uint256(buyerId) | (uint256(providerId) << 32) | (uint256(uint32(units)) << 64)
            | (uint256(termsRef) << 96) | (uint256(uint40(block.timestamp + duration)) << 128);
        assembly ("memory-safe") {
            sstore(record.slot, word)
        }
    }

    /// @dev Writes a lease record as one word in one SSTORE (field-by-field assignment of a
    /// storage struct costs a read and a write per field). The layout is Solidity's own for
    /// `LeaseRecord` (fields packed from the low-order bits in declaration order), so the
    /// compiler's reads of `_leases` see exactly these fields.
    function _store(bytes32 leaseId, LeaseRecord memory lease) private {
        uint256 word = uint256(lease.buyerId) | (uint256(lease.providerId) << 32) | (uint256(lease.units) << 64)
            | (uint256(lease.termsRef) << 96) | (uint256(lease.end) << 128) | (uint256(lease.paidUntil) << 168)
            | (uint256(lease.lastHeartbeat) << 208) | (lease.closed ? 1 << 248 : 0);
        LeaseRecord storage slot = _leases[leaseId];
        assembly ("memory-safe") {
            sstore(slot.slot, word)
        }
    }

    /// @dev A lease and its batch terms, read once (one cold word, one usually warm word).
    /// Reverts with `UnknownLease`.
    function _load(bytes32 leaseId) internal view returns (LeaseRecord memory lease, BatchTerms memory batch) {
        lease = _leases[leaseId];
        if (lease.buyerId == 0) revert UnknownLease(leaseId);
        batch = _batchTerms[lease.termsRef];
    }

    /// @dev Credits a lease accrues from its start to `t` (capped at its end), rounded down.
    function _accrued(LeaseRecord memory lease, BatchTerms memory batch, uint256 t) private pure returns (uint256) {
        uint256 start = batch.start;
        if (t <= start) return 0;
        if (t > lease.end) t = lease.end;
        return uint256(lease.units) * batch.price * (t - start) / 3600;
    }

    /// @dev The full cost of a lease: what `settle` locks for it.
    function _leaseCost(uint256 units, uint256 price, uint256 duration) internal pure returns (uint256) {
        return units * price * duration / 3600;
    }

    /// @dev The parameters the leases of `batch` opened under.
    function _termsOf(BatchTerms memory batch) internal view returns (Params storage) {
        return paramsAt[batch.paramsVersion];
    }

    /// @dev Accrual up to this time has been paid (`paidUntil`, zero meaning the start).
    function _paidUntil(LeaseRecord memory lease, BatchTerms memory batch) private pure returns (uint256) {
        uint256 paidUntil = lease.paidUntil;
        // Slither: zero is the stored encoding of "the start".
        // slither-disable-next-line incorrect-equality
        return paidUntil == 0 ? batch.start : paidUntil;
    }

    /// @dev The latest heartbeat (`lastHeartbeat`, zero meaning the start).
    function _lastHeartbeat(LeaseRecord memory lease, BatchTerms memory batch) private pure returns (uint256) {
        uint256 last = lease.lastHeartbeat;
        // Slither: zero is the stored encoding of "the start".
        // slither-disable-next-line incorrect-equality
        return last == 0 ? batch.start : last;
    }
}
