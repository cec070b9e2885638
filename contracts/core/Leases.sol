// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {BuyerEscrow} from "./BuyerEscrow.sol";
import {ProviderStaking} from "./ProviderStaking.sol";

/// @title Leases: escrow payment streams backed by provider collateral.
/// @dev A lease pays `units * price` credit base units per hour, accrued per second from `start`
/// to `end`. Settlement is lazy: balances move when someone touches the lease, and `leaseBalances`
/// shows the live figures. Amounts are computed from cumulative accruals, each rounded down, so the
/// payments of a lease add up to exactly the cost locked for it and no dust is created or lost.
abstract contract Leases is BuyerEscrow, ProviderStaking {
    using SafeERC20 for *;

    /// @dev Two words at opening; the third (`paidUntil`, `lastHeartbeat`) is written on first touch.
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

    // Slither: written through the storage pointer in _openLease (a Slither false positive).
    // slither-disable-next-line uninitialized-state
    mapping(bytes32 => Lease) internal _leases;

    /// @dev The lease record. Reverts with `UnknownLease`.
    function getLease(bytes32 leaseId) external view returns (Lease memory) {
        return _existingLease(leaseId);
    }

    /// @dev Live balances of a lease at the current block time.
    /// @return accruedUnpaid Credits the provider can claim now (accrual covered by heartbeats).
    /// @return remaining Credits still locked for the rest of the lease.
    /// @return collateral UBT locked from the provider's stake.
    function leaseBalances(bytes32 leaseId)
        external
        view
        returns (uint256 accruedUnpaid, uint256 remaining, uint256 collateral)
    {
        Lease storage lease = _existingLease(leaseId);
        if (lease.closed) return (0, 0, 0);
        uint256 paid = _accrued(lease, _paidUntil(lease));
        uint256 covered = uint256(_lastHeartbeat(lease)) + _termsOf(lease).heartbeatInterval;
        uint256 payable_ = _accrued(lease, block.timestamp < covered ? block.timestamp : covered);
        accruedUnpaid = payable_ > paid ? payable_ - paid : 0;
        remaining = _accrued(lease, lease.end) - paid - accruedUnpaid;
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
        for (uint256 i; i < leaseIds.length; ++i) {
            bytes32 leaseId = leaseIds[i];
            Lease storage lease = _existingLease(leaseId);
            if (lease.provider != msg.sender) revert NotLeaseProvider(leaseId, msg.sender);
            SkipReason reason;
            if (lease.closed) reason = SkipReason.Closed;
            else if (block.timestamp >= lease.end) reason = SkipReason.Ended;
            else if (block.timestamp >= faultReportableAt(leaseId)) reason = SkipReason.FaultPending;
            else {
                lease.lastHeartbeat = uint40(block.timestamp);
                emit Heartbeat(leaseId, block.timestamp);
                continue;
            }
            ++skipped;
            emit LeaseSkipped(leaseId, reason);
        }
    }

    /// @dev Pays the caller what its leases have accrued while covered by heartbeats. A lease past
    /// its end is also closed: uncovered time is refunded to the buyer and the collateral unlocked.
    /// A closed lease, or one with a reportable fault, is skipped with a `LeaseSkipped` event.
    /// @param leaseIds Leases served by the caller.
    /// @return total Credits sent to the caller.
    /// @return skipped How many leases were skipped.
    /// Reverts with `UnknownLease` and `NotLeaseProvider`.
    function claim(bytes32[] calldata leaseIds) external nonReentrant returns (uint256 total, uint256 skipped) {
        for (uint256 i; i < leaseIds.length; ++i) {
            bytes32 leaseId = leaseIds[i];
            Lease storage lease = _existingLease(leaseId);
            if (lease.provider != msg.sender) revert NotLeaseProvider(leaseId, msg.sender);
            if (lease.closed || block.timestamp >= faultReportableAt(leaseId)) {
                ++skipped;
                emit LeaseSkipped(leaseId, lease.closed ? SkipReason.Closed : SkipReason.FaultPending);
                continue;
            }
            total += block.timestamp >= lease.end
                ? _settleAndClose(leaseId, lease, block.timestamp)
                : _payUpTo(leaseId, lease, block.timestamp);
        }
        if (total != 0) credit.safeTransfer(msg.sender, total);
    }

    /// @dev Closes a lease. Before its end only the buyer may: the provider is paid what accrued
    /// and the buyer is refunded the rest into free escrow. After its end anyone may, to pay the
    /// provider and release the collateral.
    /// Reverts with `UnknownLease`, `LeaseAlreadyClosed`, `NotLeaseBuyer` and `FaultPending`.
    function close(bytes32 leaseId) external nonReentrant {
        Lease storage lease = _existingLease(leaseId);
        if (lease.closed) revert LeaseAlreadyClosed(leaseId);
        if (block.timestamp < lease.end && msg.sender != lease.buyer) revert NotLeaseBuyer(leaseId, msg.sender);
        _requireNoFault(leaseId);
        uint256 paid = _settleAndClose(leaseId, lease, block.timestamp);
        if (paid != 0) credit.safeTransfer(lease.provider, paid);
    }

    /// @dev Reports a missed heartbeat. Accrual stops one interval after the last heartbeat; the
    /// provider is paid up to then, the buyer is refunded the rest, and `slashBps` of the collateral
    /// is slashed: `slashBuyerBps` of it to the buyer, `slashReporterBps` to the caller, the rest burned.
    /// Reverts with `UnknownLease`, `LeaseAlreadyClosed` and `HeartbeatNotMissed`.
    function reportFault(bytes32 leaseId) external nonReentrant {
        Lease storage lease = _existingLease(leaseId);
        if (lease.closed) revert LeaseAlreadyClosed(leaseId);
        uint256 reportableAt = faultReportableAt(leaseId);
        if (block.timestamp < reportableAt) revert HeartbeatNotMissed(leaseId, reportableAt);

        Params memory terms = _termsOf(lease);
        uint256 stopAt = uint256(_lastHeartbeat(lease)) + terms.heartbeatInterval;
        address provider = lease.provider;
        address buyer = lease.buyer;
        uint256 collateral = lease.units * stakePerUnit;
        uint256 paid = _settleAndClose(leaseId, lease, stopAt);
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
    /// provider's heartbeats already cover the lease to its end.
    function faultReportableAt(bytes32 leaseId) public view returns (uint256) {
        Lease storage lease = _existingLease(leaseId);
        Params memory terms = _termsOf(lease);
        uint256 stopAt = uint256(_lastHeartbeat(lease)) + terms.heartbeatInterval;
        if (stopAt >= lease.end) return type(uint256).max;
        return stopAt + terms.heartbeatGrace + 1;
    }

    /// @dev Reverts with `FaultPending` once a fault is reportable: such a lease ends only through
    /// `reportFault`, so neither a claim nor a close after the end can dodge the slash.
    function _requireNoFault(bytes32 leaseId) private view {
        if (block.timestamp >= faultReportableAt(leaseId)) revert FaultPending(leaseId);
    }

    /// @dev Pays the provider up to `until`, refunds the buyer the rest, closes the lease.
    /// @return paid Credits owed to the provider; the caller transfers them.
    function _settleAndClose(bytes32 leaseId, Lease storage lease, uint256 until) private returns (uint256 paid) {
        paid = _payUpTo(leaseId, lease, until);
        uint256 refund = _accrued(lease, lease.end) - _accrued(lease, _paidUntil(lease));
        _close(leaseId, lease, refund);
    }

    /// @dev Moves accrual between `paidUntil` and `min(until, end, last heartbeat + interval)` out of the buyer's locked escrow.
    /// @return amount Credits owed to the provider; the caller transfers them.
    function _payUpTo(bytes32 leaseId, Lease storage lease, uint256 until) private returns (uint256 amount) {
        // Only time covered by heartbeats is paid for.
        uint256 covered = uint256(_lastHeartbeat(lease)) + _termsOf(lease).heartbeatInterval;
        if (until > covered) until = covered;
        if (until > lease.end) until = lease.end;
        uint256 paidUntil = _paidUntil(lease);
        if (until <= paidUntil) return 0;
        amount = _accrued(lease, until) - _accrued(lease, paidUntil);
        lease.paidUntil = uint40(until);
        escrowOf[lease.buyer].locked -= uint128(amount);
        emit LeasePaid(leaseId, lease.provider, amount, until);
    }

    /// @dev Refunds `refund` to the buyer's free escrow, unlocks the collateral, marks the lease closed.
    function _close(bytes32 leaseId, Lease storage lease, uint256 refund) private {
        lease.closed = true;
        if (refund != 0) {
            EscrowAccount storage account = escrowOf[lease.buyer];
            account.locked -= uint128(refund);
            account.free += uint128(refund);
        }
        uint256 collateral = lease.units * stakePerUnit;
        _unlockStake(lease.provider, collateral);
        emit LeaseClosed(leaseId, refund, collateral);
    }

    /// @dev Opens a lease and emits nothing; the caller emits `LeaseOpened` with its context.
    function _openLease(
        bytes32 leaseId,
        address buyer,
        address provider,
        uint256 units,
        uint256 price,
        uint256 duration
    ) internal {
        Lease storage lease = _leases[leaseId];
        if (lease.buyer != address(0)) revert DuplicateLease(leaseId);
        lease.buyer = buyer;
        lease.start = uint32(block.timestamp);
        lease.end = uint32(block.timestamp + duration);
        lease.paramsVersion = paramsVersion;
        lease.provider = provider;
        lease.units = uint32(units);
        lease.price = uint64(price);
    }

    /// @dev Credits a lease accrues from its start to `t` (capped at its end), rounded down.
    function _accrued(Lease storage lease, uint256 t) private view returns (uint256) {
        uint256 start = lease.start;
        if (t <= start) return 0;
        uint256 end = lease.end;
        if (t > end) t = end;
        return uint256(lease.units) * lease.price * (t - start) / 3600;
    }

    /// @dev The full cost of a lease: what `settle` locks for it.
    function _leaseCost(uint256 units, uint256 price, uint256 duration) internal pure returns (uint256) {
        return units * price * duration / 3600;
    }

    /// @dev The parameters `lease` opened under.
    function _termsOf(Lease storage lease) internal view returns (Params memory) {
        return paramsAt[lease.paramsVersion];
    }

    function _paidUntil(Lease storage lease) private view returns (uint256) {
        uint256 paidUntil = lease.paidUntil;
        return paidUntil == 0 ? lease.start : paidUntil;
    }

    function _lastHeartbeat(Lease storage lease) private view returns (uint256) {
        uint256 last = lease.lastHeartbeat;
        return last == 0 ? lease.start : last;
    }

    function _existingLease(bytes32 leaseId) internal view returns (Lease storage lease) {
        lease = _leases[leaseId];
        if (lease.buyer == address(0)) revert UnknownLease(leaseId);
    }
}
