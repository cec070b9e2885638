// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";
import {IUnderbidEvents} from "../interfaces/IUnderbidEvents.sol";
import {UnderbidToken} from "../tokens/UnderbidToken.sol";
import {UnderbidCredit} from "../tokens/UnderbidCredit.sol";

/// @title Shared state of the Underbid core: its tokens, roles and tunable parameters.
/// @dev The core (escrow, stake, leases, settlement) is one deployed contract built from abstract
/// parts, one concept per file, so that `settle` touches escrow and stake without external calls.
abstract contract UnderbidBase is Ownable, ReentrancyGuardTransient, IUnderbidErrors, IUnderbidEvents {
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

    /// @dev Fixed at deployment: what the soundness argument of `settle` and `challenge` leans on.
    struct Limits {
        /// UBT (wei) of provider stake locked per leased unit while the lease runs.
        uint256 stakePerUnit;
        /// The least UBT bond with which a matcher may settle.
        uint256 minMatcherBond;
        /// Seconds between announcing and doing anything that could make a matcher's batch
        /// revert: withdrawing escrow, unstaking, cancelling a nonce, moving to another matcher.
        uint32 noticePeriod;
        /// Seconds after a round's first batch during which its later batches may land.
        uint32 maxRoundSpan;
        /// The shortest lease `settle` opens, in seconds.
        uint32 minLeaseDuration;
    }

    UnderbidToken public immutable ubt;
    UnderbidCredit public immutable credit;
    /// @dev UBT (wei) of provider stake locked per leased unit while the lease runs.
    /// NOTE: immutable, so a lease's collateral is always `units * stakePerUnit` and need not be stored.
    uint256 public immutable stakePerUnit;
    /// @dev The least UBT bond with which a matcher may settle.
    uint256 public immutable minMatcherBond;
    /// @dev See `Limits.noticePeriod`.
    /// IMPORTANT: a matcher's batch deadline must be less than `noticePeriod` after the chain
    /// state it simulated against; then nothing announced after that state can take effect
    /// before the batch lands or expires.
    uint256 public immutable noticePeriod;
    /// @dev See `Limits.maxRoundSpan`.
    uint256 public immutable maxRoundSpan;
    /// @dev See `Limits.minLeaseDuration`.
    uint256 public immutable minLeaseDuration;

    /// @dev The parameters for leases opened from now on (`paramsAt[paramsVersion]`).
    Params public params;
    /// @dev Every version of the parameters; a lease keeps the version it opened under.
    mapping(uint24 => Params) internal paramsAt;
    uint24 public paramsVersion;

    /// @dev UBT burned by slashing (providers and matchers) so far, for the UBT conservation check.
    uint256 public totalSlashedBurned;

    constructor(
        address admin,
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        Limits memory limits,
        Params memory params_
    ) Ownable(admin) {
        if (limits.stakePerUnit == 0) revert InvalidParameter("stakePerUnit");
        if (limits.minMatcherBond == 0) revert InvalidParameter("minMatcherBond");
        if (limits.noticePeriod == 0) revert InvalidParameter("noticePeriod");
        if (limits.maxRoundSpan == 0) revert InvalidParameter("maxRoundSpan");
        if (limits.minLeaseDuration == 0) revert InvalidParameter("minLeaseDuration");
        // The credit fixes its escrow at construction (a predicted address): one bound to
        // another contract would refuse every transfer this one makes.
        if (credit_.escrow() != address(this)) revert InvalidParameter("credit");
        ubt = ubt_;
        credit = credit_;
        stakePerUnit = limits.stakePerUnit;
        minMatcherBond = limits.minMatcherBond;
        noticePeriod = limits.noticePeriod;
        maxRoundSpan = limits.maxRoundSpan;
        minLeaseDuration = limits.minLeaseDuration;
        _setParams(params_);
    }

    /// @dev Adds a new version of the tunable parameters, for leases opened from now on; open
    /// leases keep the version they opened under.
    /// IMPORTANT: deployments make an OpenZeppelin `TimelockController` the owner, so a change
    /// is public for the timelock's delay before it applies.
    /// Reverts with `InvalidParameter` for a zero interval or window, bps shares above 10_000, or
    /// a matcher exit delay not longer than the round span plus the challenge window.
    function setParams(Params calldata newParams) external onlyOwner {
        _setParams(newParams);
    }

    function _setParams(Params memory p) private {
        if (p.heartbeatInterval == 0) revert InvalidParameter("heartbeatInterval");
        if (p.slashBps > BPS) revert InvalidParameter("slashBps");
        if (uint256(p.slashBuyerBps) + p.slashReporterBps > BPS) revert InvalidParameter("slashSplit");
        if (p.challengeWindow == 0) revert InvalidParameter("challengeWindow");
        if (p.matcherExitDelay <= uint256(p.challengeWindow) + maxRoundSpan) revert InvalidParameter("matcherExitDelay");
        if (p.matcherSlashBps > BPS) revert InvalidParameter("matcherSlashBps");
        if (p.challengerShareBps > BPS) revert InvalidParameter("challengerShareBps");
        uint24 version = paramsVersion + 1;
        paramsVersion = version;
        paramsAt[version] = p;
        params = p;
        emit ParamsUpdated(
            version,
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
