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

    // ----- notices and matcher binding -----
    /// @dev The action was announced, but its notice period ends at `readyAt`.
    error NoticeNotOver(uint256 readyAt);
    /// @dev No withdrawal was requested.
    error NothingToWithdraw(address buyer);
    /// @dev Only the matcher an account is bound to may settle its messages.
    error AccountNotBound(address account, address matcher);
    /// @dev The message names another matcher than the one settling it.
    error MessageForOtherMatcher(bytes32 digest, address matcher);
    /// @dev The nonce's cancellation was not requested, or not `noticePeriod` ago.
    error CancelNotRequested(address signer, uint256 nonce);

    // ----- buyer escrow -----
    /// @dev Free escrow does not cover the request.
    error InsufficientEscrow(address buyer, uint256 required, uint256 free);

    // ----- nonces -----
    /// @dev The nonce is used up: its message was completely filled, it was cancelled, or another
    /// message with the same nonce was filled first (a nonce names one message: the first filled).
    error NonceUsed(address signer, uint256 nonce);

    // ----- signatures -----
    /// @dev The signature is malformed: wrong length, high-s (malleated) or otherwise unrecoverable.
    error InvalidSignature();
    /// @dev The signature recovers to someone other than the message's signer.
    error SignerMismatch(address expected, address recovered);

    // ----- settlement -----
    error SignatureCountMismatch();
    /// @dev The batch's own deadline passed before it was included.
    error BatchExpired(uint256 deadline);
    error RoundAlreadySettled(uint64 round);
    error BatchOutOfOrder(uint64 round, uint256 expected, uint256 given);
    /// @dev A new round's id must be above every round id the matcher used before.
    error RoundIdNotIncreasing(uint64 round, uint64 lastRound);
    /// @dev The round can take no more batches: the matcher opened a later round, or its
    /// `maxRoundSpan` since the first batch is over.
    error RoundClosed(uint64 round);
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
    /// @dev The order is shorter than the protocol's minimum lease.
    error DurationTooShort(uint256 orderIndex, uint256 minimum);
    /// @dev The lease would cost its buyer nothing (units x price x duration rounds to zero).
    error ZeroCostLease(uint256 matchIndex);
    error OrderOverfilled(uint256 orderIndex);
    error BidOverfilled(uint256 bidIndex);
    /// @dev The same (round, order, bid) pair appears twice; merge the units into one match.
    error DuplicateLease(bytes32 leaseId);
    /// @dev Two messages (or one listed twice) with the same signer and nonce in one batch.
    error DuplicateNonce(address signer, uint256 nonce);

    // ----- matcher bonds and challenges -----
    /// @dev The caller has no bond at or above the minimum, or has asked to leave.
    error MatcherNotBonded(address matcher);
    error MatcherExiting(address matcher);
    error ExitNotRequested(address matcher);
    error ExitDelayNotOver(uint256 exitAt);
    /// @dev A matcher's receipt signer is fixed while it is bonded.
    error ReceiptSignerFixed(address signer);
    /// @dev The round can still take batches; challenge once it is final.
    error RoundNotFinal(uint64 round);
    error ChallengeWindowClosed(uint64 round, uint256 closedAt);
    /// @dev This (round, bid) pair was already challenged successfully.
    error AlreadyChallenged(uint64 round, bytes32 bidDigest);
    error NotBidProvider(address caller, address provider);
    /// @dev The witness round is before the round the receipt admitted the bid to.
    error WitnessBeforeReceipt(uint64 receiptRound, uint64 round);
    /// @dev The receipt or the bid names another matcher than the one challenged.
    error ReceiptMatcherMismatch(address named, address matcher);
    /// @dev The receipt is for another bid than the one supplied.
    error ReceiptBidMismatch(bytes32 receiptBidHash, bytes32 bidDigest);
    /// @dev The bid expired less than `noticePeriod` after the witness lease's batch landed: a
    /// matcher may leave out a bid that could expire before its batch lands.
    error BidExpiredBeforeWitness(uint256 deadline, uint256 witnessStart);
    /// @dev The provider asked to cancel the bid's nonce.
    error BidCancelled(address provider, uint256 nonce);
    /// @dev The bid had no unit left at the end of the witness round (filled in or before it).
    error BidFullyFilled(bytes32 bidDigest);
    /// @dev Another message with the bid's nonce was filled: the bid was never fillable after it.
    /// (Also raised for a bid used up by its first fill when no `FillProof` lease is given.)
    error BidNonceTaken(address provider, uint256 nonce);
    /// @dev The challenge's `FillProof` names no lease of the challenger's bid.
    error FillLeaseNotFound(bytes32 leaseId);
    /// @dev The provider changed its matcher binding after the receipt, or is no longer bound.
    error ProviderLeftMatcher(address provider, address matcher);
    /// @dev The provider's stake went down (unstake request or slash) after the receipt was issued.
    error StakeDecreasedAfterReceipt(uint256 decreasedAt, uint256 issuedAt);
    /// @dev No lease of the challenged round matches the witness order and bid.
    error WitnessNotInRound(bytes32 leaseId);
    error WitnessMarketMismatch(bytes32 witnessMarket, bytes32 market);
    /// @dev The witness bid is not priced strictly above the challenger's bid.
    error WitnessNotPricier(uint256 witnessPrice, uint256 bidPrice);
    /// @dev The witness lease is longer than the challenger's bid accepts.
    error WitnessDurationTooLong(uint256 duration, uint256 maxDuration);
    /// @dev The challenger's own lease in the witness round is not shorter than the witness lease.
    error SwapNotShorter(uint256 ownDuration, uint256 witnessDuration);

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
