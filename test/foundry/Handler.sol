// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidToken} from "../../contracts/tokens/UnderbidToken.sol";
import {UnderbidCredit} from "../../contracts/tokens/UnderbidCredit.sol";
import {PriceOracle} from "../../contracts/PriceOracle.sol";
import {BurnMintEquilibrium} from "../../contracts/BurnMintEquilibrium.sol";
import {UnderbidSettlement} from "../../contracts/UnderbidSettlement.sol";
import {MatcherRounds} from "../../contracts/core/MatcherRounds.sol";
import {MatcherBinding} from "../../contracts/core/MatcherBinding.sol";
import {OrderLib} from "../../contracts/libraries/OrderLib.sol";
import {BidLib} from "../../contracts/libraries/BidLib.sol";
import {ReceiptLib} from "../../contracts/libraries/ReceiptLib.sol";
import {MatcherCourt} from "../../contracts/MatcherCourt.sol";
import {IUnderbidErrors} from "../../contracts/interfaces/IUnderbidErrors.sol";
import {CheatBase} from "./Vm.sol";
import {ExactClearing} from "./ExactClearing.sol";

/// @dev The actors of the invariant campaign: 3 buyers, 3 providers, an honest matcher H that
/// clears every round exactly (brute force over one market, <= 3 orders, <= 3 bids) and an
/// adversarial matcher A that settles whatever it likes. Every public function is one action;
/// the invariant test reads the ghost state and the violation flags.
contract Handler is CheatBase {
    bytes32 internal constant MARKET = keccak256("gpu=nvidia-h100;vram=80;gpus=8;region=us-east");
    uint256 internal constant STAKE_PER_UNIT = 100e18;
    uint256 internal constant MAX_MESSAGES = 48;
    uint256 internal constant MAX_LEASES = 120;

    UnderbidToken public immutable ubt;
    UnderbidCredit public immutable credit;
    PriceOracle public immutable oracle;
    BurnMintEquilibrium public immutable bme;
    UnderbidSettlement public immutable settlement;
    MatcherCourt public immutable court;
    address public immutable admin;
    uint256 public immutable noticePeriod;

    uint256[3] internal buyerPk;
    uint256[3] internal providerPk;
    address[3] public buyers;
    address[3] public providers;
    address public immutable H;
    address public immutable A;
    uint256 internal immutable rhPk; // H's receipt signer
    uint256 internal immutable raPk; // A's receipt signer
    address public constant REPORTER = address(0xFA017);

    struct OrderRec {
        OrderLib.Order o;
        bytes sig;
        bytes32 digest;
    }

    struct BidRec {
        BidLib.Bid b;
        bytes sig;
        bytes32 digest;
        ReceiptLib.Receipt r;
        bytes rsig;
        bool receipted;
    }

    struct LeaseRec {
        bytes32 id;
        address matcher;
        uint64 round;
        bytes32 orderDigest;
        uint256 bid;
    }

    OrderRec[] internal _orders;
    BidRec[] internal _bids;
    LeaseRec[] internal _leases;
    /// Live messages H admitted (indices into _orders / _bids); every bid there has a receipt.
    uint256[] internal hOrders;
    uint256[] internal hBids;
    /// Every bid that ever got a receipt from H / from A.
    uint256[] internal hReceipted;
    uint256[] internal aReceipted;
    uint256 internal nonceCounter = 1_000;

    // ----- ghost state -----
    mapping(bytes32 => uint256) public ghostFilled;
    mapping(bytes32 => bytes32) internal firstFiller;
    uint256 public bmeMinted;
    uint256 public bmeBurned;

    // ----- violations (the invariants assert these stay false) -----
    bool public honestChallenged;
    bytes public honestChallengeInfo;
    bool public honestSettleReverted;
    bytes public honestSettleError;
    bool public nonceShared;
    bool public foreignSettle;
    bool public fillMismatch;

    // ----- coverage counters (printed by the campaign's last check) -----
    uint256 public honestRounds;
    uint256 public honestLeases;
    uint256 public adversaryRounds;
    uint256 public challengesTried;
    uint256 public challengesPastWitness;
    uint256 public adversaryChallenged;
    uint256 public expiredBatches;

    // ----- H's batch between simulation and inclusion -----
    bool public pendingActive;
    uint64 internal pendingRound;
    uint64 internal pendingDeadline;
    uint64 internal pendingPrice;
    uint256[] internal pendingOrders;
    uint256[] internal pendingBids;
    UnderbidSettlement.Match[] internal pendingMatches;

    constructor(
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        PriceOracle oracle_,
        BurnMintEquilibrium bme_,
        UnderbidSettlement settlement_,
        address admin_
    ) {
        ubt = ubt_;
        credit = credit_;
        oracle = oracle_;
        bme = bme_;
        settlement = settlement_;
        court = settlement_.court();
        admin = admin_;
        noticePeriod = settlement_.noticePeriod();
        for (uint256 i; i < 3; ++i) {
            buyerPk[i] = 0xB0 + i;
            providerPk[i] = 0x90 + i;
            buyers[i] = vm.addr(buyerPk[i]);
            providers[i] = vm.addr(providerPk[i]);
        }
        H = vm.addr(0xA11CE);
        A = vm.addr(0xBADBAD);
        rhPk = 0x5161;
        raPk = 0x5162;
    }

    /// @dev Funds and wires the actors (called once by setUp, after the tokens were handed out).
    function init() external {
        for (uint256 i; i < 3; ++i) {
            _prepareAccount(buyers[i]);
            _prepareAccount(providers[i]);
            vm.prank(providers[i]);
            settlement.register("ipfs://provider");
            vm.prank(providers[i]);
            settlement.stake(1_000e18);
            vm.prank(buyers[i]);
            bme.mintCredits(500e18, 0); // 1000 UBC at $2
            vm.prank(buyers[i]);
            settlement.deposit(400e6);
            vm.prank(buyers[i]);
            settlement.bindMatcher(H);
            vm.prank(providers[i]);
            settlement.bindMatcher(H);
        }
        vm.startPrank(H);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.bondMatcher(100 * settlement.minMatcherBond(), vm.addr(rhPk));
        vm.stopPrank();
        vm.startPrank(A);
        ubt.approve(address(settlement), type(uint256).max);
        settlement.bondMatcher(4 * settlement.minMatcherBond(), vm.addr(raPk));
        vm.stopPrank();
        bmeBurned = 1_500e18;
    }

    function _prepareAccount(address who) private {
        vm.startPrank(who);
        ubt.approve(address(settlement), type(uint256).max);
        ubt.approve(address(bme), type(uint256).max);
        vm.stopPrank();
    }

    // =====================================================================================
    // Tokens: oracle moves, BME mint and redeem
    // =====================================================================================

    function movePrice(uint256 price) external {
        price = _bound(price, 0.5e8, 5e8);
        vm.prank(admin);
        oracle.setPrice(price);
    }

    function mintCredits(uint256 who, uint256 ubtIn) external {
        address account = _anyUser(who);
        ubtIn = _bound(ubtIn, 1e18, 200e18);
        uint256 supply = ubt.totalSupply();
        vm.prank(account);
        try bme.mintCredits(ubtIn, 0) {} catch {}
        _trackSupply(supply);
    }

    function redeem(uint256 who, uint256 amount) external {
        address account = _anyUser(who);
        uint256 balance = credit.balanceOf(account);
        if (balance == 0) return;
        amount = _bound(amount, 1, balance);
        uint256 supply = ubt.totalSupply();
        vm.prank(account);
        try bme.redeem(amount, 0) {} catch {}
        _trackSupply(supply);
    }

    function _trackSupply(uint256 before) private {
        uint256 supply = ubt.totalSupply();
        if (supply > before) bmeMinted += supply - before;
        else bmeBurned += before - supply;
    }

    // =====================================================================================
    // Escrow, stake, binding, cancellations, time
    // =====================================================================================

    function deposit(uint256 who, uint256 amount) external {
        address buyer = buyers[who % 3];
        uint256 balance = credit.balanceOf(buyer);
        if (balance == 0) return;
        amount = _bound(amount, 1, balance);
        vm.prank(buyer);
        settlement.deposit(amount);
    }

    function requestWithdrawal(uint256 who, uint256 amount) external {
        address buyer = buyers[who % 3];
        (uint128 free,) = settlement.escrowOf(buyer);
        amount = _bound(amount, 1, uint256(free) + 1e6);
        vm.prank(buyer);
        settlement.requestWithdrawal(amount);
    }

    function withdraw(uint256 who) external {
        vm.prank(buyers[who % 3]);
        try settlement.withdraw() {} catch {}
    }

    function stake(uint256 who, uint256 amount) external {
        amount = _bound(amount, 1e18, 500e18);
        vm.prank(providers[who % 3]);
        settlement.stake(amount);
    }

    function requestUnstake(uint256 who, uint256 amount) external {
        address provider = providers[who % 3];
        uint256 available = settlement.availableStake(provider);
        if (available == 0) return;
        amount = _bound(amount, 1, available);
        vm.prank(provider);
        settlement.requestUnstake(amount);
    }

    function withdrawUnbonded(uint256 who) external {
        vm.prank(providers[who % 3]);
        try settlement.withdrawUnbonded() {} catch {}
    }

    /// @dev Mostly back to H, sometimes to the adversary A, sometimes unbound.
    function bindMatcher(uint256 who, uint256 which) external {
        address account = who % 2 == 0 ? buyers[(who / 2) % 3] : providers[(who / 2) % 3];
        uint256 w = which % 5;
        address target = w < 3 ? H : (w == 3 ? A : address(0));
        vm.prank(account);
        settlement.bindMatcher(target);
    }

    function requestCancel(uint256 pick) external {
        (address signer, uint256 nonce) = _someMessage(pick);
        if (signer == address(0)) return;
        uint256[] memory nonces = new uint256[](1);
        nonces[0] = nonce;
        vm.prank(signer);
        settlement.requestCancel(nonces);
    }

    function cancelNonces(uint256 pick) external {
        (address signer, uint256 nonce) = _someMessage(pick);
        if (signer == address(0)) return;
        uint256[] memory nonces = new uint256[](1);
        nonces[0] = nonce;
        vm.prank(signer);
        try settlement.cancelNonces(nonces) {} catch {}
    }

    function warp(uint256 dt) external {
        dt = dt % 5 == 0 ? _bound(dt >> 8, 1, 3_600) : _bound(dt >> 8, 1, 90);
        vm.warp(block.timestamp + dt);
    }

    // =====================================================================================
    // Signed messages
    // =====================================================================================

    /// @dev A buyer signs an order for H (admitted if H would take it) or for A.
    function newOrder(uint256 who, uint256 units, uint256 duration, uint256 maxPrice, uint256 life, uint256 forA)
        external
    {
        if (_orders.length >= MAX_MESSAGES) return;
        uint256 i = who % 3;
        bool adversary = forA % 4 == 0;
        OrderLib.Order memory o = OrderLib.Order({
            buyer: buyers[i],
            matcher: adversary ? A : H,
            market: MARKET,
            units: uint32(_bound(units, 1, 2)),
            duration: uint32(_bound(duration, 10, 60) * 60),
            maxPrice: uint64(_bound(maxPrice, 10, 50) * 1e5),
            deadline: uint64(block.timestamp + _bound(life, 60, 7_200)),
            nonce: _nonce(forA)
        });
        bytes32 digest = settlement.hashOrder(o);
        _orders.push(OrderRec(o, _sig(buyerPk[i], digest), digest));
        if (!adversary && _orderLive(_orders.length - 1) && hOrders.length < 3) {
            hOrders.push(_orders.length - 1);
        }
    }

    /// @dev A provider signs a bid for H (admitted with a receipt if H would take it) or for A
    /// (A signs a receipt for every bid).
    function newBid(uint256 who, uint256 capacity, uint256 price, uint256 maxDuration, uint256 life, uint256 forA)
        external
    {
        if (_bids.length >= MAX_MESSAGES) return;
        uint256 i = who % 3;
        bool adversary = forA % 4 == 0;
        BidLib.Bid memory b = BidLib.Bid({
            provider: providers[i],
            matcher: adversary ? A : H,
            market: MARKET,
            capacity: uint32(_bound(capacity, 1, 2)),
            price: uint64(_bound(price, 10, 40) * 1e5),
            maxDuration: uint32(_bound(maxDuration, 10, 60) * 60),
            deadline: uint64(block.timestamp + _bound(life, 60, 7_200)),
            nonce: _nonce(forA)
        });
        bytes32 digest = settlement.hashBid(b);
        uint256 idx = _bids.length;
        _bids.push();
        BidRec storage rec = _bids[idx];
        rec.b = b;
        rec.sig = _sig(providerPk[i], digest);
        rec.digest = digest;
        if (adversary) {
            _receipt(rec, A, settlement.lastRound(A) + 1, raPk);
            aReceipted.push(idx);
        } else if (hBids.length < 3 && _bidLive(idx) && _stakeCovers(b.provider, b.capacity)) {
            // The receipt admits the bid to H's next round not yet simulated.
            _receipt(rec, H, settlement.lastRound(H) + (pendingActive ? 2 : 1), rhPk);
            hBids.push(idx);
            hReceipted.push(idx);
        }
    }

    function _receipt(BidRec storage rec, address matcher, uint64 round, uint256 pk) private {
        rec.r = ReceiptLib.Receipt({matcher: matcher, bidHash: rec.digest, round: round, issuedAt: uint64(block.timestamp)});
        rec.rsig = _sig(pk, settlement.hashReceipt(rec.r));
        rec.receipted = true;
    }

    /// @dev Mostly fresh nonces; every fourth message reuses one of 8 small nonces (collisions),
    /// every so often a far one (other bitmap words).
    function _nonce(uint256 seed) private returns (uint256) {
        uint256 k = (seed >> 4) % 8;
        if (k == 0) return (seed >> 8) % 8;
        if (k == 1) return uint256(keccak256(abi.encode(seed)));
        return ++nonceCounter;
    }

    /// @dev H's stake policy for receipts: the provider's available stake covers the remaining
    /// capacity of all its live admitted bids plus this one.
    function _stakeCovers(address provider, uint256 capacity) private view returns (bool) {
        uint256 units = capacity;
        for (uint256 j; j < hBids.length; ++j) {
            BidRec storage rec = _bids[hBids[j]];
            if (rec.b.provider == provider) units += _bidRemaining(rec);
        }
        return settlement.availableStake(provider) >= units * STAKE_PER_UNIT;
    }

    // =====================================================================================
    // H: exact clearing, simulation, inclusion
    // =====================================================================================

    /// @dev H simulates its next round against the current state and keeps the batch pending.
    function prepareHonest() public {
        if (pendingActive) return;
        _prune();
        uint256 n = hOrders.length;
        uint256 m = hBids.length;
        if (n == 0 || m == 0) return;
        ExactClearing.Instance memory inst;
        inst.n = n;
        inst.m = m;
        for (uint256 o; o < n; ++o) {
            OrderRec storage rec = _orders[hOrders[o]];
            inst.oLeft[o] = settlement.remainingOf(rec.digest, rec.o.buyer, rec.o.nonce, rec.o.units);
            inst.oDur[o] = rec.o.duration;
            inst.oMax[o] = rec.o.maxPrice;
            inst.oBuyer[o] = _buyerSlot(rec.o.buyer);
        }
        for (uint256 b; b < m; ++b) {
            BidRec storage rec = _bids[hBids[b]];
            inst.bLeft[b] = _bidRemaining(rec);
            inst.bPrice[b] = rec.b.price;
            inst.bMaxDur[b] = rec.b.maxDuration;
            inst.bProv[b] = _providerSlot(rec.b.provider);
        }
        for (uint256 k; k < 3; ++k) {
            inst.escrow[k] = settlement.availableEscrow(buyers[k]);
            inst.stakeUnits[k] = settlement.availableStake(providers[k]) / STAKE_PER_UNIT;
        }
        ExactClearing.solve(inst);
        if (inst.bestGains == 0) return;

        uint256 deadline = block.timestamp + noticePeriod - 1;
        delete pendingOrders;
        delete pendingBids;
        delete pendingMatches;
        uint256[3] memory orderPos;
        uint256[3] memory bidPos;
        for (uint256 o; o < n; ++o) {
            for (uint256 b; b < m; ++b) {
                uint256 x = inst.bestX[o * m + b];
                if (x == 0) continue;
                if (orderPos[o] == 0) {
                    pendingOrders.push(hOrders[o]);
                    orderPos[o] = pendingOrders.length;
                    uint256 d = _orders[hOrders[o]].o.deadline;
                    if (d < deadline) deadline = d;
                }
                if (bidPos[b] == 0) {
                    pendingBids.push(hBids[b]);
                    bidPos[b] = pendingBids.length;
                    uint256 d = _bids[hBids[b]].b.deadline;
                    if (d < deadline) deadline = d;
                }
                pendingMatches.push(
                    UnderbidSettlement.Match(uint32(orderPos[o] - 1), uint32(bidPos[b] - 1), uint32(x))
                );
            }
        }
        pendingActive = true;
        pendingRound = settlement.lastRound(H) + 1;
        pendingDeadline = uint64(deadline);
        pendingPrice = uint64(inst.bestP);
    }

    /// @dev H's pending batch lands now (other actions may have run since its simulation). Past
    /// its own deadline H drops it. Any revert is a violation of settle's NOTE.
    function landHonest() public {
        if (!pendingActive) return;
        pendingActive = false;
        if (block.timestamp > pendingDeadline) {
            ++expiredBatches;
            return;
        }
        uint256 no = pendingOrders.length;
        uint256 nb = pendingBids.length;
        OrderLib.Order[] memory orders = new OrderLib.Order[](no);
        bytes[] memory orderSigs = new bytes[](no);
        BidLib.Bid[] memory bids = new BidLib.Bid[](nb);
        bytes[] memory bidSigs = new bytes[](nb);
        for (uint256 i; i < no; ++i) {
            orders[i] = _orders[pendingOrders[i]].o;
            orderSigs[i] = _orders[pendingOrders[i]].sig;
        }
        for (uint256 i; i < nb; ++i) {
            bids[i] = _bids[pendingBids[i]].b;
            bidSigs[i] = _bids[pendingBids[i]].sig;
        }
        UnderbidSettlement.Match[] memory matches = pendingMatches;
        MatcherRounds.MarketPrice[] memory prices = new MatcherRounds.MarketPrice[](1);
        prices[0] = MatcherRounds.MarketPrice(MARKET, pendingPrice);
        UnderbidSettlement.BatchHeader memory header =
            UnderbidSettlement.BatchHeader({round: pendingRound, batch: 0, finalBatch: true, deadline: pendingDeadline});
        vm.prank(H);
        try settlement.settle(header, orders, orderSigs, bids, bidSigs, matches, prices) {
            ++honestRounds;
            honestLeases += matches.length;
            _recordSettled(H, pendingRound, pendingOrders, pendingBids, matches);
        } catch (bytes memory err) {
            honestSettleReverted = true;
            honestSettleError = err;
        }
    }

    /// @dev Simulation and inclusion in the same block.
    function settleHonestNow() external {
        prepareHonest();
        landHonest();
    }

    /// @dev Drops what H no longer takes: expired, cancelled (announced), used up, or from an
    /// account not bound to H or with a binding change pending.
    function _prune() private {
        for (uint256 j = hOrders.length; j > 0; --j) {
            if (!_orderLive(hOrders[j - 1])) {
                hOrders[j - 1] = hOrders[hOrders.length - 1];
                hOrders.pop();
            }
        }
        for (uint256 j = hBids.length; j > 0; --j) {
            if (!_bidLive(hBids[j - 1])) {
                hBids[j - 1] = hBids[hBids.length - 1];
                hBids.pop();
            }
        }
    }

    function _orderLive(uint256 idx) private view returns (bool) {
        OrderRec storage rec = _orders[idx];
        return rec.o.deadline >= block.timestamp && _takesFrom(rec.o.buyer)
            && settlement.cancelRequestedAt(rec.o.buyer, rec.o.nonce) == 0
            && settlement.remainingOf(rec.digest, rec.o.buyer, rec.o.nonce, rec.o.units) != 0
            && !_nonceAdmitted(rec.o.buyer, rec.o.nonce, rec.digest);
    }

    function _bidLive(uint256 idx) private view returns (bool) {
        BidRec storage rec = _bids[idx];
        return rec.b.deadline >= block.timestamp && _takesFrom(rec.b.provider)
            && settlement.cancelRequestedAt(rec.b.provider, rec.b.nonce) == 0 && _bidRemaining(rec) != 0
            && !_nonceAdmitted(rec.b.provider, rec.b.nonce, rec.digest);
    }

    /// @dev H admits one message per (signer, nonce).
    function _nonceAdmitted(address signer, uint256 nonce, bytes32 digest) private view returns (bool) {
        for (uint256 j; j < hOrders.length; ++j) {
            OrderRec storage o = _orders[hOrders[j]];
            if (o.o.buyer == signer && o.o.nonce == nonce && o.digest != digest) return true;
        }
        for (uint256 j; j < hBids.length; ++j) {
            BidRec storage b = _bids[hBids[j]];
            if (b.b.provider == signer && b.b.nonce == nonce && b.digest != digest) return true;
        }
        return false;
    }

    /// @dev Bound to H now, with no binding change pending.
    function _takesFrom(address account) private view returns (bool) {
        if (settlement.boundMatcherOf(account) != H) return false;
        MatcherBinding.Binding memory binding = settlement.bindingOf(account);
        return binding.changeAt == 0 || block.timestamp >= binding.changeAt;
    }

    function _bidRemaining(BidRec storage rec) private view returns (uint256) {
        return settlement.remainingOf(rec.digest, rec.b.provider, rec.b.nonce, rec.b.capacity);
    }

    // =====================================================================================
    // A: the adversarial matcher
    // =====================================================================================

    /// @dev A settles up to two orders and two bids picked from every signed message (its own,
    /// H's, anyone's) with a price and units of its choosing, in a new round or a later batch.
    function settleAdversary(uint256 seed, uint256 priceSeed, uint256 shape) external {
        uint256 no = _orders.length;
        uint256 nb = _bids.length;
        if (no == 0 || nb == 0) return;
        uint256 k = 1 + shape % 2;
        uint256[] memory oi = new uint256[](k);
        uint256[] memory bi = new uint256[](k);
        OrderLib.Order[] memory orders = new OrderLib.Order[](k);
        bytes[] memory orderSigs = new bytes[](k);
        BidLib.Bid[] memory bids = new BidLib.Bid[](k);
        bytes[] memory bidSigs = new bytes[](k);
        UnderbidSettlement.Match[] memory matches = new UnderbidSettlement.Match[](k);
        uint256 price;
        for (uint256 j; j < k; ++j) {
            oi[j] = _pickFor(seed >> (j * 16), no, true);
            bi[j] = _pickFor(seed >> (j * 16 + 8), nb, false);
            orders[j] = _orders[oi[j]].o;
            orderSigs[j] = _orders[oi[j]].sig;
            bids[j] = _bids[bi[j]].b;
            bidSigs[j] = _bids[bi[j]].sig;
            matches[j] = UnderbidSettlement.Match(uint32(j), uint32(j), uint32(1 + (shape >> (8 + j)) % 2));
            if (bids[j].price > price) price = bids[j].price;
        }
        if (priceSeed % 4 == 0) price = _bound(priceSeed >> 2, 1, 6e6);
        MatcherRounds.MarketPrice[] memory prices = new MatcherRounds.MarketPrice[](1);
        prices[0] = MatcherRounds.MarketPrice(MARKET, uint64(price));
        uint64 last = settlement.lastRound(A);
        (, uint32 batches,) = settlement.rounds(A, last);
        UnderbidSettlement.BatchHeader memory header = (shape >> 4) % 3 == 0 && last != 0
            ? UnderbidSettlement.BatchHeader(last, batches, (shape >> 6) % 2 == 0, uint64(block.timestamp))
            : UnderbidSettlement.BatchHeader(last + 1, 0, (shape >> 6) % 2 == 0, uint64(block.timestamp));
        _topUpAdversary();
        vm.prank(A);
        try settlement.settle(header, orders, orderSigs, bids, bidSigs, matches, prices) {
            ++adversaryRounds;
            for (uint256 j; j < k; ++j) {
                if (
                    orders[j].matcher != A || bids[j].matcher != A || settlement.boundMatcherOf(orders[j].buyer) != A
                        || settlement.boundMatcherOf(bids[j].provider) != A
                ) foreignSettle = true;
            }
            _recordSettled(A, header.round, oi, bi, matches);
        } catch {}
    }

    /// @dev Keeps A bonded above the minimum after slashes, so it can keep settling.
    function _topUpAdversary() private {
        (uint128 bond,,,) = settlement.matchers(A);
        uint256 min = settlement.minMatcherBond();
        if (bond < min) {
            vm.prank(A);
            settlement.bondMatcher(2 * min, vm.addr(raPk));
        }
    }

    /// @dev Mostly A's own messages, sometimes anyone's.
    function _pickFor(uint256 seed, uint256 len, bool isOrder) private view returns (uint256) {
        uint256 start = (seed >> 2) % len;
        if (seed % 4 == 0) return start;
        for (uint256 t; t < len; ++t) {
            uint256 i = (start + t) % len;
            address matcher = isOrder ? _orders[i].o.matcher : _bids[i].b.matcher;
            if (matcher == A) return i;
        }
        return start;
    }

    /// @dev Ghost fills, the one-message-per-nonce rule, and the new leases.
    function _recordSettled(
        address matcher,
        uint64 round,
        uint256[] memory oi,
        uint256[] memory bi,
        UnderbidSettlement.Match[] memory matches
    ) private {
        for (uint256 j; j < matches.length; ++j) {
            OrderRec storage o = _orders[oi[matches[j].orderIndex]];
            BidRec storage b = _bids[bi[matches[j].bidIndex]];
            uint256 units = matches[j].units;
            ghostFilled[o.digest] += units;
            ghostFilled[b.digest] += units;
            _claimNonce(o.o.buyer, o.o.nonce, o.digest);
            _claimNonce(b.b.provider, b.b.nonce, b.digest);
            if (_leases.length < MAX_LEASES) {
                _leases.push(
                    LeaseRec({
                        id: settlement.leaseIdOf(matcher, round, o.digest, b.digest),
                        matcher: matcher,
                        round: round,
                        orderDigest: o.digest,
                        bid: bi[matches[j].bidIndex]
                    })
                );
            }
        }
        _checkTouched(oi, bi, matches);
    }

    /// @dev After a settle: every message it touched is within its units and the contract's
    /// records agree with the ghost fills.
    function _checkTouched(uint256[] memory oi, uint256[] memory bi, UnderbidSettlement.Match[] memory matches)
        private
    {
        for (uint256 j; j < matches.length; ++j) {
            OrderRec storage o = _orders[oi[matches[j].orderIndex]];
            BidRec storage b = _bids[bi[matches[j].bidIndex]];
            uint256 ofill = ghostFilled[o.digest];
            uint256 bf = ghostFilled[b.digest];
            (uint32 recorded,) = settlement.fills(b.digest);
            if (
                ofill > o.o.units || bf > b.b.capacity || recorded != bf
                    || settlement.remainingOf(o.digest, o.o.buyer, o.o.nonce, o.o.units) > o.o.units - ofill
                    || settlement.remainingOf(b.digest, b.b.provider, b.b.nonce, b.b.capacity) > b.b.capacity - bf
            ) fillMismatch = true;
        }
    }

    function _claimNonce(address signer, uint256 nonce, bytes32 digest) private {
        bytes32 key = keccak256(abi.encode(signer, nonce));
        bytes32 first = firstFiller[key];
        if (first == bytes32(0)) firstFiller[key] = digest;
        else if (first != digest) nonceShared = true;
    }

    // =====================================================================================
    // Leases
    // =====================================================================================

    function heartbeat(uint256 pick) external {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        bytes32[] memory ids = new bytes32[](1);
        ids[0] = l.id;
        vm.prank(_bids[l.bid].b.provider);
        settlement.heartbeat(ids);
    }

    function claim(uint256 pick) external {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        bytes32[] memory ids = new bytes32[](1);
        ids[0] = l.id;
        vm.prank(_bids[l.bid].b.provider);
        settlement.claim(ids);
    }

    function close(uint256 pick, uint256 byBuyer) external {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        address caller = byBuyer % 2 == 0 ? settlement.getLease(l.id).buyer : REPORTER;
        vm.prank(caller);
        try settlement.close(l.id) {} catch {}
    }

    function reportFault(uint256 pick) external {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        vm.prank(REPORTER);
        try settlement.reportFault(l.id) {} catch {}
    }

    // =====================================================================================
    // Challenges
    // =====================================================================================

    /// @dev A provider holding H's receipt challenges one of H's rounds, with a pricier witness
    /// lease if there is one, by the spare-unit proof or (with its own lease there) the swap proof.
    /// Every such challenge must revert: H clears exactly.
    function challengeHonest(uint256 bidPick, uint256 leasePick, uint256 mode) external {
        if (hReceipted.length == 0 || _leases.length == 0) return;
        BidRec storage rec = _bids[hReceipted[bidPick % hReceipted.length]];
        (bool found, LeaseRec storage w) = _witnessFor(H, rec, leasePick);
        if (!found) return;
        bytes32 own = mode % 2 == 1 ? _ownLease(H, rec.digest, w.round) : bytes32(0);
        ++challengesTried;
        MatcherCourt.Witness memory witness = MatcherCourt.Witness(w.round, w.orderDigest, _bids[w.bid].b);
        vm.prank(rec.b.provider);
        try court.challenge(rec.r, rec.rsig, rec.b, rec.sig, witness, own) {
            honestChallenged = true;
            honestChallengeInfo = abi.encode(rec.b, rec.r, witness, own, block.timestamp);
        } catch (bytes memory err) {
            bytes4 sel = bytes4(err);
            if (
                sel == IUnderbidErrors.BidFullyFilled.selector || sel == IUnderbidErrors.BidNonceTaken.selector
                    || sel == IUnderbidErrors.BidCancelled.selector
                    || sel == IUnderbidErrors.StakeDecreasedAfterReceipt.selector
                    || sel == IUnderbidErrors.ProviderLeftMatcher.selector
                    || sel == IUnderbidErrors.BidExpiredBeforeWitness.selector
                    || sel == IUnderbidErrors.SwapNotShorter.selector
            ) ++challengesPastWitness;
        }
    }

    /// @dev The same against A, whose rounds are arbitrary: success is allowed (and slashes A).
    function challengeAdversary(uint256 bidPick, uint256 leasePick, uint256 mode) external {
        if (aReceipted.length == 0 || _leases.length == 0) return;
        BidRec storage rec = _bids[aReceipted[bidPick % aReceipted.length]];
        (bool found, LeaseRec storage w) = _witnessFor(A, rec, leasePick);
        if (!found) return;
        bytes32 own = mode % 2 == 1 ? _ownLease(A, rec.digest, w.round) : bytes32(0);
        MatcherCourt.Witness memory witness = MatcherCourt.Witness(w.round, w.orderDigest, _bids[w.bid].b);
        vm.prank(rec.b.provider);
        try court.challenge(rec.r, rec.rsig, rec.b, rec.sig, witness, own) {
            ++adversaryChallenged;
        } catch {}
    }

    function _witnessFor(address matcher, BidRec storage rec, uint256 pick)
        private
        view
        returns (bool found, LeaseRec storage w)
    {
        uint256 len = _leases.length;
        w = _leases[pick % len];
        for (uint256 t; t < len; ++t) {
            LeaseRec storage l = _leases[(pick + t) % len];
            if (l.matcher == matcher && _bids[l.bid].b.price > rec.b.price && l.round >= rec.r.round) {
                return (true, l);
            }
        }
    }

    function _ownLease(address matcher, bytes32 bidDigest, uint64 round) private view returns (bytes32) {
        for (uint256 t; t < _leases.length; ++t) {
            LeaseRec storage l = _leases[t];
            if (l.matcher == matcher && l.round == round && _bids[l.bid].digest == bidDigest) return l.orderDigest;
        }
        return bytes32(0);
    }

    // =====================================================================================
    // Views for the invariants
    // =====================================================================================

    function _anyUser(uint256 who) private view returns (address) {
        return who % 2 == 0 ? buyers[(who / 2) % 3] : providers[(who / 2) % 3];
    }

    function _buyerSlot(address buyer) private view returns (uint256) {
        return buyer == buyers[0] ? 0 : (buyer == buyers[1] ? 1 : 2);
    }

    function _providerSlot(address provider) private view returns (uint256) {
        return provider == providers[0] ? 0 : (provider == providers[1] ? 1 : 2);
    }

    function _someMessage(uint256 pick) private view returns (address signer, uint256 nonce) {
        if (pick % 2 == 0 && _orders.length != 0) {
            OrderRec storage o = _orders[(pick >> 1) % _orders.length];
            return (o.o.buyer, o.o.nonce);
        }
        if (_bids.length != 0) {
            BidRec storage b = _bids[(pick >> 1) % _bids.length];
            return (b.b.provider, b.b.nonce);
        }
    }

    function actors() external view returns (address[] memory all) {
        all = new address[](9);
        for (uint256 i; i < 3; ++i) {
            all[i] = buyers[i];
            all[3 + i] = providers[i];
        }
        all[6] = H;
        all[7] = A;
        all[8] = REPORTER;
    }

    function orderCount() external view returns (uint256) {
        return _orders.length;
    }

    function bidCount() external view returns (uint256) {
        return _bids.length;
    }

    function orderAt(uint256 i) external view returns (bytes32 digest, address buyer, uint256 nonce, uint256 units) {
        OrderRec storage o = _orders[i];
        return (o.digest, o.o.buyer, o.o.nonce, o.o.units);
    }

    function bidAt(uint256 i) external view returns (bytes32 digest, address provider, uint256 nonce, uint256 capacity) {
        BidRec storage b = _bids[i];
        return (b.digest, b.b.provider, b.b.nonce, b.b.capacity);
    }
}
