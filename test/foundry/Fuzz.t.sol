// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Protocol} from "./Protocol.sol";
import {UnderbidSettlement} from "../../contracts/UnderbidSettlement.sol";
import {MatcherCourt} from "../../contracts/MatcherCourt.sol";
import {MatcherRounds} from "../../contracts/core/MatcherRounds.sol";
import {OrderLib} from "../../contracts/libraries/OrderLib.sol";
import {BidLib} from "../../contracts/libraries/BidLib.sol";
import {ReceiptLib} from "../../contracts/libraries/ReceiptLib.sol";
import {IUnderbidErrors} from "../../contracts/interfaces/IUnderbidErrors.sol";

/// @dev Fuzz tests of single rules: the nonce rule, lease cost arithmetic, the 2-bit nonce
/// bitmap, and a positive control showing that a round that is not exact is challengeable (so
/// the campaign's "H is never challenged" is not vacuous).
contract FuzzTest is Protocol {
    bytes32 internal constant MARKET = keccak256("gpu=nvidia-h100;vram=80;gpus=8;region=us-east");
    uint256 internal constant BUYER_PK = 0xB0;
    uint256 internal constant P1_PK = 0x90;
    uint256 internal constant P2_PK = 0x91;
    uint256 internal constant H_PK = 0xA11CE;
    uint256 internal constant RH_PK = 0x5161;
    address internal buyer;
    address internal p1;
    address internal p2;
    address internal H;
    uint64 internal round;

    function setUp() public {
        _deploy();
        buyer = vm.addr(BUYER_PK);
        p1 = vm.addr(P1_PK);
        p2 = vm.addr(P2_PK);
        H = vm.addr(H_PK);
        ubt.transfer(buyer, 1_000_000e18);
        ubt.transfer(H, 1_000_000e18);
        vm.startPrank(H);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.bondMatcher(MIN_BOND * 10, vm.addr(RH_PK));
        vm.stopPrank();
        vm.startPrank(buyer);
        ubt.approve(address(bme), type(uint256).max);
        bme.mintCredits(100_000e18, 0);
        settlement.deposit(credit.balanceOf(buyer));
        settlement.bindMatcher(H);
        vm.stopPrank();
        address[2] memory ps = [p1, p2];
        for (uint256 i; i < 2; ++i) {
            ubt.transfer(ps[i], 1_000_000e18);
            vm.startPrank(ps[i]);
            ubt.approve(address(settlement), type(uint256).max);
            settlement.register("ipfs://p");
            settlement.stake(100_000e18);
            settlement.bindMatcher(H);
            vm.stopPrank();
        }
    }

    function _order(uint32 units, uint32 duration, uint64 maxPrice, uint256 nonce)
        internal
        view
        returns (OrderLib.Order memory o, bytes memory sig)
    {
        o = OrderLib.Order(buyer, H, MARKET, units, duration, maxPrice, uint64(block.timestamp + 3_600), nonce);
        sig = _sig(BUYER_PK, settlement.hashOrder(o));
    }

    function _bid(uint256 pk, uint32 capacity, uint64 price, uint256 nonce)
        internal
        view
        returns (BidLib.Bid memory b, bytes memory sig)
    {
        b = BidLib.Bid(vm.addr(pk), H, MARKET, capacity, price, 7_200, uint64(block.timestamp + 3_600), nonce);
        sig = _sig(pk, settlement.hashBid(b));
    }

    /// @dev H settles one final batch of a new round: orders[i] with bids[i] for units[i] at `price`.
    function _settle(
        OrderLib.Order[] memory orders,
        bytes[] memory orderSigs,
        BidLib.Bid[] memory bids,
        bytes[] memory bidSigs,
        uint32[] memory units,
        uint64 price
    ) internal {
        UnderbidSettlement.Match[] memory matches = new UnderbidSettlement.Match[](units.length);
        for (uint256 i; i < units.length; ++i) {
            matches[i] = UnderbidSettlement.Match(uint32(i), uint32(i), units[i]);
        }
        MatcherRounds.MarketPrice[] memory prices = new MatcherRounds.MarketPrice[](1);
        prices[0] = MatcherRounds.MarketPrice(MARKET, price);
        ++round;
        vm.prank(H);
        settlement.settle(
            UnderbidSettlement.BatchHeader(round, 0, true, uint64(block.timestamp)),
            orders,
            orderSigs,
            bids,
            bidSigs,
            matches,
            prices
        );
    }

    function _one(OrderLib.Order memory o, bytes memory os, BidLib.Bid memory b, bytes memory bs, uint32 units, uint64 price)
        internal
    {
        OrderLib.Order[] memory orders = new OrderLib.Order[](1);
        bytes[] memory orderSigs = new bytes[](1);
        BidLib.Bid[] memory bids = new BidLib.Bid[](1);
        bytes[] memory bidSigs = new bytes[](1);
        uint32[] memory units_ = new uint32[](1);
        (orders[0], orderSigs[0], bids[0], bidSigs[0], units_[0]) = (o, os, b, bs, units);
        _settle(orders, orderSigs, bids, bidSigs, units_, price);
    }

    /// @dev A nonce names one message: once one of two bids sharing a nonce filled, the other
    /// never fills, and the nonce's fills never exceed the first bid's capacity.
    function testFuzz_nonceNamesOneMessage(uint32 capA, uint32 capB, uint32 first, uint256 nonce) public {
        capA = uint32(_bound(capA, 1, 20));
        capB = uint32(_bound(capB, 1, 20));
        first = uint32(_bound(first, 1, capA));
        (BidLib.Bid memory a, bytes memory aSig) = _bid(P1_PK, capA, 1e6, nonce);
        (BidLib.Bid memory b, bytes memory bSig) = _bid(P1_PK, capB, 1e6 + 1, nonce);
        (OrderLib.Order memory o1, bytes memory o1Sig) = _order(first, 3_600, 2e6, 1);
        _one(o1, o1Sig, a, aSig, first, 2e6);

        (OrderLib.Order memory o2, bytes memory o2Sig) = _order(1, 3_600, 2e6, 2);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NonceUsed.selector, p1, nonce));
        this.settleOne(o2, o2Sig, b, bSig, 1, 2e6);

        bytes32 da = settlement.hashBid(a);
        bytes32 db = settlement.hashBid(b);
        (uint32 filledA,) = settlement.fills(da);
        (uint32 filledB,) = settlement.fills(db);
        // A bid used up by its first fill keeps no record; its claimed and void nonce bits say it.
        require(filledA == (first == capA ? 0 : first) && filledB == 0, "only the first message fills");
        require(settlement.remainingOf(db, p1, nonce, capB) == 0, "the other message has nothing left");
        require(settlement.remainingOf(da, p1, nonce, capA) == capA - first, "the first keeps its remainder");
    }

    function settleOne(OrderLib.Order memory o, bytes memory os, BidLib.Bid memory b, bytes memory bs, uint32 units, uint64 price)
        external
    {
        _one(o, os, b, bs, units, price);
    }

    /// @dev Lease arithmetic: a buyer closing early pays the provider exactly the accrual so far
    /// (rounded down) and gets back exactly the rest of the cost settle locked, for any units,
    /// price, duration and close time within the first heartbeat interval (covered without a
    /// heartbeat, so the arithmetic alone decides).
    function testFuzz_leaseCostAddsUp(uint32 units, uint64 price, uint32 duration, uint32 closeAfter) public {
        units = uint32(_bound(units, 1, 50));
        price = uint64(_bound(price, 1, 1_000e6));
        duration = uint32(_bound(duration, MIN_LEASE, 2 hours));
        closeAfter = uint32(_bound(closeAfter, 0, HEARTBEAT));
        uint256 cost = uint256(units) * price * duration / 3600;
        (uint128 freeBefore,) = settlement.escrowOf(buyer);
        vm.assume(cost != 0 && freeBefore >= cost);
        (OrderLib.Order memory o, bytes memory os) = _order(units, duration, price, 7);
        (BidLib.Bid memory b, bytes memory bs) = _bid(P1_PK, units, price, 7);
        _one(o, os, b, bs, units, price);
        (uint128 free1, uint128 locked1) = settlement.escrowOf(buyer);
        require(locked1 == cost && free1 == freeBefore - cost, "settle locks the lease cost");

        bytes32 id = settlement.leaseIdOf(H, round, settlement.hashOrder(o), settlement.hashBid(b));
        vm.warp(START + closeAfter);
        vm.prank(buyer);
        settlement.close(id);
        (uint128 free2, uint128 locked2) = settlement.escrowOf(buyer);
        uint256 paid = credit.balanceOf(p1);
        require(locked2 == 0, "nothing stays locked once the lease closed");
        require(paid + (free2 - free1) == cost, "payments + refund == cost");
        require(paid == uint256(units) * price * closeAfter / 3600, "paid == accrual, rounded down");
    }

    /// @dev The 2-bit bitmap: cancelling a nonce sets its void bit only, in its own word, and
    /// leaves every other nonce (same word or not) untouched.
    function testFuzz_nonceBitmapTwoBits(uint256 a, uint256 b) public {
        vm.assume(a != b);
        uint256[] memory nonces = new uint256[](1);
        nonces[0] = a;
        vm.prank(p1);
        settlement.requestCancel(nonces);
        (bool claimed, bool voided) = settlement.nonceState(p1, a);
        require(!claimed && !voided, "announced, not yet void");
        vm.prank(p1);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NoticeNotOver.selector, block.timestamp + NOTICE));
        settlement.cancelNonces(nonces);
        vm.warp(block.timestamp + NOTICE);
        uint256 wordB = settlement.nonceBitmap(p1, b >> 7);
        vm.prank(p1);
        settlement.cancelNonces(nonces);
        (claimed, voided) = settlement.nonceState(p1, a);
        require(!claimed && voided, "cancelled nonce is void, not claimed");
        require(settlement.nonceBitmap(p1, a >> 7) & (3 << ((a & 127) * 2)) == 2 << ((a & 127) * 2), "only the void bit");
        if (a >> 7 != b >> 7) require(settlement.nonceBitmap(p1, b >> 7) == wordB, "other words untouched");
        (claimed, voided) = settlement.nonceState(p1, b);
        require(!claimed && !voided, "other nonce untouched");
        require(settlement.isNonceUsed(p1, a) && !settlement.isNonceUsed(p1, b), "isNonceUsed");
    }

    /// @dev Positive control: a round that gives the order to the pricier bid while a cheaper
    /// receipted bid has units to spare is challengeable, and the challenge slashes the matcher.
    function testFuzz_inexactRoundIsChallengeable(uint64 cheap, uint64 gap) public {
        cheap = uint64(_bound(cheap, 1e5, 5e6));
        gap = uint64(_bound(gap, 1, 5e6));
        vm.warp(block.timestamp + 1);
        (BidLib.Bid memory b, bytes memory bs) = _bid(P1_PK, 2, cheap, 11);
        ReceiptLib.Receipt memory r = ReceiptLib.Receipt(H, settlement.hashBid(b), round + 1, uint64(block.timestamp));
        bytes memory rs = _sig(RH_PK, settlement.hashReceipt(r));
        vm.warp(block.timestamp + 1);
        (BidLib.Bid memory w, bytes memory ws) = _bid(P2_PK, 2, cheap + gap, 12);
        (OrderLib.Order memory o, bytes memory os) = _order(1, 3_600, cheap + gap, 13);
        _one(o, os, w, ws, 1, cheap + gap);

        MatcherCourt court = settlement.court();
        MatcherCourt.Witness memory witness = MatcherCourt.Witness(round, settlement.hashOrder(o), w);
        (uint128 bondBefore,,,) = settlement.matchers(H);
        vm.prank(p1);
        court.challenge(r, rs, b, bs, witness, bytes32(0), MatcherCourt.FillProof(0, bytes32(0)));
        (uint128 bondAfter,,,) = settlement.matchers(H);
        require(bondAfter < bondBefore, "the matcher was slashed");
    }
}
