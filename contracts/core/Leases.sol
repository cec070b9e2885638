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

    /// @dev Pays the caller what its leases have accrued while covered by heartbeats. A lease past
    /// its end is also closed: uncovered time is refunded to the buyer and the collateral unlocked.
    /// A closed lease, or one with a reportable fault, is skipped with a `LeaseSkipped` event.
    /// @param leaseIds Leases served by the caller.
    /// @return total Credits sent to the caller.
    /// @return skipped How many leases were skipped.
    /// Reverts with `UnknownLease` and `NotLeaseProvider`.
    /// NOTE: a running lease is paid on its raw word, like `heartbeat` (one read, one write of
    /// the `paidUntil` bits, the batch terms of the previous lease remembered), and the payments
    /// of consecutive leases of one buyer leave its locked escrow in one write (`_takeLocked`):
    /// the sums are the same as one write per payment, so every balance ends where it did. A
    /// lease past its end takes the general path (`_settleAndClose`), once in its life.
    function claim(bytes32[] calldata leaseIds) external nonReentrant returns (uint256 total, uint256 skipped) {
        uint32 caller = _bindings[msg.sender].id;
        // The terms of the previous lease's batch: a provider's leases mostly share them.
        uint256 lastRef;
        BatchTerms memory batch;
        // The buyer of the current run of payments, and what the run has paid so far.
        uint256 runBuyer;
        uint256 runPaid;
        for (uint256 i; i < leaseIds.length; ++i) {
            bytes32 leaseId = leaseIds[i];
            (LeaseRecord storage record, uint256 word) = _providerLease(leaseId, caller);
            uint256 ref = uint32(word >> 96);
            if (ref != lastRef) (lastRef, batch) = (ref, _batchTerms[uint32(ref)]);
            uint256 end = uint40(word >> 128);
            uint256 last = uint40(word >> 208);
            if (last == 0) last = batch.start;
            uint256 stopAt = last + batch.heartbeatInterval;
            bool closed = word >> 248 != 0;
            // `_faultAt`: a fault is reportable once the heartbeats stop short of the end and
            // the grace after the last covered second has passed.
            if (closed || (stopAt < end && block.timestamp > stopAt + batch.heartbeatGrace)) {
                ++skipped;
                emit LeaseSkipped(leaseId, closed ? SkipReason.Closed : SkipReason.FaultPending);
                continue;
            }
            if (block.timestamp >= end) {
                (LeaseRecord memory lease,) = _load(leaseId);
                total += _settleAndClose(leaseId, lease, batch, block.timestamp);
                _store(leaseId, lease);
                continue;
            }
            // `_payUpTo(now)` for a running lease: now < end, so `until` needs no cap at the end.
            uint256 until = block.timestamp < stopAt ? block.timestamp : stopAt;
            uint256 paidUntil = uint40(word >> 168);
            uint256 start = batch.start;
            if (paidUntil == 0) paidUntil = start;
            if (until <= paidUntil) continue;
            uint256 perHour = uint256(uint32(word >> 64)) * batch.price;
            uint256 amount = perHour * (until - start) / 3600 - perHour * (paidUntil - start) / 3600;
            word = (word & ~(uint256(type(uint40).max) << 168)) | (until << 168);
            assembly ("memory-safe") {
                sstore(record.slot, word)
            }
            total += amount;
            uint256 buyer = uint32(word);
            if (buyer != runBuyer) {
                _takeLocked(runBuyer, runPaid);
                (runBuyer, runPaid) = (buyer, 0);
            }
            runPaid += amount;
            emit LeasePaid(leaseId, msg.sender, amount, until);
        }
        _takeLocked(runBuyer, runPaid);
        if (total != 0) credit.safeTransfer(msg.sender, total);
    }

    /// @dev The raw word of lease `leaseId`, served by the provider with account id `caller`
    /// (`heartbeat` and `claim` work on it). Reverts with `UnknownLease` and `NotLeaseProvider`.
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

    /// @dev Takes `amount` paid out of the locked escrow of the account with id `buyerId` (no-op
    /// for zero, which also stands for "no run yet" in `claim`).
    function _takeLocked(uint256 buyerId, uint256 amount) private {
        if (amount != 0) escrowOf[accountAt[uint32(buyerId)]].locked -= uint128(amount);
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
        _store(leaseId, lease);
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
        _store(leaseId, lease);
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

    /// @dev Pays the provider up to `until`, refunds the buyer the rest, marks `lease` closed (the
    /// caller stores it).
    /// @return paid Credits owed to the provider; the caller transfers them.
    function _settleAndClose(bytes32 leaseId, LeaseRecord memory lease, BatchTerms memory batch, uint256 until)
        private
        returns (uint256 paid)
    {
        paid = _payUpTo(leaseId, lease, batch, until);
        uint256 refund = _accrued(lease, batch, lease.end) - _accrued(lease, batch, _paidUntil(lease, batch));
        lease.closed = true;
        if (refund != 0) {
            EscrowAccount storage account = escrowOf[accountAt[lease.buyerId]];
            account.locked -= uint128(refund);
            account.free += uint128(refund);
        }
        uint256 collateral = lease.units * stakePerUnit;
        _unlockStake(accountAt[lease.providerId], collateral);
        emit LeaseClosed(leaseId, refund, collateral);
    }

    /// @dev Moves accrual between `paidUntil` and `min(until, end, last heartbeat + interval)` out
    /// of the buyer's locked escrow and advances `lease.paidUntil` (the caller stores it).
    /// @return amount Credits owed to the provider; the caller transfers them.
    function _payUpTo(bytes32 leaseId, LeaseRecord memory lease, BatchTerms memory batch, uint256 until)
        private
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
        escrowOf[accountAt[lease.buyerId]].locked -= uint128(amount);
        emit LeasePaid(leaseId, accountAt[lease.providerId], amount, until);
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
