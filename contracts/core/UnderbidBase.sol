// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";
import {IUnderbidEvents} from "../interfaces/IUnderbidEvents.sol";
import {UnderbidToken} from "../tokens/UnderbidToken.sol";
import {UnderbidCredit} from "../tokens/UnderbidCredit.sol";

/// @title Shared state of the Underbid core: its tokens, roles and tunable parameters.
/// @dev The core (escrow, stake, leases, settlement) is one deployed contract built from abstract
/// parts, one concept per file, so that `settle` touches escrow and stake without external calls.
abstract contract UnderbidBase is AccessControl, ReentrancyGuardTransient, IUnderbidErrors, IUnderbidEvents {
    uint256 internal constant BPS = 10_000;

    /// @dev Parameters an admin may tune. Packed into one storage word.
    struct Params {
        /// Seconds between `requestUnstake` and `withdrawUnbonded`.
        uint32 unbondingPeriod;
        /// A provider must heartbeat each lease at least this often (seconds).
        uint32 heartbeatInterval;
        /// Extra seconds after a missed interval before a fault can be reported.
        uint32 heartbeatGrace;
        /// Share of a faulty lease's collateral that is slashed.
        uint16 slashBps;
        /// Shares of the slashed amount paid to the buyer and to the reporter; the rest is burned.
        uint16 slashBuyerBps;
        uint16 slashReporterBps;
        /// Seconds after a round settles during which its matcher can be challenged.
        uint32 challengeWindow;
        /// Seconds between a matcher asking to leave and withdrawing its bond; > challengeWindow.
        uint32 matcherExitDelay;
        /// Share of a matcher's bond slashed by one successful challenge.
        uint16 matcherSlashBps;
        /// Share of that slash paid to the challenger; the rest is burned.
        uint16 challengerShareBps;
    }

    UnderbidToken public immutable ubt;
    UnderbidCredit public immutable credit;
    /// @dev UBT (wei) of provider stake locked per leased unit while the lease runs.
    /// NOTE: immutable, so a lease's collateral is always `units * stakePerUnit` and need not be stored.
    uint256 public immutable stakePerUnit;

    /// @dev The least UBT bond with which a matcher may settle.
    uint256 public immutable minMatcherBond;

    Params public params;

    /// @dev UBT burned by slashing (providers and matchers) so far, for the UBT conservation check.
    uint256 public totalSlashedBurned;

    constructor(
        address admin,
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        uint256 stakePerUnit_,
        uint256 minMatcherBond_,
        Params memory params_
    ) {
        if (stakePerUnit_ == 0) revert InvalidParameter("stakePerUnit");
        if (minMatcherBond_ == 0) revert InvalidParameter("minMatcherBond");
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        ubt = ubt_;
        credit = credit_;
        stakePerUnit = stakePerUnit_;
        minMatcherBond = minMatcherBond_;
        _setParams(params_);
    }

    /// @dev Replaces the tunable parameters. Leases already open follow the new values.
    /// Reverts with `InvalidParameter` for a zero interval or window, bps shares above 10_000, or
    /// a matcher exit delay not longer than the challenge window.
    function setParams(Params calldata newParams) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParams(newParams);
    }

    function _setParams(Params memory p) private {
        if (p.heartbeatInterval == 0) revert InvalidParameter("heartbeatInterval");
        if (p.slashBps > BPS) revert InvalidParameter("slashBps");
        if (uint256(p.slashBuyerBps) + p.slashReporterBps > BPS) revert InvalidParameter("slashSplit");
        if (p.challengeWindow == 0) revert InvalidParameter("challengeWindow");
        if (p.matcherExitDelay <= p.challengeWindow) revert InvalidParameter("matcherExitDelay");
        if (p.matcherSlashBps > BPS) revert InvalidParameter("matcherSlashBps");
        if (p.challengerShareBps > BPS) revert InvalidParameter("challengerShareBps");
        params = p;
        emit ParamsUpdated(
            p.unbondingPeriod,
            p.heartbeatInterval,
            p.heartbeatGrace,
            p.slashBps,
            p.slashBuyerBps,
            p.slashReporterBps,
            p.challengeWindow,
            p.matcherExitDelay,
            p.matcherSlashBps,
            p.challengerShareBps
        );
    }
}
