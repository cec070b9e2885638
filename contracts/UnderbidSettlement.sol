// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {UnderbidBase} from "./core/UnderbidBase.sol";
import {UnorderedNonces} from "./core/UnorderedNonces.sol";
import {Leases} from "./core/Leases.sol";
import {MatcherBonds} from "./core/MatcherBonds.sol";
import {OrderLib} from "./libraries/OrderLib.sol";
import {BidLib} from "./libraries/BidLib.sol";
import {ReceiptLib} from "./libraries/ReceiptLib.sol";
import {SignatureVerification} from "./libraries/SignatureVerification.sol";
import {UnderbidToken} from "./tokens/UnderbidToken.sol";
import {UnderbidCredit} from "./tokens/UnderbidCredit.sol";

/// @title The Underbid core: buyer escrow, provider stake, leases and batch settlement.
/// @dev A matcher clears a sealed reverse auction off-chain and submits the result here. This
/// contract trusts nothing in it: it checks every signature, nonce, deadline, market, price,
/// fill, duration, stake and escrow balance before any credit moves. Matchers post a bond, and a
/// provider holding a matcher's receipt can prove on chain that a round passed over its bid.
contract UnderbidSettlement is EIP712, UnorderedNonces, Leases, MatcherBonds {
    using SafeERC20 for *;
    using OrderLib for OrderLib.Order;
    using BidLib for BidLib.Bid;
    using ReceiptLib for ReceiptLib.Receipt;

    /// @dev `units` of `orders[orderIndex]` served by `bids[bidIndex]` at the market's clearing price.
    struct Match {
        uint32 orderIndex;
        uint32 bidIndex;
        uint32 units;
    }

    /// @dev The uniform clearing price of one market in the round being settled.
    struct MarketPrice {
        bytes32 market;
        uint64 price;
    }

    /// @dev Which part of a round a `settle` call carries. A round too large for one block is
    /// split into batches 0, 1, ... sent in order; the one marked final closes the round.
    struct BatchHeader {
        uint64 round;
        uint32 batch;
        bool finalBatch;
    }

    /// @dev Per-batch working state: each message's digest and the units it can still fill.
    struct Book {
        bytes32[] orderDigests;
        uint256[] orderLeft;
        bytes32[] bidDigests;
        uint256[] bidLeft;
    }

    /// @dev A lease of the challenged round that shows the allocation was wrong: its bid is priced
    /// above the challenger's, in the same market, for a duration the challenger's bid accepts.
    struct Witness {
        bytes32 orderDigest;
        BidLib.Bid bid;
    }

    struct Round {
        address matcher;
        uint32 batches;
        /// Zero while the round is open; the settlement time once its final batch landed.
        uint40 settledAt;
    }

    mapping(uint64 => Round) public rounds;
    /// @dev round => market => uniform clearing price (credit base units per unit-hour).
    mapping(uint64 => mapping(bytes32 => uint256)) public clearingPrice;
    /// @dev Units filled so far of a partly filled order or bid, by EIP-712 digest. A message
    /// filled completely consumes its nonce instead, which costs far less gas than this slot.
    mapping(bytes32 => uint256) public partialFills;
    /// @dev keccak256(round, bid digest) => true once a challenge with that pair succeeded.
    mapping(bytes32 => bool) public challenged;

    /// @param admin Receives the admin role (parameters, matcher roles).
    /// @param ubt_ The UBT token (stake, slashing).
    /// @param credit_ The credit token (escrow); it must bind this contract as its escrow.
    /// @param stakePerUnit_ UBT (wei) of collateral locked per leased unit.
    /// @param minMatcherBond_ The least UBT bond with which a matcher may settle.
    /// @param params_ The tunable parameters.
    constructor(
        address admin,
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        uint256 stakePerUnit_,
        uint256 minMatcherBond_,
        Params memory params_
    ) EIP712("Underbid", "1") UnderbidBase(admin, ubt_, credit_, stakePerUnit_, minMatcherBond_, params_) {}

    /// @dev The EIP-712 digest a buyer signs for `order`.
    function hashOrder(OrderLib.Order calldata order) public view returns (bytes32) {
        return _hashTypedDataV4(order.hash());
    }

    /// @dev The EIP-712 digest a provider signs for `bid`.
    function hashBid(BidLib.Bid calldata bid) public view returns (bytes32) {
        return _hashTypedDataV4(bid.hash());
    }

    /// @dev The EIP-712 digest a matcher signs for `receipt`.
    function hashReceipt(ReceiptLib.Receipt calldata receipt) public view returns (bytes32) {
        return _hashTypedDataV4(receipt.hash());
    }

    /// @dev The EIP-712 type hashes, so clients can check their own definitions against them.
    function typeHashes() external pure returns (bytes32 order, bytes32 bid, bytes32 receipt) {
        return (OrderLib.TYPEHASH, BidLib.TYPEHASH, ReceiptLib.TYPEHASH);
    }

    /// @dev The domain separator: name "Underbid", version "1", this chain and this contract.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @dev The id of the lease that `settle` opens for this (round, order, bid) triple.
    function leaseIdOf(uint64 round, bytes32 orderDigest, bytes32 bidDigest) public pure returns (bytes32) {
        return keccak256(abi.encode(round, orderDigest, bidDigest));
    }

    /// @dev Units of a message still fillable, or zero if its nonce is consumed or cancelled.
    /// @param digest The message's EIP-712 digest.
    /// @param signer The buyer or provider.
    /// @param nonce The message's nonce.
    /// @param total The order's `units` or the bid's `capacity`.
    function remainingOf(bytes32 digest, address signer, uint256 nonce, uint256 total) public view returns (uint256) {
        if (isNonceUsed(signer, nonce)) return 0;
        uint256 done = partialFills[digest];
        return done >= total ? 0 : total - done;
    }

    /// @dev Settles one batch of a round: verifies every message, then opens a lease per match.
    /// @param header The round, the batch number (0, 1, ... in order) and whether it is the last.
    /// @param orders Signed orders referenced by `matches`; each is verified once however often used.
    /// @param orderSigs 65-byte signatures, one per order.
    /// @param bids Signed bids referenced by `matches`.
    /// @param bidSigs 65-byte signatures, one per bid.
    /// @param matches (order index, bid index, units) triples; one per (order, bid) pair.
    /// @param prices The uniform clearing price of every market the batch's matches trade in.
    ///
    /// Invariants this function enforces (each failure reverts the whole batch with a named error):
    /// - every order and bid signature is valid for its signer on this chain and contract,
    ///   its deadline has not passed and its nonce is neither consumed nor cancelled, and it is
    ///   listed once (`DuplicateMessage`);
    /// - one price per market per round: a price given again in a later batch must be equal;
    /// - for each match: equal markets, `bid.price <= clearingPrice <= order.maxPrice`,
    ///   `order.duration <= bid.maxDuration`, and the fills of every order and bid, across all
    ///   rounds, stay within its `units` or `capacity`;
    /// - the provider's free stake covers `units * stakePerUnit` and the buyer's free escrow
    ///   covers `units * price * duration / 3600`; both are locked for the lease's lifetime.
    /// - a round cannot be settled again once its final batch landed, and batches land in order;
    /// - only a bonded matcher that has not asked to leave may settle (`MatcherNotBonded`).
    function settle(
        BatchHeader calldata header,
        OrderLib.Order[] calldata orders,
        bytes[] calldata orderSigs,
        BidLib.Bid[] calldata bids,
        bytes[] calldata bidSigs,
        Match[] calldata matches,
        MarketPrice[] calldata prices
    ) external nonReentrant {
        _requireBondedMatcher(msg.sender);
        if (orders.length != orderSigs.length || bids.length != bidSigs.length) revert SignatureCountMismatch();
        _openBatch(header);
        _storePrices(header.round, prices);

        Book memory book;
        (book.orderDigests, book.orderLeft) = _verifyOrders(orders, orderSigs);
        (book.bidDigests, book.bidLeft) = _verifyBids(bids, bidSigs);

        for (uint256 i; i < matches.length; ++i) {
            Match calldata m = matches[i];
            if (m.orderIndex >= orders.length || m.bidIndex >= bids.length) revert MatchIndexOutOfRange(i);
            if (m.units == 0) revert ZeroUnits(i);
            _applyMatch(header.round, orders[m.orderIndex], bids[m.bidIndex], m, book);
        }

        for (uint256 i; i < orders.length; ++i) {
            _recordFill(book.orderDigests[i], orders[i].buyer, orders[i].nonce, orders[i].units, book.orderLeft[i]);
        }
        for (uint256 i; i < bids.length; ++i) {
            _recordFill(book.bidDigests[i], bids[i].provider, bids[i].nonce, bids[i].capacity, book.bidLeft[i]);
        }
        _clearMarks(book.orderDigests);
        _clearMarks(book.bidDigests);
        emit BatchSettled(header.round, msg.sender, header.batch, matches.length, header.finalBatch);
    }

    /// @dev Proves that the allocation of `round` was wrong and slashes its matcher's bond.
    ///
    /// Under a uniform price an exact allocation never leaves a valid bid partly unfilled while a
    /// pricier bid wins a lease the cheaper one could have served: moving one unit from the
    /// pricier bid to the cheaper one would raise gains from trade. The caller proves exactly that:
    /// - `receipt` shows the round's matcher accepted `bid` into `round`;
    /// - `bid` is validly signed, its deadline was after the round settled, its nonce was not
    ///   cancelled, it is not completely filled, its provider's stake did not go down after the
    ///   receipt was issued, and no other matcher locked that stake since, so the matcher had no
    ///   reason to leave it out;
    /// - `witness` is a lease of `round` in the same market whose bid is priced strictly above
    ///   `bid` and whose duration `bid` accepts.
    /// On success `matcherSlashBps` of the matcher's bond is slashed, `challengerShareBps` of that
    /// goes to the caller (who must be the bid's provider) and the rest is burned; the same
    /// (round, bid) cannot be challenged twice. Anything else reverts with a named error
    /// (see `verifyChallenge`).
    /// @param round The challenged round.
    /// @param receipt The matcher's receipt for `bid`.
    /// @param receiptSig The matcher's signature over the receipt.
    /// @param bid The challenger's bid.
    /// @param bidSig The provider's signature over `bid`.
    /// @param witness The witness lease's order digest and bid.
    function challenge(
        uint64 round,
        ReceiptLib.Receipt calldata receipt,
        bytes calldata receiptSig,
        BidLib.Bid calldata bid,
        bytes calldata bidSig,
        Witness calldata witness
    ) external nonReentrant {
        (address matcher, bytes32 bidDigest) = verifyChallenge(round, receipt, receiptSig, bid, bidSig, witness);
        if (msg.sender != bid.provider) revert NotBidProvider(msg.sender, bid.provider);
        challenged[keccak256(abi.encode(round, bidDigest))] = true;
        uint256 slashed = _slashMatcher(matcher);
        uint256 toChallenger = slashed * params.challengerShareBps / BPS;
        uint256 burned = slashed - toChallenger;
        totalSlashedBurned += burned;
        if (toChallenger != 0) ubt.safeTransfer(msg.sender, toChallenger);
        if (burned != 0) ubt.burn(burned);
        emit MatcherSlashed(matcher, round, bidDigest, msg.sender, slashed, toChallenger, burned);
    }

    /// @dev Runs every check of `challenge` without changing state.
    /// @return matcher The round's matcher, who would be slashed.
    /// @return bidDigest The challenger's bid digest.
    /// Reverts with `RoundNotSettled`, `ChallengeWindowClosed`, `ReceiptRoundMismatch`,
    /// `ReceiptBidMismatch`, `AlreadyChallenged`, `InvalidSignature`/`SignerMismatch` (forged
    /// receipt, receipt from another matcher, bad bid signature), `BidExpiredBeforeRound`,
    /// `BidCancelled`, `BidFullyFilled`, `StakeDecreasedAfterReceipt`, `StakeLockedByOtherMatcher`,
    /// `WitnessNotInRound`,
    /// `WitnessMarketMismatch`, `WitnessNotPricier` and `WitnessDurationTooLong`.
    function verifyChallenge(
        uint64 round,
        ReceiptLib.Receipt calldata receipt,
        bytes calldata receiptSig,
        BidLib.Bid calldata bid,
        bytes calldata bidSig,
        Witness calldata witness
    ) public view returns (address matcher, bytes32 bidDigest) {
        Round storage settled = rounds[round];
        uint256 settledAt = settled.settledAt;
        if (settledAt == 0) revert RoundNotSettled(round);
        if (block.timestamp > settledAt + params.challengeWindow) {
            revert ChallengeWindowClosed(round, settledAt + params.challengeWindow);
        }
        if (receipt.round != round) revert ReceiptRoundMismatch(receipt.round, round);
        bidDigest = hashBid(bid);
        if (receipt.bidHash != bidDigest) revert ReceiptBidMismatch(receipt.bidHash, bidDigest);
        if (challenged[keccak256(abi.encode(round, bidDigest))]) revert AlreadyChallenged(round, bidDigest);
        matcher = settled.matcher;
        SignatureVerification.verify(hashReceipt(receipt), receiptSig, matcher);
        SignatureVerification.verify(bidDigest, bidSig, bid.provider);
        _checkChallengerBid(bid, bidDigest, settledAt, receipt.issuedAt);
        if (_lockedByOtherSince(bid.provider, matcher, receipt.issuedAt)) {
            revert StakeLockedByOtherMatcher(bid.provider, receipt.issuedAt);
        }
        _checkWitness(round, bid, witness);
    }

    /// @dev The challenger's bid was fillable in the round and still is not completely filled.
    function _checkChallengerBid(BidLib.Bid calldata bid, bytes32 bidDigest, uint256 settledAt, uint256 issuedAt)
        private
        view
    {
        if (bid.deadline < settledAt) revert BidExpiredBeforeRound(bid.deadline, settledAt);
        if (isNonceCancelled(bid.provider, bid.nonce)) revert BidCancelled(bid.provider, bid.nonce);
        if (remainingOf(bidDigest, bid.provider, bid.nonce, bid.capacity) == 0) revert BidFullyFilled(bidDigest);
        uint256 decreasedAt = providers[bid.provider].stakeDecreasedAt;
        if (decreasedAt >= issuedAt) revert StakeDecreasedAfterReceipt(decreasedAt, issuedAt);
    }

    /// @dev The witness is a lease of `round`, same market, pricier bid, duration `bid` accepts.
    function _checkWitness(uint64 round, BidLib.Bid calldata bid, Witness calldata witness) private view {
        bytes32 leaseId = leaseIdOf(round, witness.orderDigest, hashBid(witness.bid));
        Lease storage lease = _leases[leaseId];
        if (lease.buyer == address(0)) revert WitnessNotInRound(leaseId);
        if (witness.bid.market != bid.market) revert WitnessMarketMismatch(witness.bid.market, bid.market);
        if (witness.bid.price <= bid.price) revert WitnessNotPricier(witness.bid.price, bid.price);
        uint256 duration = uint256(lease.end) - lease.start;
        if (duration > bid.maxDuration) revert WitnessDurationTooLong(duration, bid.maxDuration);
    }

    /// @dev Checks one match against its order and bid, consumes their units in `book`, locks
    /// collateral and escrow, and opens the lease.
    /// Reverts with the errors of `_checkTerms`, `OrderOverfilled`, `BidOverfilled`,
    /// `InsufficientFreeStake`, `InsufficientEscrow` and `DuplicateLease`.
    function _applyMatch(
        uint64 round,
        OrderLib.Order calldata order,
        BidLib.Bid calldata bid,
        Match calldata m,
        Book memory book
    ) private {
        uint256 price = _checkTerms(round, order, bid, m);
        uint256 units = m.units;
        if (book.orderLeft[m.orderIndex] < units) revert OrderOverfilled(m.orderIndex);
        book.orderLeft[m.orderIndex] -= units;
        if (book.bidLeft[m.bidIndex] < units) revert BidOverfilled(m.bidIndex);
        book.bidLeft[m.bidIndex] -= units;

        _lockStake(bid.provider, units * stakePerUnit, msg.sender);
        _lockEscrow(order.buyer, _leaseCost(units, price, order.duration));
        bytes32 orderDigest = book.orderDigests[m.orderIndex];
        bytes32 bidDigest = book.bidDigests[m.bidIndex];
        bytes32 leaseId = leaseIdOf(round, orderDigest, bidDigest);
        _openLease(leaseId, order.buyer, bid.provider, units, price, order.duration);
        emit LeaseOpened(
            leaseId,
            round,
            order.buyer,
            bid.provider,
            order.market,
            orderDigest,
            bidDigest,
            units,
            price,
            block.timestamp,
            block.timestamp + order.duration
        );
    }

    /// @dev Checks the round is open, the batch is the next one and the caller owns the round.
    /// Reverts with `RoundAlreadySettled`, `RoundOwnedByOtherMatcher` and `BatchOutOfOrder`.
    function _openBatch(BatchHeader calldata header) private {
        Round storage round = rounds[header.round];
        if (round.settledAt != 0) revert RoundAlreadySettled(header.round);
        uint32 expected = round.batches;
        if (expected == 0) round.matcher = msg.sender;
        else if (round.matcher != msg.sender) revert RoundOwnedByOtherMatcher(header.round, round.matcher);
        if (header.batch != expected) revert BatchOutOfOrder(header.round, expected, header.batch);
        round.batches = expected + 1;
        if (header.finalBatch) round.settledAt = uint40(block.timestamp);
    }

    /// @dev Records each market's uniform price for the round.
    /// Reverts with `ZeroClearingPrice` and `ConflictingClearingPrice`.
    function _storePrices(uint64 round, MarketPrice[] calldata prices) private {
        for (uint256 i; i < prices.length; ++i) {
            bytes32 market = prices[i].market;
            uint256 price = prices[i].price;
            if (price == 0) revert ZeroClearingPrice(market);
            uint256 stored = clearingPrice[round][market];
            if (stored == 0) {
                clearingPrice[round][market] = price;
                emit ClearingPrice(round, market, price);
            } else if (stored != price) {
                revert ConflictingClearingPrice(market, stored, price);
            }
        }
    }

    /// @dev Checks a match's market, price and duration terms and returns its clearing price.
    /// Reverts with `MarketMismatch`, `MarketNotPriced`, `BidAboveClearingPrice`,
    /// `ClearingPriceAboveMaxPrice` and `DurationTooLong`.
    function _checkTerms(uint64 round, OrderLib.Order calldata order, BidLib.Bid calldata bid, Match calldata m)
        private
        view
        returns (uint256 price)
    {
        if (order.market != bid.market) revert MarketMismatch(m.orderIndex, m.bidIndex);
        price = clearingPrice[round][order.market];
        if (price == 0) revert MarketNotPriced(order.market);
        if (bid.price > price) revert BidAboveClearingPrice(m.bidIndex, bid.price, price);
        if (price > order.maxPrice) revert ClearingPriceAboveMaxPrice(m.orderIndex, order.maxPrice, price);
        if (order.duration > bid.maxDuration) revert DurationTooLong(m.orderIndex, m.bidIndex);
    }

    /// @dev Verifies every order; returns their digests and the units each can still fill.
    /// Reverts with `OrderExpired` and the errors of `_verifySigned`.
    function _verifyOrders(OrderLib.Order[] calldata orders, bytes[] calldata sigs)
        private
        returns (bytes32[] memory digests, uint256[] memory left)
    {
        digests = new bytes32[](orders.length);
        left = new uint256[](orders.length);
        for (uint256 i; i < orders.length; ++i) {
            OrderLib.Order calldata order = orders[i];
            if (order.deadline < block.timestamp) revert OrderExpired(i);
            digests[i] = hashOrder(order);
            left[i] = _verifySigned(digests[i], sigs[i], order.buyer, order.nonce, order.units);
        }
    }

    /// @dev Verifies every bid; returns their digests and the units each can still fill.
    /// Reverts with `BidExpired` and the errors of `_verifySigned`.
    function _verifyBids(BidLib.Bid[] calldata bids, bytes[] calldata sigs)
        private
        returns (bytes32[] memory digests, uint256[] memory left)
    {
        digests = new bytes32[](bids.length);
        left = new uint256[](bids.length);
        for (uint256 i; i < bids.length; ++i) {
            BidLib.Bid calldata bid = bids[i];
            if (bid.deadline < block.timestamp) revert BidExpired(i);
            digests[i] = hashBid(bid);
            left[i] = _verifySigned(digests[i], sigs[i], bid.provider, bid.nonce, bid.capacity);
        }
    }

    /// @dev The checks shared by orders and bids: listed once, signature, nonce. Returns the units left.
    /// Reverts with `DuplicateMessage`, `InvalidSignature`, `SignerMismatch` and `NonceUsed`.
    function _verifySigned(bytes32 digest, bytes calldata signature, address signer, uint256 nonce, uint256 total)
        private
        returns (uint256)
    {
        _markOnce(digest);
        SignatureVerification.verify(digest, signature, signer);
        _requireNonceFree(signer, nonce);
        return total - partialFills[digest];
    }

    /// @dev Reverts with `DuplicateMessage` if `digest` was already listed in this batch: fills are
    /// tracked per array entry during a batch, so one message listed twice could overfill.
    /// The marks live in transient storage (EIP-1153) and are cleared by `_clearMarks`.
    function _markOnce(bytes32 digest) private {
        bool seen;
        assembly ("memory-safe") {
            seen := tload(digest)
            tstore(digest, 1)
        }
        if (seen) revert DuplicateMessage(digest);
    }

    /// @dev Clears the batch's transient marks, so a second `settle` in the same transaction starts clean.
    function _clearMarks(bytes32[] memory digests) private {
        for (uint256 i; i < digests.length; ++i) {
            bytes32 digest = digests[i];
            assembly ("memory-safe") {
                tstore(digest, 0)
            }
        }
    }

    /// @dev Persists a message's fill: a completed message consumes its nonce; a partly filled
    /// one records its fill by digest. Untouched messages write nothing.
    function _recordFill(bytes32 digest, address signer, uint256 nonce, uint256 total, uint256 left) private {
        uint256 filledNow = total - left;
        if (filledNow == partialFills[digest]) return;
        if (left == 0) _consumeNonce(signer, nonce);
        else partialFills[digest] = filledNow;
    }
}
