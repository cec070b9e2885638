// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {UnderbidBase} from "./core/UnderbidBase.sol";
import {UnorderedNonces} from "./core/UnorderedNonces.sol";
import {Leases} from "./core/Leases.sol";
import {MatcherBonds} from "./core/MatcherBonds.sol";
import {MatcherRounds} from "./core/MatcherRounds.sol";
import {OrderLib} from "./libraries/OrderLib.sol";
import {BidLib} from "./libraries/BidLib.sol";
import {ReceiptLib} from "./libraries/ReceiptLib.sol";
import {SignatureVerification} from "./libraries/SignatureVerification.sol";
import {UnderbidToken} from "./tokens/UnderbidToken.sol";
import {UnderbidCredit} from "./tokens/UnderbidCredit.sol";
import {MatcherCourt} from "./MatcherCourt.sol";

/// @title The Underbid core: buyer escrow, provider stake, leases and batch settlement.
/// @dev A matcher clears a sealed reverse auction off-chain and submits the result here. This
/// contract trusts nothing in it: it checks every signature, nonce, deadline, market, price,
/// fill, duration, stake and escrow balance before any credit moves. Matchers post a bond, and a
/// provider holding a matcher's receipt can prove to the `MatcherCourt` this contract deploys
/// that a round passed over its bid; the court then has the bond slashed here.
contract UnderbidSettlement is
    UnorderedNonces,
    Leases,
    MatcherRounds,
    MatcherBonds
{
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

    /// @dev Which part of a round a `settle` call carries. A round too large for one block is
    /// split into batches 0, 1, ... sent in order; the one marked final closes the round.
    /// `deadline` is the matcher's own: the batch reverts `BatchExpired` after it.
    struct BatchHeader {
        uint64 round;
        uint32 batch;
        bool finalBatch;
        uint64 deadline;
    }

    /// @dev Per-batch working state, by array index: each message's digest and nonce word slot, and in `orderLeft` /
    /// `bidLeft` the units it can still fill (low 128 bits; matches consume them) beside its
    /// signer's compact account id (bits 128 and up), which the leases store. `termsBase` is
    /// `_batchTermsCount` when the batch began: it keys the batch's transient terms cache.
    struct Book {
        bytes32[] orderDigests;
        uint256[] orderLeft;
        /// The storage slot of each order's nonce bitmap word (see `_requireFillable`).
        uint256[] orderSlots;
        bytes32[] bidDigests;
        uint256[] bidLeft;
        uint256[] bidSlots;
        uint256 termsBase;
        /// The market of the previous match and its `_batchTermsFor` answer: matches come grouped
        /// by market, so most skip the cache lookup.
        bytes32 lastMarket;
        uint256 lastTerms;
    }

    /// @dev Where a signer's account id sits in a `Book` entry, above the units left.
    uint256 private constant ID_SHIFT = 128;

    /// @dev The transient slot counting the `settle` calls begun in this transaction: a batch's
    /// duplicate-nonce marks hold its number, so the next batch's marks never match them and
    /// nothing needs clearing at the end of a batch.
    bytes32 private constant SETTLE_EPOCH = keccak256("underbid.settle.epoch");

    /// @dev Tags the transient keys of the (market => batch terms) cache.
    bytes32 private constant TERMS_CACHE = keccak256("underbid.settle.batchTerms");

    /// @dev The court that verifies challenges; the only caller of `slashMatcher`.
    MatcherCourt public immutable court;

    /// @dev The EIP-712 domain type hash, and the hashes of the domain's name ("Underbid") and version ("1").
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("Underbid");
    bytes32 private constant VERSION_HASH = keccak256("1");
    /// @dev The domain separator for the deployment chain, rebuilt if the chain id changes (a fork),
    /// as OpenZeppelin's EIP712 does.
    bytes32 private immutable _cachedDomainSeparator;
    uint256 private immutable _cachedChainId;

    /// @param admin Receives the admin role (parameters); deployments hand it to a timelock.
    /// @param ubt_ The UBT token (stake, slashing).
    /// @param credit_ The credit token (escrow), constructed with this contract's (predicted)
    /// address as its `escrow`.
    /// @param limits The values fixed for good (stake per unit, bond, notice, round span, minimum lease).
    /// @param params_ The first version of the tunable parameters.
    /// Reverts with `InvalidParameter("credit")` if the credit's escrow is another address, and
    /// `InvalidParameter` naming any zero limit or bad parameter.
    constructor(
        address admin,
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        Limits memory limits,
        Params memory params_
    ) UnderbidBase(admin, ubt_, credit_, limits, params_) {
        court = new MatcherCourt(this);
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    /// @dev The EIP-712 digest a buyer signs for `order`.
    function hashOrder(OrderLib.Order calldata order) public view returns (bytes32) {
        return _hashTypedDataV4(order.hash());
    }

    /// @dev The EIP-712 digest a provider signs for `bid`.
    function hashBid(BidLib.Bid calldata bid) public view returns (bytes32) {
        return _hashTypedDataV4(bid.hash());
    }

    /// @dev The EIP-712 digest a matcher's receipt signer signs for `receipt`.
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

    /// @dev Why not OpenZeppelin's `EIP712` base: the same domain (same separator, same digests),
    /// but its ERC-5267 `eip712Domain()` view and short-string fallbacks cost ~800 bytes of code,
    /// which the core, at the 24 KiB limit, cannot spare. The digest itself is OpenZeppelin's
    /// `MessageHashUtils.toTypedDataHash`.
    function _hashTypedDataV4(bytes32 structHash) private view returns (bytes32) {
        return MessageHashUtils.toTypedDataHash(_domainSeparatorV4(), structHash);
    }

    /// @dev The domain separator: cached for the deployment chain, rebuilt on another (a fork).
    function _domainSeparatorV4() private view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    /// @dev keccak256 of the EIP-712 domain (name, version, this chain, this contract).
    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// @dev The id of the lease that `settle` opens for this (matcher, round, order, bid).
    function leaseIdOf(address matcher, uint64 round, bytes32 orderDigest, bytes32 bidDigest)
        public
        pure
        returns (bytes32 id)
    {
        // keccak256(abi.encode(matcher, round, orderDigest, bidDigest)), hashed in free memory
        // without allocating it: settle computes one per match.
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, and(matcher, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(ptr, 0x20), and(round, 0xffffffffffffffff))
            mstore(add(ptr, 0x40), orderDigest)
            mstore(add(ptr, 0x60), bidDigest)
            id := keccak256(ptr, 0x80)
        }
    }

    /// @dev Settles one batch of the caller's round: verifies every message, then opens a lease per match.
    /// @param header The round, the batch number (0, 1, ... in order), whether it is the last, and
    /// the matcher's deadline for this transaction.
    /// @param orders Signed orders referenced by `matches`; each is verified once however often used.
    /// @param orderSigs 65-byte signatures, one per order.
    /// @param bids Signed bids referenced by `matches`.
    /// @param bidSigs 65-byte signatures, one per bid.
    /// @param matches (order index, bid index, units) triples; one per (order, bid) pair.
    /// @param prices The uniform clearing price of every market the batch's matches trade in.
    ///
    /// Invariants this function enforces (each failure reverts the whole batch with a named error):
    /// - only a bonded matcher that has not asked to leave may settle (`MatcherNotBonded`), only
    ///   messages that name it (`MessageForOtherMatcher`), and only for accounts bound to it
    ///   (`AccountNotBound`): no other matcher can touch the funds, stake or nonces it relies on;
    /// - every order and bid signature is valid for its signer on this chain and contract, its
    ///   deadline has not passed, its nonce is not void nor claimed by another message, and no two
    ///   messages of the batch share a (signer, nonce) (`DuplicateNonce`);
    /// - one price per market per round: a price given again in a later batch must be equal;
    /// - for each match: equal markets, `bid.price <= clearingPrice <= order.maxPrice`,
    ///   `minLeaseDuration <= order.duration <= bid.maxDuration`, a non-zero cost, and the fills
    ///   of every order and bid, across all rounds, stay within its `units` or `capacity`;
    /// - the provider's free stake covers `units * stakePerUnit` and the buyer's free escrow
    ///   covers `units * price * duration / 3600`; both are locked for the lease's lifetime;
    /// - the caller's rounds only move forward: batches land in order, before the matcher's own
    ///   deadline, within `maxRoundSpan` of the round's first batch, and never after the round is final.
    ///
    /// NOTE: nothing but the caller's own batches can lower what this function reads (withdrawals,
    /// unstaking, cancellations and matcher changes all wait `noticePeriod`), so a batch that
    /// simulated successfully lands successfully if its deadline is within the notice period.
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
        _openBatch(header.round, header.batch, header.finalBatch, header.deadline);
        _storePrices(header.round, prices);
        _extendSlashable(msg.sender);

        // Slither: every field of `book` is assigned before use.
        // slither-disable-next-line uninitialized-local
        Book memory book;
        uint256 epoch = _nextSettleEpoch();
        (book.orderDigests, book.orderLeft, book.orderSlots) = _verifyOrders(orders, orderSigs, epoch);
        (book.bidDigests, book.bidLeft, book.bidSlots) = _verifyBids(bids, bidSigs, epoch);
        book.termsBase = _batchTermsCount;

        for (uint256 i; i < matches.length; ++i) {
            Match calldata m = matches[i];
            (uint256 orderIndex, uint256 bidIndex, uint256 units) = (m.orderIndex, m.bidIndex, m.units);
            if (orderIndex >= orders.length || bidIndex >= bids.length) revert MatchIndexOutOfRange(i);
            if (units == 0) revert ZeroUnits(i);
            _applyMatch(header.round, orders[orderIndex], bids[bidIndex], orderIndex, bidIndex, units, i, book);
        }

        for (uint256 i; i < orders.length; ++i) {
            OrderLib.Order calldata order = orders[i];
            uint256 left = uint128(book.orderLeft[i]);
            _recordFill(book.orderSlots[i], book.orderDigests[i], order.nonce, order.units, left, 0, false);
        }
        for (uint256 i; i < bids.length; ++i) {
            BidLib.Bid calldata bid = bids[i];
            uint256 left = uint128(book.bidLeft[i]);
            _recordFill(book.bidSlots[i], book.bidDigests[i], bid.nonce, bid.capacity, left, header.round, true);
        }
        emit BatchSettled(header.round, msg.sender, header.batch, matches.length, header.finalBatch);
    }

    /// @dev Slashes `matcher`'s bond for a challenge the court has verified: `challengerShareBps`
    /// of the slash goes to `challenger`, the rest is burned.
    /// Reverts with `UnauthorizedCaller` unless called by the court.
    /// @return slashed UBT taken from the bond.
    /// @return toChallenger UBT sent to the challenger.
    /// @return burned UBT burned.
    function slashMatcher(address matcher, address challenger)
        external
        nonReentrant
        returns (uint256 slashed, uint256 toChallenger, uint256 burned)
    {
        if (msg.sender != address(court)) revert UnauthorizedCaller(msg.sender);
        slashed = _slashMatcher(matcher);
        toChallenger = slashed * params.challengerShareBps / BPS;
        burned = slashed - toChallenger;
        totalSlashedBurned += burned;
        if (toChallenger != 0) ubt.safeTransfer(challenger, toChallenger);
        if (burned != 0) ubt.burn(burned);
    }

    /// @dev When a challenge naming lease `leaseId` as witness can be made until, and the lease's
    /// start and end (all zero for an unknown lease).
    function challengeTermsOf(bytes32 leaseId) external view returns (uint256 closesAt, uint256 start, uint256 end) {
        if (_leases[leaseId].buyerId == 0) return (0, 0, 0);
        (LeaseRecord memory lease, BatchTerms memory batch) = _load(leaseId);
        start = batch.start;
        end = lease.end;
        closesAt = start + maxRoundSpan + _termsOf(batch).challengeWindow;
    }

    /// @dev True if `account` is bound to `matcher` now and has not asked to change since `since`.
    function boundSince(address account, address matcher, uint256 since) external view returns (bool) {
        return _boundSince(account, matcher, since);
    }

    /// @dev Checks one match (`units` of `orders[orderIndex]` served by `bids[bidIndex]`) against
    /// its order and bid, consumes their units in `book`, locks collateral and escrow, and opens
    /// the lease. Each calldata field is read once (a read re-validates it).
    /// Reverts with the errors of `_checkTerms`, `ZeroCostLease`, `OrderOverfilled`,
    /// `BidOverfilled`, `InsufficientFreeStake`, `InsufficientEscrow` and `DuplicateLease`.
    function _applyMatch(
        uint64 round,
        OrderLib.Order calldata order,
        BidLib.Bid calldata bid,
        uint256 orderIndex,
        uint256 bidIndex,
        uint256 units,
        uint256 matchIndex,
        Book memory book
    ) private {
        uint256 duration = order.duration;
        (uint256 price, uint32 termsRef) = _checkTerms(round, order, bid, orderIndex, bidIndex, duration, book);
        uint256 orderEntry = book.orderLeft[orderIndex];
        if (uint128(orderEntry) < units) revert OrderOverfilled(orderIndex);
        book.orderLeft[orderIndex] = orderEntry - units;
        uint256 bidEntry = book.bidLeft[bidIndex];
        if (uint128(bidEntry) < units) revert BidOverfilled(bidIndex);
        book.bidLeft[bidIndex] = bidEntry - units;

        uint256 cost = _leaseCost(units, price, duration);
        // Slither: exactly zero is the refused case (a lease that costs nothing), not a balance comparison.
        // slither-disable-next-line incorrect-equality
        if (cost == 0) revert ZeroCostLease(matchIndex);
        address provider = bid.provider;
        address buyer = order.buyer;
        _lockStake(provider, units * stakePerUnit);
        _lockEscrow(buyer, cost);
        bytes32 orderDigest = book.orderDigests[orderIndex];
        bytes32 bidDigest = book.bidDigests[bidIndex];
        bytes32 leaseId = leaseIdOf(msg.sender, round, orderDigest, bidDigest);
        _openLease(leaseId, uint32(orderEntry >> ID_SHIFT), uint32(bidEntry >> ID_SHIFT), units, termsRef, duration);
        emit LeaseOpened(
            leaseId,
            round,
            buyer,
            msg.sender,
            provider,
            order.market,
            orderDigest,
            bidDigest,
            units,
            price,
            block.timestamp,
            block.timestamp + duration
        );
    }

    /// @dev Checks a match's market, price and duration terms; returns its clearing price and the
    /// reference of the terms its lease shares with the batch's other leases in the market.
    /// Reverts with `MarketMismatch`, `MarketNotPriced`, `BidAboveClearingPrice`,
    /// `ClearingPriceAboveMaxPrice`, `DurationTooShort` and `DurationTooLong`.
    function _checkTerms(
        uint64 round,
        OrderLib.Order calldata order,
        BidLib.Bid calldata bid,
        uint256 orderIndex,
        uint256 bidIndex,
        uint256 duration,
        Book memory book
    ) private returns (uint256 price, uint32 termsRef) {
        bytes32 market = order.market;
        if (market != bid.market) revert MarketMismatch(orderIndex, bidIndex);
        uint256 terms = book.lastTerms;
        // Slither: zero means no market remembered yet (a real answer has a non-zero price).
        // slither-disable-next-line incorrect-equality
        if (terms == 0 || market != book.lastMarket) {
            terms = _batchTermsFor(round, market, book.termsBase);
            (book.lastMarket, book.lastTerms) = (market, terms);
        }
        (price, termsRef) = (terms >> 32, uint32(terms));
        uint256 bidPrice = bid.price;
        if (bidPrice > price) revert BidAboveClearingPrice(bidIndex, bidPrice, price);
        uint256 maxPrice = order.maxPrice;
        if (price > maxPrice) revert ClearingPriceAboveMaxPrice(orderIndex, maxPrice, price);
        if (duration < minLeaseDuration) revert DurationTooShort(orderIndex, minLeaseDuration);
        if (duration > bid.maxDuration) revert DurationTooLong(orderIndex, bidIndex);
    }

    /// @dev The round's clearing price of `market` and the batch's terms record for it, packed as
    /// `price << 32 | termsRef`. The record is written on the market's first match in the batch
    /// and then found in a transient cache (EIP-1153) keyed by the batch's `termsBase`, so later
    /// matches read neither the price nor the record. Reverts with `MarketNotPriced`.
    function _batchTermsFor(uint64 round, bytes32 market, uint256 termsBase) private returns (uint256 terms) {
        bytes32 key = keccak256(abi.encode(TERMS_CACHE, termsBase, market));
        assembly ("memory-safe") {
            terms := tload(key)
        }
        if (terms != 0) return terms;
        uint256 price = clearingPrice[msg.sender][round][market];
        if (price == 0) revert MarketNotPriced(market);
        terms = (price << 32) | _newBatchTerms(price);
        assembly ("memory-safe") {
            tstore(key, terms)
        }
    }

    /// @dev Verifies every order; returns their digests and `Book` entries (units left, buyer id).
    /// Reverts with `OrderExpired` and the errors of `_verifySigned`.
    function _verifyOrders(OrderLib.Order[] calldata orders, bytes[] calldata sigs, uint256 epoch)
        private
        returns (bytes32[] memory digests, uint256[] memory left, uint256[] memory slots)
    {
        digests = new bytes32[](orders.length);
        left = new uint256[](orders.length);
        slots = new uint256[](orders.length);
        for (uint256 i; i < orders.length; ++i) {
            OrderLib.Order calldata order = orders[i];
            if (order.deadline < block.timestamp) revert OrderExpired(i);
            bytes32 digest = hashOrder(order);
            digests[i] = digest;
            (left[i], slots[i]) =
                _verifySigned(digest, sigs[i], order.buyer, order.matcher, order.nonce, order.units, epoch);
        }
    }

    /// @dev Verifies every bid; returns their digests and `Book` entries (units left, provider id).
    /// Reverts with `BidExpired` and the errors of `_verifySigned`.
    function _verifyBids(BidLib.Bid[] calldata bids, bytes[] calldata sigs, uint256 epoch)
        private
        returns (bytes32[] memory digests, uint256[] memory left, uint256[] memory slots)
    {
        digests = new bytes32[](bids.length);
        left = new uint256[](bids.length);
        slots = new uint256[](bids.length);
        for (uint256 i; i < bids.length; ++i) {
            BidLib.Bid calldata bid = bids[i];
            if (bid.deadline < block.timestamp) revert BidExpired(i);
            bytes32 digest = hashBid(bid);
            digests[i] = digest;
            (left[i], slots[i]) =
                _verifySigned(digest, sigs[i], bid.provider, bid.matcher, bid.nonce, bid.capacity, epoch);
        }
    }

    /// @dev The checks shared by orders and bids: for this matcher and bound to it, one message
    /// per (signer, nonce) in the batch, signature, nonce. Returns the message's `Book` entry: the
    /// units it can still fill, with the signer's compact account id above them, and the slot of
    /// its nonce bitmap word.
    /// Reverts with `MessageForOtherMatcher`, `AccountNotBound`, `DuplicateNonce`,
    /// `InvalidSignature`, `SignerMismatch` and `NonceUsed`.
    function _verifySigned(
        bytes32 digest,
        bytes calldata signature,
        address signer,
        address matcher,
        uint256 nonce,
        uint256 total,
        uint256 epoch
    ) private returns (uint256 entry, uint256 slot) {
        if (matcher != msg.sender) revert MessageForOtherMatcher(digest, matcher);
        uint256 id = _requireBound(signer, msg.sender);
        _markOnce(signer, nonce, epoch);
        SignatureVerification.verify(digest, signature, signer);
        uint256 filled;
        (filled, slot) = _requireFillable(digest, signer, nonce);
        entry = (id << ID_SHIFT) | (total - filled);
    }

    /// @dev Reverts with `DuplicateNonce` if a message with this (signer, nonce) was already listed
    /// in this batch: fills are tracked per array entry during a batch, and nonces are claimed
    /// only when the batch records its fills, so two such entries could fill twice.
    /// The marks live in transient storage (EIP-1153) and hold the batch's `epoch`: a mark left
    /// by an earlier `settle` of the same transaction holds a smaller number and does not count,
    /// so marks are never cleared (the transaction's end clears them).
    function _markOnce(address signer, uint256 nonce, uint256 epoch) private {
        bytes32 key = _markKey(signer, nonce);
        bool seen;
        assembly ("memory-safe") {
            seen := eq(tload(key), epoch)
            tstore(key, epoch)
        }
        if (seen) revert DuplicateNonce(signer, nonce);
    }

    /// @dev Starts a `settle` call: the transaction's count of them, plus one (never zero, so no
    /// unset mark equals it).
    function _nextSettleEpoch() private returns (uint256 epoch) {
        bytes32 slot = SETTLE_EPOCH;
        assembly ("memory-safe") {
            epoch := add(tload(slot), 1)
            tstore(slot, epoch)
        }
    }

    /// @dev keccak256(abi.encode(signer, nonce)), hashed in the scratch space (no allocation).
    function _markKey(address signer, uint256 nonce) private pure returns (bytes32 key) {
        assembly ("memory-safe") {
            mstore(0x00, and(signer, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(0x20, nonce)
            key := keccak256(0x00, 0x40)
        }
    }
}
