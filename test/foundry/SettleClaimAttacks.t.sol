// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Protocol} from "./Protocol.sol";
import {UnderbidSettlement} from "../../contracts/UnderbidSettlement.sol";
import {MatcherRounds} from "../../contracts/core/MatcherRounds.sol";
import {UnderbidBase} from "../../contracts/core/UnderbidBase.sol";
import {UnderbidCredit} from "../../contracts/tokens/UnderbidCredit.sol";
import {OrderLib} from "../../contracts/libraries/OrderLib.sol";
import {BidLib} from "../../contracts/libraries/BidLib.sol";
import {IUnderbidErrors} from "../../contracts/interfaces/IUnderbidErrors.sol";

/// @dev Attacks on the gas-saving paths of settle and claim:
/// - epoch-numbered transient duplicate-nonce marks: a forge test function is ONE transaction, so
///   every `settle` below shares transient storage with the ones before it (the case the old
///   clearing loop existed for);
/// - signatures read from calldata: every non-canonical form must still be refused;
/// - claim's buyer runs and remembered terms: interleaved buyers, repeated ids, ended, closed and
///   faulted leases in one claim must move exactly what per-lease payment would.
/// Run: forge test --match-contract SettleClaimAttackTest
contract SettleClaimAttackTest is Protocol {
    bytes32 internal constant MARKET = keccak256("gpu=nvidia-h100;vram=80;gpus=8;region=us-east");
    bytes32 internal constant MARKET2 = keccak256("gpu=nvidia-a100;vram=80;gpus=8;region=us-east");
    uint256 internal constant X_PK = 0xB0;
    uint256 internal constant Y_PK = 0xB1;
    uint256 internal constant P1_PK = 0x90;
    uint256 internal constant H_PK = 0xA11CE;
    uint256 internal constant RH_PK = 0x5161;
    uint256 internal constant SECP_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    address internal X;
    address internal Y;
    address internal p1;
    address internal H;
    uint64 internal round;
    uint32 internal batchNo;

    function assertEq(uint256 a, uint256 b, string memory why) internal pure {
        require(a == b, why);
    }

    function assertLe(uint256 a, uint256 b, string memory why) internal pure {
        require(a <= b, why);
    }

    function assertTrue(bool c, string memory why) internal pure {
        require(c, why);
    }

    function assertFalse(bool c, string memory why) internal pure {
        require(!c, why);
    }

    function setUp() public {
        _deploy();
        X = vm.addr(X_PK);
        Y = vm.addr(Y_PK);
        p1 = vm.addr(P1_PK);
        H = vm.addr(H_PK);
        ubt.transfer(H, 1_000_000e18);
        vm.startPrank(H);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.bondMatcher(MIN_BOND * 10, vm.addr(RH_PK));
        vm.stopPrank();
        address[2] memory bs = [X, Y];
        for (uint256 i; i < 2; ++i) {
            ubt.transfer(bs[i], 1_000_000e18);
            vm.startPrank(bs[i]);
            ubt.approve(address(bme), type(uint256).max);
            bme.mintCredits(100_000e18, 0);
            settlement.deposit(credit.balanceOf(bs[i]));
            settlement.bindMatcher(H);
            vm.stopPrank();
        }
        ubt.transfer(p1, 1_000_000e18);
        vm.startPrank(p1);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.register("ipfs://p");
        settlement.stake(100_000e18);
        settlement.bindMatcher(H);
        vm.stopPrank();
    }

    // ------------------------------------------------------------------ helpers

    function _order(uint256 pk, bytes32 market, uint32 units, uint32 duration, uint256 nonce)
        internal
        view
        returns (OrderLib.Order memory o, bytes memory sig)
    {
        o = OrderLib.Order(vm.addr(pk), H, market, units, duration, 3e6, uint64(block.timestamp + 3_600), nonce);
        sig = _sig(pk, settlement.hashOrder(o));
    }

    function _bid(bytes32 market, uint32 capacity, uint256 nonce)
        internal
        view
        returns (BidLib.Bid memory b, bytes memory sig)
    {
        b = BidLib.Bid(p1, H, market, capacity, 1e6, 7_200, uint64(block.timestamp + 3_600), nonce);
        sig = _sig(P1_PK, settlement.hashBid(b));
    }

    function _prices() internal pure returns (MatcherRounds.MarketPrice[] memory prices) {
        prices = new MatcherRounds.MarketPrice[](2);
        prices[0] = MatcherRounds.MarketPrice(MARKET, 2e6);
        prices[1] = MatcherRounds.MarketPrice(MARKET2, 2e6);
    }

    /// @dev External so that expectRevert sees the revert: H settles the next batch of `round`.
    function settleAs(
        uint64 r,
        uint32 b,
        bool fin,
        OrderLib.Order[] memory orders,
        bytes[] memory orderSigs,
        BidLib.Bid[] memory bids,
        bytes[] memory bidSigs,
        UnderbidSettlement.Match[] memory matches
    ) external {
        vm.prank(H);
        settlement.settle(
            UnderbidSettlement.BatchHeader(r, b, fin, uint64(block.timestamp)),
            orders,
            orderSigs,
            bids,
            bidSigs,
            matches,
            _prices()
        );
    }

    function _m(uint256 o, uint256 b, uint256 u) internal pure returns (UnderbidSettlement.Match memory) {
        return UnderbidSettlement.Match(uint32(o), uint32(b), uint32(u));
    }

    /// @dev A batch of one order filled by one bid for one unit.
    function _oneMatch(OrderLib.Order memory o, bytes memory osig, BidLib.Bid memory b, bytes memory bsig)
        internal
        pure
        returns (
            OrderLib.Order[] memory orders,
            bytes[] memory osigs,
            BidLib.Bid[] memory bids,
            bytes[] memory bsigs,
            UnderbidSettlement.Match[] memory ms
        )
    {
        orders = new OrderLib.Order[](1);
        osigs = new bytes[](1);
        bids = new BidLib.Bid[](1);
        bsigs = new bytes[](1);
        ms = new UnderbidSettlement.Match[](1);
        (orders[0], osigs[0], bids[0], bsigs[0], ms[0]) = (o, osig, b, bsig, _m(0, 0, 1));
    }

    // ------------------------------------------------------------------ transient marks

    /// @dev Attack: in ONE transaction, a first settle marks (X, n); later settles of the same
    /// transaction must still (a) let the partly filled message fill again (no stale mark reads as
    /// a duplicate) and (b) refuse two messages with one (signer, nonce) inside one batch, also
    /// after a settle that reverted (its epoch rolled back) and across many epochs.
    function test_marksAcrossSettlesInOneTx() public {
        (OrderLib.Order memory o, bytes memory os) = _order(X_PK, MARKET, 4, 3_600, 7);
        (OrderLib.Order memory o2, bytes memory o2s) = _order(X_PK, MARKET, 3, 3_601, 7); // same nonce
        (BidLib.Bid memory b, bytes memory bsig) = _bid(MARKET, 40, 1);
        (
            OrderLib.Order[] memory orders,
            bytes[] memory osigs,
            BidLib.Bid[] memory bids,
            bytes[] memory bsigs,
            UnderbidSettlement.Match[] memory ms
        ) = _oneMatch(o, os, b, bsig);

        // batch 0: O fills 1 (epoch 1 marks (X,7) and (p1,1))
        this.settleAs(1, 0, false, orders, osigs, bids, bsigs, ms);
        // batch 1, same tx (epoch 2): O again (with another bid: one lease per (order, bid) and
        // round), fills 1 more: must NOT be DuplicateNonce
        (bids[0], bsigs[0]) = _bid(MARKET, 40, 2);
        this.settleAs(1, 1, false, orders, osigs, bids, bsigs, ms);
        (bids[0], bsigs[0]) = _bid(MARKET, 40, 3);
        (b, bsig) = (bids[0], bsigs[0]);

        // a batch that reverts after marking (bad match index): its epoch and marks roll back
        UnderbidSettlement.Match[] memory bad = new UnderbidSettlement.Match[](1);
        bad[0] = _m(5, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.MatchIndexOutOfRange.selector, 0));
        this.settleAs(1, 2, false, orders, osigs, bids, bsigs, bad);

        // batch 2 (epoch 3): O and O' share (X, 7): DuplicateNonce, in this tx as in a fresh one
        OrderLib.Order[] memory two = new OrderLib.Order[](2);
        bytes[] memory twoSigs = new bytes[](2);
        (two[0], twoSigs[0], two[1], twoSigs[1]) = (o, os, o2, o2s);
        UnderbidSettlement.Match[] memory m2 = new UnderbidSettlement.Match[](2);
        (m2[0], m2[1]) = (_m(0, 0, 1), _m(1, 0, 3));
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.DuplicateNonce.selector, X, uint256(7)));
        this.settleAs(1, 2, false, two, twoSigs, bids, bsigs, m2);
        // and the same message twice
        (two[1], twoSigs[1]) = (o, os);
        (m2[0], m2[1]) = (_m(0, 0, 2), _m(1, 0, 2));
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.DuplicateNonce.selector, X, uint256(7)));
        this.settleAs(1, 2, false, two, twoSigs, bids, bsigs, m2);
        // the bid twice (provider side)
        BidLib.Bid[] memory twoBids = new BidLib.Bid[](2);
        bytes[] memory twoBidSigs = new bytes[](2);
        (twoBids[0], twoBidSigs[0], twoBids[1], twoBidSigs[1]) = (b, bsig, b, bsig);
        (m2[0], m2[1]) = (_m(0, 0, 1), _m(0, 1, 1));
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.DuplicateNonce.selector, p1, uint256(3)));
        this.settleAs(1, 2, false, orders, osigs, twoBids, twoBidSigs, m2);

        // O fills its last 2 units: 4 in all, never more, across all the epochs of this tx
        ms[0] = _m(0, 0, 2);
        this.settleAs(1, 2, true, orders, osigs, bids, bsigs, ms);
        (bool claimed, bool voided) = settlement.nonceState(X, 7);
        assertTrue(claimed && voided, "O used up");
        ms[0] = _m(0, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NonceUsed.selector, X, uint256(7)));
        this.settleAs(2, 0, true, orders, osigs, bids, bsigs, ms);
        assertEq(settlement.remainingOf(settlement.hashOrder(o), X, 7, 4), 0, "nothing left");
    }

    // ------------------------------------------------------------------ signatures from calldata

    function _expectBadSig(OrderLib.Order memory o, bytes memory sig, bytes memory err) internal {
        (BidLib.Bid memory b, bytes memory bsig) = _bid(MARKET, 4, 99);
        (
            OrderLib.Order[] memory orders,
            bytes[] memory osigs,
            BidLib.Bid[] memory bids,
            bytes[] memory bsigs,
            UnderbidSettlement.Match[] memory ms
        ) = _oneMatch(o, sig, b, bsig);
        vm.expectRevert(err);
        this.settleAs(round + 1, 0, true, orders, osigs, bids, bsigs, ms);
    }

    /// @dev Attack: a matcher submits non-canonical signatures (EIP-2098 64-byte, trailing byte,
    /// high-s twin, v = 0/1, v = 29, empty) for a genuine order: each must be refused.
    function test_signatureForms() public {
        (OrderLib.Order memory o, bytes memory sig) = _order(X_PK, MARKET, 1, 3_600, 11);
        bytes32 digest = settlement.hashOrder(o);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(X_PK, digest);
        bytes memory invalid = abi.encodeWithSelector(IUnderbidErrors.InvalidSignature.selector);
        // 64-byte compact form (r, yParityAndS)
        bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
        _expectBadSig(o, abi.encodePacked(r, vs), invalid);
        // 66 bytes: the valid signature plus a trailing byte
        _expectBadSig(o, abi.encodePacked(sig, uint8(0)), invalid);
        // the high-s twin (n - s, flipped v)
        _expectBadSig(o, abi.encodePacked(r, bytes32(SECP_N - uint256(s)), v == 27 ? uint8(28) : uint8(27)), invalid);
        // v as 0/1 and 29
        _expectBadSig(o, abi.encodePacked(r, s, uint8(v - 27)), invalid);
        _expectBadSig(o, abi.encodePacked(r, s, uint8(29)), invalid);
        // empty
        _expectBadSig(o, "", invalid);
        // another signer's valid signature
        (uint8 v2, bytes32 r2, bytes32 s2) = vm.sign(Y_PK, digest);
        _expectBadSig(
            o, abi.encodePacked(r2, s2, v2), abi.encodeWithSelector(IUnderbidErrors.SignerMismatch.selector, X, vm.addr(Y_PK))
        );
    }

    /// @dev Attack on the calldata reads: a hand-built settle call whose order signature's offset
    /// points so that its 65 bytes would run past the end of calldata (the signature "borrows"
    /// whatever follows). The ABI decoder must refuse it; it must not read zero-padding as `v`.
    function test_signatureOffsetPastCalldataEnd() public {
        (OrderLib.Order memory o, bytes memory sig) = _order(X_PK, MARKET, 1, 3_600, 12);
        (BidLib.Bid memory b, bytes memory bsig) = _bid(MARKET, 4, 98);
        (
            OrderLib.Order[] memory orders,
            bytes[] memory osigs,
            BidLib.Bid[] memory bids,
            bytes[] memory bsigs,
            UnderbidSettlement.Match[] memory ms
        ) = _oneMatch(o, sig, b, bsig);
        bytes memory data = abi.encodeCall(
            settlement.settle,
            (UnderbidSettlement.BatchHeader(1, 0, true, uint64(block.timestamp)), orders, osigs, bids, bsigs, ms, _prices())
        );
        // Cut the last 40 bytes of calldata: the trailing prices array / sig tails become short.
        bytes memory cut = new bytes(data.length - 40);
        for (uint256 i; i < cut.length; ++i) cut[i] = data[i];
        vm.prank(H);
        (bool ok,) = address(settlement).call(cut);
        assertFalse(ok, "truncated calldata accepted");
        assertEq(settlement.lastRound(H), 0, "no round");
    }

    // ------------------------------------------------------------------ claim

    struct Snap {
        uint256 xFree;
        uint256 xLocked;
        uint256 yFree;
        uint256 yLocked;
        uint256 pCredit;
        uint256 pLocked;
    }

    function _snap() internal view returns (Snap memory s) {
        (s.xFree, s.xLocked) = _escrow(X);
        (s.yFree, s.yLocked) = _escrow(Y);
        s.pCredit = credit.balanceOf(p1);
        (, s.pLocked,,,,) = settlement.providers(p1);
    }

    function _escrow(address who) internal view returns (uint256 free, uint256 locked) {
        (uint128 f, uint128 l) = settlement.escrowOf(who);
        (free, locked) = (f, l);
    }

    /// @dev A lease's whole cost (what settle locked) and what it has paid so far, from `getLease`.
    function _costPaid(bytes32 id) internal view returns (uint256 cost, uint256 paid, bool closed) {
        UnderbidSettlement.Lease memory l = settlement.getLease(id);
        uint256 perHour = uint256(l.units) * l.price;
        cost = perHour * (l.end - l.start) / 3_600;
        uint256 until = l.paidUntil == 0 ? l.start : l.paidUntil;
        paid = perHour * (until - l.start) / 3_600;
        closed = l.closed;
    }

    /// @dev Escrow conservation over `ids` (every lease of X and Y): `locked` is exactly the whole
    /// cost of each buyer's open leases, and the settlement holds exactly free + locked minus what
    /// the open leases have already paid.
    function _checkEscrow(bytes32[] memory ids) internal view {
        uint256 xCost;
        uint256 yCost;
        uint256 paidOpen;
        for (uint256 i; i < ids.length; ++i) {
            (uint256 cost, uint256 paid, bool closed) = _costPaid(ids[i]);
            if (closed) continue;
            if (settlement.getLease(ids[i]).buyer == X) xCost += cost;
            else yCost += cost;
            paidOpen += paid;
        }
        (uint256 xFree, uint256 xLocked) = _escrow(X);
        (uint256 yFree, uint256 yLocked) = _escrow(Y);
        assertEq(xLocked, xCost, "X locked = whole cost of its open leases");
        assertEq(yLocked, yCost, "Y locked = whole cost of its open leases");
        assertEq(
            credit.balanceOf(address(settlement)) + paidOpen,
            xFree + xLocked + yFree + yLocked,
            "settlement credits = escrow - paid on open leases"
        );
    }

    /// @dev Opens, in one round, leases of X and Y in two markets (two terms refs), one of them short.
    function _openMix() internal returns (bytes32[] memory ids) {
        OrderLib.Order[] memory orders = new OrderLib.Order[](5);
        bytes[] memory osigs = new bytes[](5);
        (orders[0], osigs[0]) = _order(X_PK, MARKET, 2, 3_600, 101);
        (orders[1], osigs[1]) = _order(Y_PK, MARKET, 3, 3_600, 102);
        (orders[2], osigs[2]) = _order(X_PK, MARKET, 1, 600, 103); // ends first
        (orders[3], osigs[3]) = _order(X_PK, MARKET2, 2, 3_600, 104);
        (orders[4], osigs[4]) = _order(Y_PK, MARKET2, 1, 3_600, 105);
        BidLib.Bid[] memory bids = new BidLib.Bid[](2);
        bytes[] memory bsigs = new bytes[](2);
        (bids[0], bsigs[0]) = _bid(MARKET, 20, 201);
        (bids[1], bsigs[1]) = _bid(MARKET2, 20, 202);
        UnderbidSettlement.Match[] memory ms = new UnderbidSettlement.Match[](5);
        (ms[0], ms[1], ms[2], ms[3], ms[4]) = (_m(0, 0, 2), _m(1, 0, 3), _m(2, 0, 1), _m(3, 1, 2), _m(4, 1, 1));
        ++round;
        this.settleAs(round, 0, true, orders, osigs, bids, bsigs, ms);
        ids = new bytes32[](5);
        for (uint256 i; i < 5; ++i) {
            ids[i] = settlement.leaseIdOf(
                H, round, settlement.hashOrder(orders[i]), settlement.hashBid(i < 3 ? bids[0] : bids[1])
            );
        }
    }

    function _heartbeatUntil(bytes32[] memory ids, uint256 t0, uint256 upTo) internal {
        for (uint256 t = t0 + 50; t <= upTo; t += 50) {
            vm.warp(t);
            vm.prank(p1);
            settlement.heartbeat(ids);
        }
    }

    /// @dev Attack: the provider orders one claim so that runs of one buyer's payments break and
    /// resume (X, Y, X ...), repeats ids, mixes two terms refs, puts an ended lease (general path)
    /// inside X's run, a lease the buyer already closed, and a faulted lease. Every balance must
    /// end where per-lease payment puts it: the provider gets exactly accrued, X and Y lose exactly
    /// that plus refunds, credits are conserved, nothing closed or faulted is paid.
    function test_claimInterleavedRuns() public {
        uint256 t0 = START; // not block.timestamp: via-ir may re-read it after a warp
        bytes32[] memory ids = _openMix();
        // Y closes lease 4 at once (closed lease in the claim)
        vm.warp(t0 + 10);
        vm.prank(Y);
        settlement.close(ids[4]);
        // heartbeat 0..3 until t0+550 (lease 2 covered to its end: last 550 + 60 >= 600)
        bytes32[] memory hb = new bytes32[](4);
        for (uint256 i; i < 4; ++i) hb[i] = ids[i];
        _heartbeatUntil(hb, t0, t0 + 550);
        vm.warp(t0 + 605); // lease 2 ended; others running, covered to 610

        uint256[5] memory owed;
        for (uint256 i; i < 5; ++i) (owed[i],,) = settlement.leaseBalances(ids[i]);
        (, uint256 refund2,) = settlement.leaseBalances(ids[2]);
        refund2 = 0; // lease 2 was covered to its end: paid in full, nothing refunded
        (uint256 cost2,,) = _costPaid(ids[2]);
        _checkEscrow(ids);
        Snap memory a = _snap();
        uint256 creditsBefore = credit.balanceOf(address(settlement));

        bytes32[] memory order = new bytes32[](9);
        (order[0], order[1], order[2], order[3], order[4], order[5], order[6], order[7], order[8]) =
            (ids[0], ids[1], ids[0], ids[2], ids[3], ids[4], ids[1], ids[3], ids[0]);
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(order);
        _log("skipped", skipped);
        _log("total", total);
        for (uint256 i; i < 5; ++i) _log("owed", owed[i]);

        uint256 xOwed = owed[0] + owed[2] + owed[3];
        uint256 yOwed = owed[1];
        assertEq(owed[4], 0, "closed lease owes nothing");
        assertEq(skipped, 1, "only the closed lease skipped");
        assertEq(total, xOwed + yOwed, "paid = accrued");
        Snap memory b = _snap();
        assertEq(b.pCredit - a.pCredit, total, "provider got total");
        // Payments leave `locked` alone; lease 2's close takes its whole cost out of X's.
        assertEq(a.xLocked - b.xLocked, cost2, "X locked down by the closed lease's cost");
        assertEq(b.yLocked, a.yLocked, "Y locked untouched by payments");
        assertEq(b.xFree, a.xFree + refund2, "X free");
        assertEq(b.yFree, a.yFree, "Y free");
        assertEq(creditsBefore - credit.balanceOf(address(settlement)), total, "credits conserved");
        assertEq(a.pLocked - b.pLocked, 1 * STAKE_PER_UNIT, "lease 2's collateral released");
        // what each buyer's escrow still holds for its open leases is exactly their unpaid remainder
        uint256 xRem;
        uint256 yRem;
        uint256 xPaid;
        uint256 yPaid;
        for (uint256 i; i < 4; ++i) {
            (uint256 u, uint256 rem,) = settlement.leaseBalances(ids[i]);
            assertEq(u, 0, "nothing accrued unpaid");
            (, uint256 paid, bool closed) = _costPaid(ids[i]);
            if (closed) continue;
            if (i == 1) (yRem, yPaid) = (yRem + rem, yPaid + paid);
            else (xRem, xPaid) = (xRem + rem, xPaid + paid);
        }
        assertEq(b.xLocked - xPaid, xRem, "X locked - paid = remainder of X's leases");
        assertEq(b.yLocked - yPaid, yRem, "Y locked - paid = remainder of Y's leases");
        _checkEscrow(ids);
        // a second claim in the same block pays nothing
        vm.prank(p1);
        (total,) = settlement.claimRevenue(order);
        assertEq(total, 0, "no double pay");
    }

    /// @dev Attack: a faulted lease of X sits between two of X's paid leases in one claim: it must
    /// be skipped (not paid past its coverage), and the fault stays reportable.
    function test_claimSkipsFaultInsideRun() public {
        uint256 t0 = START; // not block.timestamp: via-ir may re-read it after a warp
        bytes32[] memory ids = _openMix();
        bytes32[] memory hb = new bytes32[](3);
        (hb[0], hb[1], hb[2]) = (ids[0], ids[1], ids[4]); // lease 3 (X, MARKET2) never heartbeats
        _heartbeatUntil(hb, t0, t0 + 300);
        vm.warp(t0 + 320);
        uint256 at3 = settlement.faultReportableAt(ids[3]);
        assertLe(at3, block.timestamp, "lease 3 faulted");
        (uint256 owed0,,) = settlement.leaseBalances(ids[0]);
        (uint256 owed1,,) = settlement.leaseBalances(ids[1]);
        (uint256 owed4,,) = settlement.leaseBalances(ids[4]);
        bytes32[] memory order = new bytes32[](4);
        (order[0], order[1], order[2], order[3]) = (ids[0], ids[3], ids[4], ids[1]);
        Snap memory a = _snap();
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(order);
        _log("skipped", skipped);
        _log("total", total);
        _log("owed0", owed0);
        _log("owed1", owed1);
        _log("owed4", owed4);
        Snap memory b = _snap();
        assertEq(skipped, 1, "faulted lease skipped");
        assertEq(total, owed0 + owed1 + owed4, "paid = accrued of the healthy leases");
        assertEq(b.pCredit - a.pCredit, total, "provider got total");
        assertEq(b.xLocked, a.xLocked, "X locked untouched by payments");
        assertEq(b.yLocked, a.yLocked, "Y locked untouched by payments");
        _checkEscrow(ids);
        settlement.reportFault(ids[3]); // still reportable
        _checkEscrow(ids);
    }

    /// @dev Attack on escrow left locked until the close: the provider claims lease 0 twice while it
    /// runs (its paid part stays in X's `locked`), then X tries to get at credits the lease owes:
    /// a withdrawal of everything it ever deposited pays out only its free escrow, and X's early
    /// close refunds exactly the lease's cost minus everything it paid (not only the last claim's
    /// share). Conservation holds at every step and the provider keeps every paid credit.
    function test_buyerCannotWithdrawWhatALeaseOwes() public {
        uint256 t0 = START;
        bytes32[] memory ids = _openMix();
        bytes32[] memory one = new bytes32[](1);
        one[0] = ids[0];
        (uint256 xFree0, uint256 xLocked0) = _escrow(X);
        vm.prank(X);
        settlement.requestWithdrawal(xFree0 + xLocked0);
        _heartbeatUntil(ids, t0, t0 + 100);
        vm.prank(p1);
        (uint256 first,) = settlement.claimRevenue(one);
        _heartbeatUntil(ids, t0 + 100, t0 + 300);
        vm.prank(p1);
        (uint256 second,) = settlement.claimRevenue(one);
        assertTrue(first > 0 && second > 0, "two payments");
        (, uint256 paid0,) = _costPaid(ids[0]);
        assertEq(first + second, paid0, "paid = the lease's accrual to its paid-until");
        _checkEscrow(ids);
        vm.warp(t0 + 300 + NOTICE);
        vm.prank(X);
        uint256 out = settlement.withdraw();
        assertEq(out, xFree0, "only free escrow leaves");
        (uint256 xFree, uint256 xLocked) = _escrow(X);
        assertEq(xFree, 0, "free drained");
        assertEq(xLocked, xLocked0, "locked untouched by claims and the withdrawal");
        _checkEscrow(ids);
        // X closes lease 0 early (its heartbeats cover it to t0 + 300 + 60, so no fault yet)
        (uint256 cost0,,) = _costPaid(ids[0]);
        (uint256 owedNow,,) = settlement.leaseBalances(ids[0]);
        uint256 pBefore = credit.balanceOf(p1);
        vm.warp(t0 + 330);
        (owedNow,,) = settlement.leaseBalances(ids[0]);
        vm.prank(X);
        settlement.close(ids[0]);
        (, uint256 paidAll,) = _costPaid(ids[0]);
        assertEq(credit.balanceOf(p1) - pBefore, owedNow, "the close pays what accrued since");
        assertEq(paidAll, first + second + owedNow, "every payment counted once");
        (xFree, xLocked) = _escrow(X);
        assertEq(xFree, cost0 - paidAll, "refund = cost - everything paid");
        assertEq(xLocked, xLocked0 - cost0, "the whole cost left locked");
        _checkEscrow(ids);
    }

    /// @dev Attacks on the claim's assembly path: a second claim of the same leases in the same
    /// block pays nothing; a lease past its end is paid and closed once, then skipped as closed;
    /// an unknown id reverts `UnknownLease` (also for an unbound caller, whose id 0 would match a
    /// missing lease's zero word); another provider's lease reverts `NotLeaseProvider`.
    function test_claimTwicePastEndAndForeignIds() public {
        uint256 t0 = START;
        bytes32[] memory ids = _openMix();
        _heartbeatUntil(ids, t0, t0 + 550);
        vm.warp(t0 + 580);
        bytes32[] memory twice = new bytes32[](6);
        (twice[0], twice[1], twice[2], twice[3], twice[4], twice[5]) = (ids[0], ids[2], ids[1], ids[0], ids[2], ids[1]);
        uint256 owed;
        for (uint256 i; i < 3; ++i) {
            (uint256 u,,) = settlement.leaseBalances(ids[i]);
            owed += u;
        }
        uint256 pBefore = credit.balanceOf(p1);
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(twice);
        assertEq(total, owed, "each lease paid once");
        assertEq(skipped, 0, "nothing skipped");
        assertEq(credit.balanceOf(p1) - pBefore, owed, "transfer = total");
        vm.prank(p1);
        (total,) = settlement.claimRevenue(twice);
        assertEq(total, 0, "no double pay in the same block");
        // lease 2 (600 s) ends: paid to its end and closed once, then skipped as closed
        vm.warp(t0 + 620);
        (uint256 owed2,,) = settlement.leaseBalances(ids[2]);
        bytes32[] memory two = new bytes32[](2);
        (two[0], two[1]) = (ids[2], ids[2]);
        vm.prank(p1);
        (total, skipped) = settlement.claimRevenue(two);
        assertEq(total, owed2, "ended lease paid once");
        assertEq(skipped, 1, "then skipped as closed");
        (,, bool closed2) = _costPaid(ids[2]);
        assertTrue(closed2, "closed by the claim");
        _checkEscrow(ids);
        // unknown ids and foreign leases
        bytes32[] memory bad = new bytes32[](2);
        (bad[0], bad[1]) = (ids[1], keccak256("no such lease"));
        vm.prank(p1);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.UnknownLease.selector, bad[1]));
        settlement.claimRevenue(bad);
        address nobody = address(0xBEEF);
        bytes32[] memory missing = new bytes32[](1);
        missing[0] = bad[1];
        vm.prank(nobody);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.UnknownLease.selector, bad[1]));
        settlement.claimRevenue(missing);
        vm.prank(X);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NotLeaseProvider.selector, ids[0], X));
        settlement.claimRevenue(ids);
        vm.prank(nobody);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NotLeaseProvider.selector, ids[0], nobody));
        settlement.claimRevenue(ids);
    }

    /// @dev Attack on the assembly loop's calldata walk: the provider hand-encodes `claim`'s array
    /// (the loop reads ids at `leaseIds.offset` up to `offset + 32 * length` itself). A length past
    /// the end of the calldata, a huge length and an offset past the end must revert (not read the
    /// zeros past the calldata, nor wrap `atEnd`); a valid but non-canonical encoding (the array
    /// placed after a stray word holding another lease's id) pays exactly the ids in the array.
    function test_claimCraftedCalldata() public {
        uint256 t0 = START;
        bytes32[] memory ids = _openMix();
        _heartbeatUntil(ids, t0, t0 + 100);
        vm.warp(t0 + 120);
        bytes4 sel = settlement.claimRevenue.selector;
        bytes[4] memory bad = [
            abi.encodePacked(sel, uint256(0x20), uint256(3), ids[0]), // length 3, one id present
            abi.encodePacked(sel, uint256(0x20), uint256(1) << 64, ids[0]), // a length whose 32x wraps nothing
            abi.encodePacked(sel, uint256(0x20), type(uint256).max >> 5, ids[0]), // 32 * length near 2^256
            abi.encodePacked(sel, uint256(0x1000), uint256(1), ids[0]) // offset past the end
        ];
        uint256 pBefore = credit.balanceOf(p1);
        for (uint256 i; i < bad.length; ++i) {
            vm.prank(p1);
            (bool ok,) = address(settlement).call(bad[i]);
            assertFalse(ok, "malformed claim calldata must revert");
        }
        assertEq(credit.balanceOf(p1), pBefore, "nothing paid by malformed calls");
        (uint256 owed1,,) = settlement.leaseBalances(ids[1]);
        assertTrue(owed1 > 0, "lease 1 owes");
        // offset 0x40: the word at 0x20 (ids[0]) is outside the array; the array is [ids[1], ids[1]]
        bytes memory skewed = abi.encodePacked(sel, uint256(0x40), ids[0], uint256(2), ids[1], ids[1]);
        vm.prank(p1);
        (bool okSkewed, bytes memory ret) = address(settlement).call(skewed);
        assertTrue(okSkewed, "a valid non-canonical encoding is accepted");
        (uint256 total, uint256 skipped) = abi.decode(ret, (uint256, uint256));
        assertEq(total, owed1, "only the array's lease paid, once");
        assertEq(skipped, 0, "nothing skipped");
        assertEq(credit.balanceOf(p1) - pBefore, owed1, "transfer = total");
        (uint256 owed0,,) = settlement.leaseBalances(ids[0]);
        assertTrue(owed0 > 0, "the stray word's lease is still owed");
        _checkEscrow(ids);
    }

    /// @dev Attack on the close/fault/claim-past-end ordering with escrow settled at the close:
    /// leases are claimed part-way, then heartbeats stop and lease 2 runs past its end with its fault
    /// pending. A claim must pay none of them (all faulted: skipped, lease 2 not closed past its
    /// end), a close by anyone must revert `FaultPending`, and the report must pay the provider only
    /// the covered remainder, refund cost minus everything paid, and take the whole cost out of
    /// `locked` once; X cannot withdraw what the faulted leases still hold; a second report and a
    /// claim of the closed lease move nothing. Conservation holds after every step.
    function test_faultPastEndAfterClaims() public {
        uint256 t0 = START;
        bytes32[] memory ids = _openMix();
        _heartbeatUntil(ids, t0, t0 + 200); // covered to t0 + 260
        vm.warp(t0 + 250);
        vm.prank(p1);
        (uint256 first,) = settlement.claimRevenue(ids);
        assertTrue(first > 0, "first claim pays");
        _checkEscrow(ids);
        (uint256 xFree0, uint256 xLocked0) = _escrow(X);
        vm.prank(X);
        settlement.requestWithdrawal(xFree0 + xLocked0);
        vm.warp(t0 + 700); // lease 2 (600 s) ended; every lease's fault reportable since t0 + 291
        uint256 pBefore = credit.balanceOf(p1);
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(ids);
        assertEq(total, 0, "faulted leases are not paid by a claim");
        assertEq(skipped, 5, "all five skipped as faulted");
        (,, bool closed2) = _costPaid(ids[2]);
        assertFalse(closed2, "a faulted lease past its end is not closed by a claim");
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.FaultPending.selector, ids[2]));
        settlement.close(ids[2]);
        _checkEscrow(ids);
        vm.prank(X);
        uint256 out = settlement.withdraw();
        assertEq(out, xFree0, "only free escrow leaves");
        (uint256 cost2, uint256 paidBefore,) = _costPaid(ids[2]);
        UnderbidSettlement.Lease memory l2 = settlement.getLease(ids[2]);
        uint256 perHour = uint256(l2.units) * l2.price;
        uint256 owedToCover = perHour * (t0 + 260 - l2.start) / 3_600 - paidBefore;
        settlement.reportFault(ids[2]);
        (, uint256 paidAll, bool closedNow) = _costPaid(ids[2]);
        assertTrue(closedNow, "closed by the report");
        assertEq(credit.balanceOf(p1) - pBefore, owedToCover, "the report pays the covered remainder only");
        assertEq(paidAll, paidBefore + owedToCover, "paid up to the last covered second");
        (uint256 xFree, uint256 xLocked) = _escrow(X);
        assertEq(xFree, cost2 - paidAll, "refund = cost - everything paid");
        assertEq(xLocked, xLocked0 - cost2, "the whole cost left locked once");
        _checkEscrow(ids);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.LeaseAlreadyClosed.selector, ids[2]));
        settlement.reportFault(ids[2]);
        bytes32[] memory one = new bytes32[](1);
        one[0] = ids[2];
        vm.prank(p1);
        (total, skipped) = settlement.claimRevenue(one);
        assertEq(total, 0, "nothing paid for the closed lease");
        assertEq(skipped, 1, "the closed lease is skipped");
        for (uint256 i; i < 5; ++i) {
            if (i != 2) settlement.reportFault(ids[i]);
        }
        (xFree, xLocked) = _escrow(X);
        (, uint256 yLocked) = _escrow(Y);
        assertEq(xLocked + yLocked, 0, "nothing locked once every lease closed");
        _checkEscrow(ids);
    }

    // ------------------------------------------------------------------ claim against a reference model

    /// @dev The model's view of one lease: fixed facts read once at its opening (start, end, rate)
    /// and the terms the test set (interval, grace), and the moving state the model keeps itself
    /// (never read back from the chain): last heartbeat, paid-until (both never zero) and closed.
    struct Ref {
        bytes32 id;
        address buyer;
        uint256 start;
        uint256 end;
        uint256 perHour;
        uint256 interval;
        uint256 grace;
        uint256 lastHb;
        uint256 paidUntil;
        bool closed;
    }

    Ref[] internal refs;
    /// @dev The model's clock (via-ir may re-read block.timestamp after a warp).
    uint256 internal now_;
    /// @dev Credits the model says the provider has been paid.
    uint256 internal refPaid;
    /// @dev Coverage (printed with -vv): leases a claim paid running, closed past their end (the
    /// final claim's included), and skipped as faulted; closes and fault reports that succeeded.
    uint256[5] internal seen;

    function _rand(uint256 seed, uint256 i) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, i)));
    }

    function _setTerms(uint32 interval, uint32 grace) internal {
        UnderbidBase.Params memory p = _params();
        (p.heartbeatInterval, p.heartbeatGrace) = (interval, grace);
        settlement.setParams(p);
    }

    /// @dev Opens one round of four leases (X and Y, two markets: two terms refs) under the
    /// current parameters, whose interval and grace the model takes from the arguments.
    function _openRefRound(uint256 seed, uint32 interval, uint32 grace) internal {
        uint256 nb = 1_000 * (round + 1);
        OrderLib.Order[] memory orders = new OrderLib.Order[](4);
        bytes[] memory osigs = new bytes[](4);
        uint32[4] memory units = [uint32(2), 3, 1, 4];
        for (uint256 i; i < 4; ++i) {
            uint32 duration = uint32(_bound(_rand(seed, 900 + i), MIN_LEASE, 1_800));
            (orders[i], osigs[i]) = _order(i % 2 == 0 ? X_PK : Y_PK, i < 2 ? MARKET : MARKET2, units[i], duration, nb + i);
        }
        BidLib.Bid[] memory bids = new BidLib.Bid[](2);
        bytes[] memory bsigs = new bytes[](2);
        (bids[0], bsigs[0]) = _bid(MARKET, 20, nb + 10);
        (bids[1], bsigs[1]) = _bid(MARKET2, 20, nb + 11);
        UnderbidSettlement.Match[] memory ms = new UnderbidSettlement.Match[](4);
        (ms[0], ms[1], ms[2], ms[3]) = (_m(0, 0, 2), _m(1, 0, 3), _m(2, 1, 1), _m(3, 1, 4));
        ++round;
        this.settleAs(round, 0, true, orders, osigs, bids, bsigs, ms);
        for (uint256 i; i < 4; ++i) {
            bytes32 id = settlement.leaseIdOf(
                H, round, settlement.hashOrder(orders[i]), settlement.hashBid(i < 2 ? bids[0] : bids[1])
            );
            UnderbidSettlement.Lease memory l = settlement.getLease(id);
            assertEq(l.start, now_, "a lease starts at its batch's time");
            refs.push(
                Ref(id, l.buyer, l.start, l.end, uint256(l.units) * l.price, interval, grace, now_, now_, false)
            );
        }
    }

    function _acc(Ref storage r, uint256 t) internal view returns (uint256) {
        if (t > r.end) t = r.end;
        return r.perHour * (t - r.start) / 3_600;
    }

    function _covered(Ref storage r) internal view returns (uint256) {
        return r.lastHb + r.interval;
    }

    function _faulted(Ref storage r) internal view returns (bool) {
        uint256 c = _covered(r);
        return c < r.end && now_ > c + r.grace;
    }

    /// @dev Pays `r` up to min(until, covered, end) if that is past its paid-until.
    function _refPay(Ref storage r, uint256 until) internal returns (uint256 amount) {
        uint256 c = _covered(r);
        if (until > c) until = c;
        if (until > r.end) until = r.end;
        if (until <= r.paidUntil) return 0;
        amount = _acc(r, until) - _acc(r, r.paidUntil);
        r.paidUntil = until;
    }

    function _pickIds(uint256 seed, uint256 maxLen) internal view returns (bytes32[] memory ids, uint256[] memory ix) {
        uint256 n = 1 + seed % maxLen;
        ids = new bytes32[](n);
        ix = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            ix[i] = _rand(seed, i) % refs.length;
            ids[i] = refs[ix[i]].id;
        }
    }

    function _stepHeartbeat(uint256 seed) internal {
        (bytes32[] memory ids, uint256[] memory ix) = _pickIds(seed, 8);
        if ((seed >> 128) % 2 == 0) {
            // every lease, so that some run long and end healthy
            ids = new bytes32[](refs.length);
            ix = new uint256[](refs.length);
            for (uint256 i; i < refs.length; ++i) (ids[i], ix[i]) = (refs[i].id, i);
        }
        uint256 skippedRef;
        for (uint256 i; i < ix.length; ++i) {
            Ref storage r = refs[ix[i]];
            if (r.closed || now_ >= r.end || _faulted(r)) ++skippedRef;
            else r.lastHb = now_;
        }
        vm.prank(p1);
        uint256 skipped = settlement.heartbeat(ids);
        assertEq(skipped, skippedRef, "heartbeat: skipped as the model");
    }

    function _stepClaim(uint256 seed) internal {
        (bytes32[] memory ids, uint256[] memory ix) = _pickIds(seed, 12);
        uint256 totalRef;
        uint256 skippedRef;
        for (uint256 i; i < ix.length; ++i) {
            Ref storage r = refs[ix[i]];
            if (r.closed || _faulted(r)) {
                ++skippedRef;
                if (!r.closed) ++seen[2];
            } else {
                totalRef += _refPay(r, now_);
                if (now_ >= r.end) (r.closed, seen[1]) = (true, seen[1] + 1);
                else ++seen[0];
            }
        }
        uint256 before = credit.balanceOf(p1);
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(ids);
        assertEq(total, totalRef, "claim: total = the model's accrual");
        assertEq(skipped, skippedRef, "claim: skipped as the model");
        assertEq(credit.balanceOf(p1) - before, totalRef, "claim: transfer = the model's accrual");
        refPaid += totalRef;
    }

    function _stepClose(uint256 seed) internal {
        Ref storage r = refs[seed % refs.length];
        // the buyer, or (after the end) a third party
        address who = (seed >> 8) % 3 == 0 ? address(0xBEEF) : r.buyer;
        bool ok = !r.closed && (now_ >= r.end || who == r.buyer) && !_faulted(r);
        uint256 owed;
        if (ok) {
            owed = _refPay(r, now_);
            (r.closed, seen[3]) = (true, seen[3] + 1);
        }
        uint256 before = credit.balanceOf(p1);
        vm.prank(who);
        (bool success,) = address(settlement).call(abi.encodeCall(settlement.close, (r.id)));
        assertEq(success ? 1 : 0, ok ? 1 : 0, "close: succeeds iff the model says so");
        assertEq(credit.balanceOf(p1) - before, owed, "close: pays the model's accrual");
        refPaid += owed;
    }

    function _stepFault(uint256 seed) internal {
        // mostly a lease the model says is reportable, if any
        uint256 k = seed % refs.length;
        for (uint256 j; j < refs.length && (seed >> 128) % 4 != 0; ++j) {
            uint256 c = (seed + j) % refs.length;
            if (!refs[c].closed && _faulted(refs[c])) {
                k = c;
                break;
            }
        }
        Ref storage r = refs[k];
        bool ok = !r.closed && _faulted(r);
        uint256 owed;
        if (ok) {
            owed = _refPay(r, _covered(r));
            (r.closed, seen[4]) = (true, seen[4] + 1);
        }
        uint256 before = credit.balanceOf(p1);
        vm.prank(address(0xFA17));
        (bool success,) = address(settlement).call(abi.encodeCall(settlement.reportFault, (r.id)));
        assertEq(success ? 1 : 0, ok ? 1 : 0, "reportFault: succeeds iff the model says so");
        assertEq(credit.balanceOf(p1) - before, owed, "reportFault: pays up to the covered second");
        refPaid += owed;
    }

    /// @dev Every lease's stored state equals the model's; an open lease's paid-until never lies
    /// after min(now, covered) (what the claim's unconditional write and subtraction rely on);
    /// `leaseBalances` shows the model's claimable amount; escrow is conserved.
    function _checkRefs(uint256 paidStart) internal view {
        bytes32[] memory ids = new bytes32[](refs.length);
        for (uint256 i; i < refs.length; ++i) {
            Ref storage r = refs[i];
            ids[i] = r.id;
            UnderbidSettlement.Lease memory l = settlement.getLease(r.id);
            uint256 paidUntil = l.paidUntil == 0 ? l.start : l.paidUntil;
            uint256 lastHb = l.lastHeartbeat == 0 ? l.start : l.lastHeartbeat;
            assertEq(paidUntil, r.paidUntil, "paid-until as the model");
            assertEq(lastHb, r.lastHb, "last heartbeat as the model");
            assertTrue(l.closed == r.closed, "closed as the model");
            if (r.closed) continue;
            uint256 cap = _covered(r) < now_ ? _covered(r) : now_;
            assertLe(paidUntil, cap, "open lease: paid-until <= min(now, covered)");
            (uint256 unpaid,,) = settlement.leaseBalances(r.id);
            uint256 payable_ = _acc(r, cap < r.end ? cap : r.end);
            assertEq(unpaid, payable_ - _acc(r, r.paidUntil), "leaseBalances: claimable as the model");
        }
        assertEq(credit.balanceOf(p1) - paidStart, refPaid, "provider paid exactly the model's sum");
        _checkEscrow(ids);
    }

    /// @dev Fuzz: random sequences of warps (some of 0-2 s, to hit the fault and end boundaries),
    /// heartbeats, claims (random lists: repeated ids, leases of three rounds with three different
    /// interval/grace pairs and two markets each, interleaved buyers, ended, closed and faulted
    /// leases mixed), buyer and third-party closes and fault reports. After every step each lease's
    /// stored paid-until, last heartbeat and closed flag must equal a reference model written
    /// from the documented rules (with the guarded "pay only if past paid-until"), every claim's
    /// total and skip count and every close's and report's payment must equal the model's, and
    /// escrow must be conserved. Finally every lease is ended and closed: the provider's whole
    /// income is the model's.
    /// forge-config: default.fuzz.runs = 200
    function testFuzz_claimMatchesReferenceModel(uint256 seed) public {
        now_ = START;
        uint256 paidStart = credit.balanceOf(p1);
        _openRefRound(seed, HEARTBEAT, GRACE);
        for (uint256 step; step < 64; ++step) {
            if (step == 20) {
                _setTerms(400, 0); // grace 0: a fault is reportable one second after coverage ends
                _openRefRound(_rand(seed, 7_000 + step), 400, 0);
            } else if (step == 40) {
                _setTerms(900, 11); // some leases covered to their end from the start
                _openRefRound(_rand(seed, 7_000 + step), 900, 11);
            }
            uint256 r = _rand(seed, step);
            uint256 kind = r % 11;
            if (kind == 0) {
                now_ += (r >> 16) % 100;
                vm.warp(now_);
            } else if (kind == 1) {
                now_ += (r >> 16) % 800; // leases (600-1,800 s) end during the sequence
                vm.warp(now_);
            } else if (kind == 2) {
                now_ += (r >> 16) % 3;
                vm.warp(now_);
            } else if (kind < 6) {
                _stepHeartbeat(r >> 16);
            } else if (kind < 9) {
                _stepClaim(r >> 16);
            } else if (kind == 9) {
                _stepClose(r >> 16);
            } else {
                _stepFault(r >> 16);
            }
            _checkRefs(paidStart);
        }
        // the end: past every lease's end, claim everything, then close or report what is left
        now_ += 4_000;
        vm.warp(now_);
        bytes32[] memory all = new bytes32[](refs.length);
        for (uint256 i; i < refs.length; ++i) all[i] = refs[i].id;
        _stepClaimAll(all);
        for (uint256 i; i < refs.length; ++i) {
            if (!refs[i].closed) _stepFault(i);
        }
        _log("claim paid running", seen[0]);
        _log("claim closed past end", seen[1]);
        _log("claim skipped faulted", seen[2]);
        _log("closes", seen[3]);
        _log("fault reports", seen[4]);
        _checkRefs(paidStart);
        (, uint256 xLocked) = _escrow(X);
        (, uint256 yLocked) = _escrow(Y);
        assertEq(xLocked + yLocked, 0, "nothing locked once every lease closed");
    }

    function _stepClaimAll(bytes32[] memory ids) internal {
        uint256 totalRef;
        uint256 skippedRef;
        for (uint256 i; i < refs.length; ++i) {
            Ref storage r = refs[i];
            if (r.closed || _faulted(r)) {
                ++skippedRef;
            } else {
                totalRef += _refPay(r, now_);
                (r.closed, seen[1]) = (true, seen[1] + 1);
            }
        }
        vm.prank(p1);
        (uint256 total, uint256 skipped) = settlement.claimRevenue(ids);
        assertEq(total, totalRef, "final claim: total = the model's accrual");
        assertEq(skipped, skippedRef, "final claim: skipped as the model");
        refPaid += totalRef;
    }

    // ------------------------------------------------------------------ deployment: the credit's predicted escrow

    /// @dev Attacks on the credit's escrow fixed at construction (the settlement's predicted
    /// address): (a) a transaction of the deployer's landing between the credit and the settlement
    /// (the prediction then names that transaction's contract) makes the settlement's constructor
    /// revert `InvalidParameter("credit")`, not deploy a core whose every credit transfer fails;
    /// (b) the deployed credit's escrow is the settlement and its BME cannot be re-bound, by the
    /// deployer or anyone else; (c) a UBC an attacker makes naming the real settlement as escrow
    /// (with the attacker as its BME, minting at will) buys nothing: the settlement moves only its
    /// own credit, so a deposit of the fake credits finds no real ones; (d) the real credit moves
    /// only into or out of the settlement, and only by the settlement.
    function test_deployPredictedEscrow() public {
        uint256 n = vm.getNonce(address(this));
        UnderbidCredit predicted = new UnderbidCredit(vm.computeCreateAddress(address(this), n + 1));
        UnderbidCredit between = new UnderbidCredit(address(1)); // takes the predicted address
        assertTrue(predicted.escrow() == address(between), "the prediction names the intervening contract");
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.InvalidParameter.selector, "credit"));
        new UnderbidSettlement(address(this), ubt, predicted, _limits(), _params());

        assertTrue(credit.escrow() == address(settlement), "the deployed credit's escrow is the settlement");
        assertTrue(address(settlement.credit()) == address(credit), "the settlement's credit");
        vm.expectRevert(IUnderbidErrors.AlreadyBound.selector);
        credit.bindProtocol(address(this));
        address attacker = address(0xA77);
        vm.prank(attacker);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.UnauthorizedCaller.selector, attacker));
        credit.bindProtocol(attacker);
        assertTrue(credit.bme() == address(bme), "the BME stays bound");

        vm.startPrank(attacker);
        UnderbidCredit fake = new UnderbidCredit(address(settlement));
        fake.bindProtocol(attacker);
        fake.mint(attacker, 1_000_000e6);
        vm.stopPrank();
        uint256 held = credit.balanceOf(address(settlement));
        vm.prank(attacker);
        (bool ok,) = address(settlement).call(abi.encodeCall(settlement.deposit, (1_000_000e6)));
        assertFalse(ok, "fake credits deposit nothing");
        assertEq(credit.balanceOf(address(settlement)), held, "the settlement's credits unchanged");
        (uint256 free, uint256 locked) = _escrow(attacker);
        assertEq(free + locked, 0, "no escrow for the attacker");

        // X holds no credits (all deposited): withdraw a little, then try to move it elsewhere
        vm.prank(X);
        settlement.requestWithdrawal(5e6);
        vm.warp(START + NOTICE); // not block.timestamp: via-ir may re-read it after a warp
        vm.prank(X);
        settlement.withdraw();
        assertEq(credit.balanceOf(X), 5e6, "X withdrew");
        vm.prank(X);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.CreditNonTransferable.selector, X, Y));
        credit.transfer(Y, 1);
        vm.prank(X);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.CreditNonTransferable.selector, X, address(bme)));
        credit.transfer(address(bme), 1);
    }

    // ------------------------------------------------------------------ nonce word slot kept from verification

    /// @dev Attack on the kept nonce-word slot: X signs, in ONE batch, an order (nonce 5, partly
    /// filled) and a bid (nonce 6, used up) whose nonces share one bitmap word, so both
    /// `_recordFill`s write the same slot: neither may lose the other's bits. Then X's order and a
    /// bid with the order's nonce (one (signer, nonce) across sides) must be `DuplicateNonce`.
    function test_sharedNonceWordAcrossSides() public {
        vm.startPrank(X);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.register("ipfs://x");
        settlement.stake(10_000e18);
        vm.stopPrank();
        OrderLib.Order[] memory orders = new OrderLib.Order[](1);
        bytes[] memory osigs = new bytes[](1);
        (orders[0], osigs[0]) = _order(X_PK, MARKET, 4, 3_600, 5);
        BidLib.Bid[] memory bids = new BidLib.Bid[](2);
        bytes[] memory bsigs = new bytes[](2);
        (bids[0], bsigs[0]) = _bid(MARKET, 2, 300); // p1 serves X's order
        bids[1] = BidLib.Bid(X, H, MARKET, 2, 1e6, 7_200, uint64(block.timestamp + 3_600), 6);
        bsigs[1] = _sig(X_PK, settlement.hashBid(bids[1]));
        OrderLib.Order[] memory yo = new OrderLib.Order[](2);
        bytes[] memory yos = new bytes[](2);
        (yo[0], yos[0]) = (orders[0], osigs[0]);
        (yo[1], yos[1]) = _order(Y_PK, MARKET, 2, 3_600, 5);
        UnderbidSettlement.Match[] memory ms = new UnderbidSettlement.Match[](2);
        (ms[0], ms[1]) = (_m(0, 0, 2), _m(1, 1, 2)); // X's order 2 of 4 (by p1); Y's order by X's bid (used up)
        this.settleAs(1, 0, true, yo, yos, bids, bsigs, ms);
        (bool c5, bool v5) = settlement.nonceState(X, 5);
        (bool c6, bool v6) = settlement.nonceState(X, 6);
        assertTrue(c5 && !v5, "order nonce claimed, not void");
        assertTrue(c6 && v6, "bid nonce claimed and void");
        assertEq(settlement.remainingOf(settlement.hashOrder(orders[0]), X, 5, 4), 2, "order has 2 left");
        assertEq(settlement.remainingOf(settlement.hashBid(bids[1]), X, 6, 2), 0, "bid used up");
        // X's bid reused: NonceUsed
        ms = new UnderbidSettlement.Match[](1);
        BidLib.Bid[] memory one = new BidLib.Bid[](1);
        bytes[] memory oneSig = new bytes[](1);
        (one[0], oneSig[0]) = (bids[1], bsigs[1]);
        OrderLib.Order[] memory yOnly = new OrderLib.Order[](1);
        bytes[] memory yOnlySig = new bytes[](1);
        (yOnly[0], yOnlySig[0]) = _order(Y_PK, MARKET, 1, 3_600, 77);
        ms[0] = _m(0, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.NonceUsed.selector, X, uint256(6)));
        this.settleAs(2, 0, true, yOnly, yOnlySig, one, oneSig, ms);
        // X's order (nonce 5) and an X bid with nonce 5 in one batch: DuplicateNonce
        one[0] = BidLib.Bid(X, H, MARKET, 2, 1e6, 7_200, uint64(block.timestamp + 3_600), 5);
        oneSig[0] = _sig(X_PK, settlement.hashBid(one[0]));
        vm.expectRevert(abi.encodeWithSelector(IUnderbidErrors.DuplicateNonce.selector, X, uint256(5)));
        this.settleAs(2, 0, true, orders, osigs, one, oneSig, ms);
        // the order's last 2 units fill, then it is void
        (one[0], oneSig[0]) = _bid(MARKET, 2, 301);
        ms[0] = _m(0, 0, 2);
        this.settleAs(2, 0, true, orders, osigs, one, oneSig, ms);
        (c5, v5) = settlement.nonceState(X, 5);
        (c6, v6) = settlement.nonceState(X, 6);
        assertTrue(c5 && v5 && c6 && v6, "both void");
    }
}
