// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IUnderbidErrors} from "./interfaces/IUnderbidErrors.sol";
import {IUnderbidEvents} from "./interfaces/IUnderbidEvents.sol";
import {BidLib} from "./libraries/BidLib.sol";
import {ReceiptLib} from "./libraries/ReceiptLib.sol";
import {SignatureVerification} from "./libraries/SignatureVerification.sol";
import {UnderbidSettlement} from "./UnderbidSettlement.sol";

/// @title The matcher court: a provider proves that a matcher's round passed over its bid.
/// @dev Deployed by `UnderbidSettlement` in its constructor, and the only contract that may make
/// it slash a matcher's bond. It reads everything it judges from the settlement's views, so it
/// holds no state but the record of challenges already won. (It lives apart from the settlement
/// only to keep both under the 24 KiB code size limit.)
///
/// An exact (maximum gains from trade) allocation never lets a pricier bid W win a lease that a
/// cheaper bid B of the same market could have served while B had a unit to spare, nor gives B
/// a strictly shorter lease than W in the same round when B accepts W's duration: moving one
/// unit from W to B (or swapping their leases) raises gains from trade by
/// `duration x (W.price - B.price)` or `(W.duration - B.duration) x (W.price - B.price)`.
contract MatcherCourt is IUnderbidErrors, IUnderbidEvents {
    /// @dev A lease of round `round` (of the challenged matcher), named by its order digest and bid.
    struct Witness {
        uint64 round;
        bytes32 orderDigest;
        BidLib.Bid bid;
    }

    /// @dev A lease of the challenger's own bid, named by its round and order digest. The spare-unit
    /// proof needs it only when the bid has no fill record although its nonce is claimed: the bid
    /// was then used up by its first fill, in one round (`UnorderedNonces` writes no record for a
    /// message filled completely in one go), and any of its leases names that round. Zero otherwise.
    struct FillProof {
        uint64 round;
        bytes32 orderDigest;
    }

    UnderbidSettlement public immutable settlement;

    /// @dev keccak256(matcher, round, bid digest) => true once a challenge with them succeeded.
    mapping(bytes32 => bool) public challenged;

    constructor(UnderbidSettlement settlement_) {
        settlement = settlement_;
    }

    /// @dev Proves that a round of `receipt.matcher` was allocated wrongly and slashes the matcher's bond.
    ///
    /// The caller proves:
    /// - always: `witness` is a lease of a final round `witness.round >= receipt.round` of the
    ///   matcher, in `bid`'s market, whose bid is priced strictly above `bid` and whose duration
    ///   `bid` accepts; the call comes within `maxRoundSpan + challengeWindow` (the lease's
    ///   parameters) of the witness lease's start; `receipt` is signed by the matcher's receipt
    ///   signer and names `bid` and the matcher, which `bid` names too;
    /// - swap (`ownOrderDigest != 0`): `bid` has its own lease in the witness round, with order
    ///   `ownOrderDigest`, strictly shorter than the witness lease;
    /// - spare unit (`ownOrderDigest == 0`): `bid` was still valid `noticePeriod` after the witness
    ///   lease's batch landed, its provider did not announce a cancellation of its nonce, no other message took
    ///   its nonce, it had a unit left at the end of the witness round, and since the receipt its
    ///   provider neither announced an unstake nor was slashed nor changed its matcher binding.
    /// On success `matcherSlashBps` of the matcher's bond is slashed, `challengerShareBps` of that
    /// goes to the caller (who must be the bid's provider) and the rest is burned; the same
    /// (matcher, round, bid) cannot be challenged twice. Anything else reverts with a named error
    /// (see `verifyChallenge`).
    /// @param receipt The matcher's receipt for `bid`.
    /// @param receiptSig The receipt signer's signature over the receipt.
    /// @param bid The challenger's bid.
    /// @param bidSig The provider's signature over `bid`.
    /// @param witness The witness lease's round, order digest and bid.
    /// @param ownOrderDigest Zero for the spare-unit proof; else the order of `bid`'s own, shorter
    /// lease in the witness round.
    /// @param fillProof For the spare-unit proof of a bid used up in one go (no fill record): one of
    /// its leases; zero otherwise.
    function challenge(
        ReceiptLib.Receipt calldata receipt,
        bytes calldata receiptSig,
        BidLib.Bid calldata bid,
        bytes calldata bidSig,
        Witness calldata witness,
        bytes32 ownOrderDigest,
        FillProof calldata fillProof
    ) external {
        (address matcher, bytes32 bidDigest) =
            verifyChallenge(receipt, receiptSig, bid, bidSig, witness, ownOrderDigest, fillProof);
        if (msg.sender != bid.provider) revert NotBidProvider(msg.sender, bid.provider);
        challenged[keccak256(abi.encode(matcher, witness.round, bidDigest))] = true;
        (uint256 slashed, uint256 toChallenger, uint256 burned) = settlement.slashMatcher(matcher, msg.sender);
        emit MatcherSlashed(matcher, witness.round, bidDigest, msg.sender, slashed, toChallenger, burned);
    }

    /// @dev Runs every check of `challenge` without changing state.
    /// @return matcher The matcher that would be slashed.
    /// @return bidDigest The challenger's bid digest.
    /// Reverts with `ReceiptBidMismatch`, `ReceiptMatcherMismatch`, `WitnessBeforeReceipt`,
    /// `RoundNotFinal`, `AlreadyChallenged`, `InvalidSignature`/`SignerMismatch` (forged receipt,
    /// receipt from another key, bad bid signature), `WitnessNotInRound`, `ChallengeWindowClosed`,
    /// `WitnessMarketMismatch`, `WitnessNotPricier`, `WitnessDurationTooLong`, `SwapNotShorter`
    /// (swap proof), and `BidExpiredBeforeWitness`, `BidCancelled`, `BidNonceTaken`,
    /// `BidFullyFilled`, `FillLeaseNotFound`, `StakeDecreasedAfterReceipt`, `ProviderLeftMatcher`
    /// (spare-unit proof).
    function verifyChallenge(
        ReceiptLib.Receipt calldata receipt,
        bytes calldata receiptSig,
        BidLib.Bid calldata bid,
        bytes calldata bidSig,
        Witness calldata witness,
        bytes32 ownOrderDigest,
        FillProof calldata fillProof
    ) public view returns (address matcher, bytes32 bidDigest) {
        matcher = receipt.matcher;
        bidDigest = settlement.hashBid(bid);
        if (receipt.bidHash != bidDigest) revert ReceiptBidMismatch(receipt.bidHash, bidDigest);
        if (bid.matcher != matcher) revert ReceiptMatcherMismatch(bid.matcher, matcher);
        if (witness.round < receipt.round) revert WitnessBeforeReceipt(receipt.round, witness.round);
        if (!settlement.isRoundFinal(matcher, witness.round)) revert RoundNotFinal(witness.round);
        if (challenged[keccak256(abi.encode(matcher, witness.round, bidDigest))]) {
            revert AlreadyChallenged(witness.round, bidDigest);
        }
        // Slither: only the receipt signer is needed from the matcher record.
        // slither-disable-next-line unused-return
        (,,, address receiptSigner) = settlement.matchers(matcher);
        SignatureVerification.verify(settlement.hashReceipt(receipt), receiptSig, receiptSigner);
        SignatureVerification.verify(bidDigest, bidSig, bid.provider);
        (uint256 witnessStart, uint256 witnessDuration) = _checkWitness(matcher, bid, witness);
        if (ownOrderDigest != bytes32(0)) {
            (, uint256 ownStart, uint256 ownEnd) = _lease(matcher, witness.round, ownOrderDigest, bidDigest);
            uint256 ownDuration = ownEnd - ownStart;
            if (ownDuration >= witnessDuration) revert SwapNotShorter(ownDuration, witnessDuration);
        } else {
            _checkSpareUnit(matcher, bid, bidDigest, witness.round, witnessStart, receipt.issuedAt, fillProof);
        }
    }

    /// @dev The witness is a lease of the matcher's round, open for challenge now, in `bid`'s
    /// market, with a pricier bid and a duration `bid` accepts. Returns its start and duration.
    function _checkWitness(address matcher, BidLib.Bid calldata bid, Witness calldata witness)
        private
        view
        returns (uint256 start, uint256 duration)
    {
        bytes32 witnessBid = settlement.hashBid(witness.bid);
        (uint256 closesAt, uint256 leaseStart, uint256 leaseEnd) =
            _lease(matcher, witness.round, witness.orderDigest, witnessBid);
        if (block.timestamp > closesAt) revert ChallengeWindowClosed(witness.round, closesAt);
        if (witness.bid.market != bid.market) revert WitnessMarketMismatch(witness.bid.market, bid.market);
        if (witness.bid.price <= bid.price) revert WitnessNotPricier(witness.bid.price, bid.price);
        start = leaseStart;
        duration = leaseEnd - leaseStart;
        if (duration > bid.maxDuration) revert WitnessDurationTooLong(duration, bid.maxDuration);
    }

    /// @dev The challenger's bid could have taken one more unit when the witness lease was opened,
    /// and nothing its provider did since the receipt excuses leaving it out.
    function _checkSpareUnit(
        address matcher,
        BidLib.Bid calldata bid,
        bytes32 bidDigest,
        uint64 witnessRound,
        uint256 witnessStart,
        uint256 issuedAt,
        FillProof calldata fillProof
    ) private view {
        // A bid about to expire may be left out: a batch may land any time before its own deadline,
        // which an honest matcher keeps within `noticePeriod` of the state it cleared.
        if (bid.deadline < witnessStart + settlement.noticePeriod()) {
            revert BidExpiredBeforeWitness(bid.deadline, witnessStart);
        }
        if (settlement.isNonceCancelled(bid.provider, bid.nonce)) revert BidCancelled(bid.provider, bid.nonce);
        // Slither: only the claimed bit matters; a void nonce is judged by the fill record and cancel request.
        // slither-disable-next-line unused-return
        (bool claimed,) = settlement.nonceState(bid.provider, bid.nonce);
        (uint32 filled, uint64 lastRound) = settlement.fills(bidDigest);
        if (claimed && filled == 0) {
            // No record yet claimed: another message took the nonce, or the bid's first fill used
            // it up (then every lease of the bid is in that one round). Only a lease of the bid
            // tells the two apart, and names the round.
            if (fillProof.round == 0) revert BidNonceTaken(bid.provider, bid.nonce);
            bytes32 fillLease = settlement.leaseIdOf(matcher, fillProof.round, fillProof.orderDigest, bidDigest);
            // Slither: only the start (zero for an unknown lease) is needed.
            // slither-disable-next-line unused-return
            (, uint256 fillStart,) = settlement.challengeTermsOf(fillLease);
            if (fillStart == 0) revert FillLeaseNotFound(fillLease);
            filled = bid.capacity;
            lastRound = fillProof.round;
        }
        // Fills only grow: a bid filled in a later round had a unit left when the witness round ended.
        if (lastRound <= witnessRound && filled >= bid.capacity) revert BidFullyFilled(bidDigest);
        // Slither: only stakeDecreasedAt is needed from the provider record.
        // slither-disable-next-line unused-return
        (,,,, uint40 decreasedAt,) = settlement.providers(bid.provider);
        if (decreasedAt >= issuedAt) revert StakeDecreasedAfterReceipt(decreasedAt, issuedAt);
        if (!settlement.boundSince(bid.provider, matcher, issuedAt)) revert ProviderLeftMatcher(bid.provider, matcher);
    }

    /// @dev The challenge terms of the lease of (matcher, round, order, bid); reverts with
    /// `WitnessNotInRound` if no such lease was opened.
    function _lease(address matcher, uint64 round, bytes32 orderDigest, bytes32 bidDigest)
        private
        view
        returns (uint256 closesAt, uint256 start, uint256 end)
    {
        bytes32 leaseId = settlement.leaseIdOf(matcher, round, orderDigest, bidDigest);
        (closesAt, start, end) = settlement.challengeTermsOf(leaseId);
        if (start == 0) revert WitnessNotInRound(leaseId);
    }
}
