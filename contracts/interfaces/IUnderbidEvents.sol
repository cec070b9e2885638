// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Every event of the Underbid core (escrow, stake, leases, settlement).
/// @dev One event per state change, so an indexer can rebuild every balance from logs alone.
interface IUnderbidEvents {
    /// @dev Why a batched `heartbeat` or `claim` passed over a lease instead of reverting.
    enum SkipReason {
        Closed,
        Ended,
        FaultPending
    }

    /// @dev Version `version` of the parameters applies to leases opened from now on.
    event ParamsUpdated(
        uint24 indexed version,
        uint32 unbondingPeriod,
        uint32 heartbeatInterval,
        uint32 heartbeatGrace,
        uint16 slashBps,
        uint16 slashBuyerBps,
        uint16 slashReporterBps,
        uint32 challengeWindow,
        uint32 matcherExitDelay,
        uint16 matcherSlashBps,
        uint16 challengerShareBps
    );

    event MatcherBonded(address indexed matcher, uint256 amount, uint256 bond, address receiptSigner);
    event MatcherExitRequested(address indexed matcher, uint256 exitAt);
    event MatcherBondWithdrawn(address indexed matcher, uint256 amount);
    event MatcherSlashed(
        address indexed matcher,
        uint64 indexed round,
        bytes32 indexed bidDigest,
        address challenger,
        uint256 slashed,
        uint256 toChallenger,
        uint256 burned
    );

    event Deposited(address indexed buyer, uint256 amount);
    event WithdrawalRequested(address indexed buyer, uint256 amount, uint256 readyAt);
    event Withdrawn(address indexed buyer, uint256 amount);

    /// @dev From `effectiveAt` only `matcher` may settle `account`'s messages.
    event MatcherBound(address indexed account, address indexed matcher, uint256 effectiveAt);

    event ProviderRegistered(address indexed provider, string metadataURI);
    event MetadataUpdated(address indexed provider, string metadataURI);
    event Staked(address indexed provider, uint256 amount);
    event UnstakeRequested(address indexed provider, uint256 amount, uint256 unlocksAt);
    event UnbondedWithdrawn(address indexed provider, uint256 amount);

    event CancelRequested(address indexed signer, uint256 nonce, uint256 effectiveAt);
    event NonceCancelled(address indexed signer, uint256 nonce);

    event LeaseOpened(
        bytes32 indexed leaseId,
        uint64 indexed round,
        address indexed buyer,
        address matcher,
        address provider,
        bytes32 market,
        bytes32 orderDigest,
        bytes32 bidDigest,
        uint256 units,
        uint256 price,
        uint256 start,
        uint256 end
    );
    /// @dev The lease's provider heartbeated it at this block's time (`getLease(leaseId).lastHeartbeat`).
    event Heartbeat(bytes32 indexed leaseId);
    /// @dev A batched heartbeat or claim left this lease alone, for `reason`.
    event LeaseSkipped(bytes32 indexed leaseId, SkipReason reason);
    /// @dev The lease closed: its whole cost left the buyer's locked escrow, `refund` (the part
    /// not paid to the provider) went back to its free escrow; `collateral` was unlocked from stake.
    /// NOTE: payments to providers (claim, close, reportFault) have no event here: each is the
    /// credit token's `Transfer` from this contract to the provider, and a lease's paid-until is
    /// `getLease(leaseId).paidUntil`; at the close, paid = cost - refund.
    event LeaseClosed(bytes32 indexed leaseId, uint256 refund, uint256 collateral);
    event FaultReported(
        bytes32 indexed leaseId,
        address indexed reporter,
        uint256 slashed,
        uint256 toBuyer,
        uint256 toReporter,
        uint256 burned
    );

    event ClearingPrice(address indexed matcher, uint64 indexed round, bytes32 indexed market, uint256 price);
    event BatchSettled(uint64 indexed round, address indexed matcher, uint256 batch, uint256 matches, bool finalBatch);
}
