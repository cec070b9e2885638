// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Every custom error of the Underbid protocol, in one place.
/// @dev Contracts inherit this interface so each error appears in their ABI and client tools
/// (ape, web3.py) decode reverts by name. Indexes in errors point into the arrays passed to
/// `settle`, so an off-chain matcher can drop the offending message and retry.
interface IUnderbidErrors {
    // ----- configuration and access -----
    /// @dev A parameter is outside its allowed range (a bps above 10_000, a zero period...).
    error InvalidParameter(string name);
    /// @dev A one-time binding (token minter, protocol contract) was attempted twice.
    error AlreadyBound();
    /// @dev The caller is not the contract allowed to do this.
    error UnauthorizedCaller(address caller);
    /// @dev An amount argument was zero where a positive amount is required.
    error ZeroAmount();

    // ----- credit token -----
    /// @dev Credits move only between a user and a protocol contract, never user to user.
    error CreditNonTransferable(address from, address to);

    // ----- oracle -----
    /// @dev The oracle was given a zero price.
    error InvalidPrice();
    /// @dev No price has ever been posted.
    error PriceNotSet();
    /// @dev The latest price is older than the oracle's max age.
    error StalePrice(uint256 updatedAt, uint256 maxAge);

    // ----- burn-mint equilibrium -----
    /// @dev The credits a mint would produce are below the minimum mint.
    error MintBelowMinimum(uint256 creditsOut, uint256 minimum);
    /// @dev The output is below the caller's slippage bound.
    error SlippageExceeded(uint256 out, uint256 minOut);
    /// @dev Redemption is paused: net UBT minted in the rolling window would pass the cap.
    error RedemptionHalted(uint256 netMinted, uint256 requested, uint256 cap);

    // ----- provider stake -----
    error AlreadyRegistered(address provider);
    error NotRegistered(address provider);
    /// @dev Free stake (staked minus locked collateral) does not cover the request.
    error InsufficientFreeStake(address provider, uint256 required, uint256 free);
    error NothingUnbonding(address provider);
    error UnbondingNotFinished(uint256 unlocksAt);

    // ----- buyer escrow -----
    /// @dev Free escrow does not cover the request.
    error InsufficientEscrow(address buyer, uint256 required, uint256 free);

    // ----- nonces -----
    /// @dev The nonce was already consumed: its message was completely filled, or it was cancelled.
    error NonceUsed(address signer, uint256 nonce);

    // ----- signatures -----
    /// @dev The signature is malformed: wrong length, high-s (malleated) or otherwise unrecoverable.
    error InvalidSignature();
    /// @dev The signature recovers to someone other than the message's signer.
    error SignerMismatch(address expected, address recovered);

    // ----- settlement -----
    error SignatureCountMismatch();
    error RoundAlreadySettled(uint64 round);
    error BatchOutOfOrder(uint64 round, uint256 expected, uint256 given);
    error RoundOwnedByOtherMatcher(uint64 round, address matcher);
    error ZeroClearingPrice(bytes32 market);
    /// @dev The batch names a second, different price for a market in this round.
    error ConflictingClearingPrice(bytes32 market, uint256 stored, uint256 given);
    error MarketNotPriced(bytes32 market);
    error MatchIndexOutOfRange(uint256 matchIndex);
    error ZeroUnits(uint256 matchIndex);
    error OrderExpired(uint256 orderIndex);
    error BidExpired(uint256 bidIndex);
    error MarketMismatch(uint256 orderIndex, uint256 bidIndex);
    error BidAboveClearingPrice(uint256 bidIndex, uint256 bidPrice, uint256 clearingPrice);
    error ClearingPriceAboveMaxPrice(uint256 orderIndex, uint256 maxPrice, uint256 clearingPrice);
    error DurationTooLong(uint256 orderIndex, uint256 bidIndex);
    error OrderOverfilled(uint256 orderIndex);
    error BidOverfilled(uint256 bidIndex);
    /// @dev The same (round, order, bid) pair appears twice; merge the units into one match.
    error DuplicateLease(bytes32 leaseId);
    /// @dev The same signed order or bid is listed twice in one batch; list it once.
    error DuplicateMessage(bytes32 digest);

    // ----- matcher bonds and challenges -----
    /// @dev The caller has no bond at or above the minimum, or has asked to leave.
    error MatcherNotBonded(address matcher);
    error MatcherExiting(address matcher);
    error ExitNotRequested(address matcher);
    error ExitDelayNotOver(uint256 exitAt);
    error RoundNotSettled(uint64 round);
    error ChallengeWindowClosed(uint64 round, uint256 closedAt);
    /// @dev This (round, bid) pair was already challenged successfully.
    error AlreadyChallenged(uint64 round, bytes32 bidDigest);
    error NotBidProvider(address caller, address provider);
    /// @dev The receipt is for another round than the one challenged.
    error ReceiptRoundMismatch(uint64 receiptRound, uint64 round);
    /// @dev The receipt is for another bid than the one supplied.
    error ReceiptBidMismatch(bytes32 receiptBidHash, bytes32 bidDigest);
    /// @dev The bid's deadline passed before the round settled, so the round could not include it.
    error BidExpiredBeforeRound(uint256 deadline, uint256 settledAt);
    error BidCancelled(address provider, uint256 nonce);
    error BidFullyFilled(bytes32 bidDigest);
    /// @dev The provider's stake went down (unstake request or slash) after the receipt was issued.
    error StakeDecreasedAfterReceipt(uint256 decreasedAt, uint256 issuedAt);
    /// @dev Another matcher locked the provider's stake after the receipt: the round's matcher
    /// may have found the bid unfundable, so the receipt proves nothing.
    error StakeLockedByOtherMatcher(address provider, uint256 issuedAt);
    /// @dev No lease of the challenged round matches the witness order and bid.
    error WitnessNotInRound(bytes32 leaseId);
    error WitnessMarketMismatch(bytes32 witnessMarket, bytes32 market);
    /// @dev The witness bid is not priced strictly above the challenger's bid.
    error WitnessNotPricier(uint256 witnessPrice, uint256 bidPrice);
    /// @dev The witness lease is longer than the challenger's bid accepts.
    error WitnessDurationTooLong(uint256 duration, uint256 maxDuration);

    // ----- leases -----
    error UnknownLease(bytes32 leaseId);
    error LeaseAlreadyClosed(bytes32 leaseId);
    error NotLeaseBuyer(bytes32 leaseId, address caller);
    error NotLeaseProvider(bytes32 leaseId, address caller);
    error LeaseEnded(bytes32 leaseId);
    /// @dev A fault is reportable on this lease: it can only end through `reportFault` now.
    error FaultPending(bytes32 leaseId);
    /// @dev The heartbeat came after a fault became reportable; the lease can only be reported now.
    error HeartbeatMissed(bytes32 leaseId);
    /// @dev The provider's heartbeats are not late yet: a fault can be reported from `reportableAt`.
    error HeartbeatNotMissed(bytes32 leaseId, uint256 reportableAt);
}
