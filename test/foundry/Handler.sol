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
/// the campaign calls only `step`, which picks one by weight (see there). Buyers and providers
/// 0 and 1 live with H, buyer and provider 2 with A (they switch now and then). The invariant
/// test reads the ghost state, the violation flags and the coverage counters.
contract Handler is CheatBase {
    bytes32 internal constant MARKET = keccak256("gpu=nvidia-h100;vram=80;gpus=8;region=us-east");
    uint256 internal constant STAKE_PER_UNIT = 100e18;
    uint256 internal constant MAX_MESSAGES = 200;
    /// Leases kept for heartbeat/claim/close/fault picks (a ring: the oldest are overwritten).
    uint256 internal constant MAX_LEASES = 128;
    /// H's most recent leases, the witnesses of challenges against H (a ring).
    uint256 internal constant H_RING = 32;
    /// Receipted bids kept as challengers (a ring per matcher).
    uint256 internal constant RECEIPT_RING = 64;

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
        uint64 closesAt;
        uint64 start;
        uint32 duration;
    }

    OrderRec[] internal _orders;
    BidRec[] internal _bids;
    LeaseRec[] internal _leases;
    uint256 internal leaseCount;
    LeaseRec[] internal _hRing;
    uint256 internal hLeaseCount;
    /// keccak256(matcher, round, bid digest) => the order of that bid's shortest lease in the round.
    mapping(bytes32 => bytes32) internal ownLeaseOrder;
    mapping(bytes32 => uint256) internal ownLeaseDuration;
    /// bid digest => its latest lease (round, order): the `FillProof` a challenger names for a
    /// bid that its first fill used up (such a bid has no fill record).
    mapping(bytes32 => MatcherCourt.FillProof) internal lastLeaseOf;
    /// Live messages H admitted (indices into _orders / _bids); every bid there has a receipt.
    uint256[] internal hOrders;
    uint256[] internal hBids;
    /// The latest RECEIPT_RING bids that got a receipt from H / from A.
    uint256[] internal hReceipted;
    uint256[] internal aReceipted;
    uint256 internal hReceiptCount;
    uint256 internal aReceiptCount;
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

    // ----- coverage counters (printed by afterInvariant, summed over the campaign's runs) -----
    uint256 public steps;
    uint256 public honestRounds;
    uint256 public honestLeases;
    /// @dev What open leases have paid their providers so far (each lease's accrual to its
    /// paid-until, from `getLease`), kept across every lease action: a claim leaves the buyer's
    /// `locked` alone, so the settlement holds free + locked minus this.
    uint256 public ghostPaidOpen;
    uint256 public adversaryRounds;
    uint256 public adversaryLeases;
    /// H batches that landed with other actions between their simulation and their inclusion,
    /// and of those, the ones with adversarial actions in between.
    uint256 public honestInterleaved;
    uint256 public honestAfterAdversary;
    uint256 public expiredBatches;
    /// Adversarial actions (withdrawal/unstake/cancel requests and their executions, binding
    /// switches, A's settles), and those made while an H batch was pending.
    uint256 public adversaryActions;
    uint256 public adversaryWhilePending;
    /// Challenges against H: attempted; reached the spare-unit or swap checks (passed the
    /// signature, witness-in-round, window, market, pricier and duration checks); of those by the
    /// swap proof; of those made right after an adversarial action (same or previous step).
    uint256 public challengesTried;
    uint256 public challengesPastWitness;
    uint256 public challengesDeepSwap;
    uint256 public challengesDeepAfterAdversary;
    /// Outcome of each challenge against H by error selector (bytes4(0): the challenge succeeded).
    mapping(bytes4 => uint256) public challengeOutcome;
    uint256 public adversaryChallenged;
    /// Messages H admitted; H simulations that found no order, no bid, or no trade.
    uint256 public ordersAdmitted;
    uint256 public bidsAdmitted;
    uint256 public simNoOrder;
    uint256 public simNoBid;
    uint256 public simNoTrade;
    uint256 internal lastAdversaryStep;
    uint256 internal pendingStep;
    uint256 internal pendingAdversary;

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
            settlement.bindMatcher(_home(i));
            vm.prank(providers[i]);
            settlement.bindMatcher(_home(i));
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

    /// @dev Accounts 0 and 1 (buyer and provider) live with H, account 2 with A.
    function _home(uint256 i) private view returns (address) {
        return i == 2 ? A : H;
    }

    function _prepareAccount(address who) private {
        vm.startPrank(who);
        ubt.approve(address(settlement), type(uint256).max);
        ubt.approve(address(bme), type(uint256).max);
        vm.stopPrank();
    }

    // =====================================================================================
    // The campaign's one entry point: an action picked by weight
    // =====================================================================================

    /// @dev One campaign call. `op` (hashed) picks the action (weights in percent below); the other
    /// seeds are its inputs. Weighted so that per 1,000 calls H settles some 20+ rounds, A 10+,
    /// and 20+ challenges against H reach the spare-unit or swap checks, part of them right after
    /// an adversarial action and part of H's batches landing after adversarial actions.
    function step(uint256 op, uint256 a, uint256 b, uint256 c, uint256 d, uint256 e) external {
        ++steps;
        // forge's inputs lean to small and edge values (0, 1, max, dictionary values): the
        // action and the matcher/nonce choice come from a hash, so the weights hold
        op = uint256(keccak256(abi.encode(op, a, b, steps)));
        uint256 w = op % 100;
        if (w < 15) newOrder(a, b, c, d, e, op >> 8);
        else if (w < 30) newBid(a, b, c, d, e, op >> 8);
        else if (w < 33) prepareHonest();
        else if (w < 36) landHonest();
        else if (w < 45) settleHonestNow();
        else if (w < 49) interleaveHonest(a, b, c);
        else if (w < 55) settleAdversary(a, b, c);
        else if (w < 61) warp(a);
        else if (w < 67) challengeHonest(a, b, c);
        else if (w < 72) adversaryThenChallenge(a, b, c, d);
        else if (w < 73) challengeAdversary(a, b, c);
        else if (w < 75) bindMatcher(a, b);
        else if (w < 77) requestWithdrawal(a, b);
        else if (w < 79) withdraw(a);
        else if (w < 80) deposit(a, b);
        else if (w < 82) requestUnstake(a, b);
        else if (w < 84) withdrawUnbonded(a);
        else if (w < 85) stake(a, b);
        else if (w < 87) requestCancel(a);
        else if (w < 88) cancelNonces(a);
        else if (w < 91) heartbeat(a);
        else if (w < 93) claim(a);
        else if (w < 94) close(a, b);
        else if (w < 95) reportFault(a);
        else if (w < 96) movePrice(a);
        else if (w < 98) mintCredits(a, b);
        else redeem(a, b);
    }

    /// @dev H simulates a batch, then 1-3 adversarial actions run (aimed at the accounts and
    /// messages of the batch half of the time, with time passing within the batch's deadline),
    /// then the batch lands: it must not revert.
    function interleaveHonest(uint256 seed, uint256 x, uint256 y) public {
        prepareHonest();
        if (!pendingActive) return;
        uint256 k = 1 + seed % 3;
        for (uint256 j; j < k; ++j) {
            uint256 s = uint256(keccak256(abi.encode(seed, x, y, j)));
            if (s % 2 == 0) attackPending(s >> 1);
            else adversaryAction(s >> 1, x >> (j * 8), y >> (j * 8));
        }
        landHonest();
    }

    /// @dev One adversarial action, then a challenge against H.
    function adversaryThenChallenge(uint256 seed, uint256 bidPick, uint256 leasePick, uint256 mode) public {
        if (seed % 3 == 0 && pendingActive) attackPending(seed >> 2);
        else adversaryAction(seed >> 2, bidPick >> 128, leasePick >> 128);
        challengeHonest(bidPick, leasePick, mode);
    }

    /// @dev A withdrawal, unstake or cancel request (or their execution), a binding switch, or a settle by A.
    function adversaryAction(uint256 seed, uint256 x, uint256 y) public {
        uint256 k = seed % 10;
        if (k == 0) requestWithdrawal(x, y);
        else if (k == 1) requestUnstake(x, y);
        else if (k == 2) requestCancel(x);
        else if (k == 3) bindMatcher(x, y);
        else if (k < 7) settleAdversary(x, y, seed >> 8);
        else if (k == 7) withdraw(x);
        else if (k == 8) withdrawUnbonded(x);
        else cancelNonces(x);
    }

    /// @dev Aims at H's pending batch: its buyer asks to withdraw all free escrow, its provider
    /// to unstake all available stake, a signer asks to cancel the message's nonce or switches
    /// its matcher, or time passes (within the batch's deadline) and announced withdrawals,
    /// unstakes and cancellations are executed.
    function attackPending(uint256 seed) public {
        if (!pendingActive) return;
        uint256 k = seed % 6;
        OrderLib.Order storage o = _orders[pendingOrders[(seed >> 8) % pendingOrders.length]].o;
        BidLib.Bid storage b = _bids[pendingBids[(seed >> 16) % pendingBids.length]].b;
        uint256[] memory nonces = new uint256[](1);
        _adversary();
        if (k == 0) {
            (uint128 free,) = settlement.escrowOf(o.buyer);
            vm.prank(o.buyer);
            settlement.requestWithdrawal(uint256(free) + 1);
        } else if (k == 1) {
            uint256 available = settlement.availableStake(b.provider);
            if (available == 0) return;
            vm.prank(b.provider);
            settlement.requestUnstake(available);
        } else if (k == 2) {
            nonces[0] = (seed >> 24) % 2 == 0 ? o.nonce : b.nonce;
            vm.prank((seed >> 24) % 2 == 0 ? o.buyer : b.provider);
            settlement.requestCancel(nonces);
        } else if (k == 3) {
            // mostly a request to stay with H (still a pending change H must honour), else to leave
            uint256 t = (seed >> 25) % 4;
            vm.prank((seed >> 24) % 2 == 0 ? o.buyer : b.provider);
            settlement.bindMatcher(t == 0 ? A : (t == 1 ? address(0) : H));
        } else {
            if (block.timestamp < pendingDeadline) vm.warp(block.timestamp + _bound(seed >> 32, 1, pendingDeadline - block.timestamp));
            vm.prank(o.buyer);
            try settlement.withdraw() {} catch {}
            vm.prank(b.provider);
            try settlement.withdrawUnbonded() {} catch {}
            nonces[0] = o.nonce;
            vm.prank(o.buyer);
            try settlement.cancelNonces(nonces) {} catch {}
            nonces[0] = b.nonce;
            vm.prank(b.provider);
            try settlement.cancelNonces(nonces) {} catch {}
        }
    }

    function _adversary() private {
        ++adversaryActions;
        lastAdversaryStep = steps;
        if (pendingActive) {
            ++adversaryWhilePending;
            ++pendingAdversary;
        }
    }

    // =====================================================================================
    // Tokens: oracle moves, BME mint and redeem
    // =====================================================================================

    function movePrice(uint256 price) public {
        price = _bound(price, 0.5e8, 5e8);
        vm.prank(admin);
        oracle.setPrice(price);
    }

    function mintCredits(uint256 who, uint256 ubtIn) public {
        address account = _anyUser(who);
        ubtIn = _bound(ubtIn, 1e18, 200e18);
        uint256 supply = ubt.totalSupply();
        vm.prank(account);
        try bme.mintCredits(ubtIn, 0) {} catch {}
        _trackSupply(supply);
    }

    function redeem(uint256 who, uint256 amount) public {
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

    function deposit(uint256 who, uint256 amount) public {
        address buyer = buyers[who % 3];
        uint256 balance = credit.balanceOf(buyer);
        if (balance == 0) return;
        amount = _bound(amount, 1, balance);
        vm.prank(buyer);
        settlement.deposit(amount);
    }

    function requestWithdrawal(uint256 who, uint256 amount) public {
        address buyer = buyers[who % 3];
        (uint128 free,) = settlement.escrowOf(buyer);
        // mostly a part of the free escrow (so buyers keep trading), sometimes all of it or more
        amount = amount % 4 == 0 ? _bound(amount >> 2, 1, uint256(free) + 1e6) : _bound(amount >> 2, 1, free / 4 + 1);
        _adversary();
        vm.prank(buyer);
        settlement.requestWithdrawal(amount);
    }

    function withdraw(uint256 who) public {
        _adversary();
        vm.prank(buyers[who % 3]);
        try settlement.withdraw() {} catch {}
    }

    function stake(uint256 who, uint256 amount) public {
        amount = _bound(amount, 1e18, 500e18);
        vm.prank(providers[who % 3]);
        settlement.stake(amount);
    }

    function requestUnstake(uint256 who, uint256 amount) public {
        address provider = providers[who % 3];
        uint256 available = settlement.availableStake(provider);
        if (available == 0) return;
        // mostly up to 2 units' stake (so providers keep trading), sometimes all of it
        amount = amount % 4 == 0 ? _bound(amount >> 2, 1, available) : _bound(amount >> 2, 1, 2 * STAKE_PER_UNIT);
        if (amount > available) amount = available;
        _adversary();
        vm.prank(provider);
        settlement.requestUnstake(amount);
    }

    function withdrawUnbonded(uint256 who) public {
        _adversary();
        vm.prank(providers[who % 3]);
        try settlement.withdrawUnbonded() {} catch {}
    }

    /// @dev Mostly back to the account's home matcher (a switch request even when already bound
    /// there), sometimes to the other matcher, sometimes unbound.
    function bindMatcher(uint256 who, uint256 which) public {
        uint256 i = (who / 2) % 3;
        address account = who % 2 == 0 ? buyers[i] : providers[i];
        uint256 w = which % 8;
        address target = w < 6 ? _home(i) : (w < 7 ? (_home(i) == H ? A : H) : address(0));
        _adversary();
        vm.prank(account);
        settlement.bindMatcher(target);
    }

    function requestCancel(uint256 pick) public {
        (address signer, uint256 nonce) = _someMessage(pick);
        if (signer == address(0)) return;
        uint256[] memory nonces = new uint256[](1);
        nonces[0] = nonce;
        _adversary();
        vm.prank(signer);
        settlement.requestCancel(nonces);
    }

    function cancelNonces(uint256 pick) public {
        (address signer, uint256 nonce) = _someMessage(pick);
        if (signer == address(0)) return;
        uint256[] memory nonces = new uint256[](1);
        nonces[0] = nonce;
        _adversary();
        vm.prank(signer);
        try settlement.cancelNonces(nonces) {} catch {}
    }

    function warp(uint256 dt) public {
        dt = dt % 10 == 0 ? _bound(dt >> 8, 1, 1_800) : _bound(dt >> 8, 1, 120);
        vm.warp(block.timestamp + dt);
    }

    // =====================================================================================
    // Signed messages
    // =====================================================================================

    /// @dev Mostly the matcher the account is bound to, one time in eight the other one. An
    /// unbound account with no change pending first binds to its home matcher (at once).
    function _matcherFor(address account, uint256 i, uint256 seed) private returns (bool adversary) {
        address bound = settlement.boundMatcherOf(account);
        if (bound == address(0)) {
            bound = _home(i);
            if (settlement.bindingOf(account).changeAt <= block.timestamp) {
                vm.prank(account);
                settlement.bindMatcher(bound);
            }
        }
        adversary = bound == A;
        if (seed % 8 == 0) adversary = !adversary;
    }

    /// @dev A buyer signs an order for H (admitted if H would take it) or for A.
    function newOrder(uint256 who, uint256 units, uint256 duration, uint256 maxPrice, uint256 life, uint256 forA)
        public
    {
        if (_orders.length >= MAX_MESSAGES) return;
        uint256 i = who % 3;
        bool adversary = _matcherFor(buyers[i], i, forA);
        OrderLib.Order memory o = OrderLib.Order({
            buyer: buyers[i],
            matcher: adversary ? A : H,
            market: MARKET,
            units: uint32(_bound(units, 1, 2)),
            duration: uint32(_bound(duration, 10, 50) * 60),
            maxPrice: uint64(_bound(maxPrice, 15, 50) * 1e5),
            deadline: uint64(block.timestamp + _bound(life, 60, 7_200)),
            nonce: _nonce(forA)
        });
        _topUpEscrow(buyers[i]);
        bytes32 digest = settlement.hashOrder(o);
        _orders.push(OrderRec(o, _sig(buyerPk[i], digest), digest));
        if (adversary || !_orderLive(_orders.length - 1)) return;
        if (hOrders.length == 3) _prune();
        ++ordersAdmitted;
        if (hOrders.length < 3) {
            hOrders.push(_orders.length - 1);
        } else {
            // H's order book is full: the new order replaces the oldest (orders carry no
            // receipt, so H may drop one; bids it receipted it must keep)
            uint256 oldest;
            for (uint256 j = 1; j < 3; ++j) {
                if (hOrders[j] < hOrders[oldest]) oldest = j;
            }
            hOrders[oldest] = _orders.length - 1;
        }
    }

    /// @dev A provider signs a bid for H (admitted with a receipt if H would take it) or for A
    /// (A signs a receipt for every bid).
    function newBid(uint256 who, uint256 capacity, uint256 price, uint256 maxDuration, uint256 life, uint256 forA)
        public
    {
        if (_bids.length >= MAX_MESSAGES) return;
        if (hBids.length == 3) _prune();
        uint256 i = who % 3;
        bool adversary = _matcherFor(providers[i], i, forA);
        BidLib.Bid memory b = BidLib.Bid({
            provider: providers[i],
            matcher: adversary ? A : H,
            market: MARKET,
            capacity: uint32(_bound(capacity, 1, 2)),
            price: uint64(_bound(price, 10, 35) * 1e5),
            maxDuration: uint32(_bound(maxDuration, 15, 60) * 60),
            deadline: uint64(block.timestamp + _bound(life, 60, 3_600)),
            nonce: _nonce(forA)
        });
        _topUpStake(b.provider);
        bytes32 digest = settlement.hashBid(b);
        uint256 idx = _bids.length;
        _bids.push();
        BidRec storage rec = _bids[idx];
        rec.b = b;
        rec.sig = _sig(providerPk[i], digest);
        rec.digest = digest;
        if (adversary) {
            _receipt(rec, A, settlement.lastRound(A) + 1, raPk);
            _ring(aReceipted, aReceiptCount++, idx);
        } else if (hBids.length < 3 && _bidLive(idx) && _stakeCovers(b.provider, b.capacity)) {
            // The receipt admits the bid to H's next round not yet simulated.
            _receipt(rec, H, settlement.lastRound(H) + (pendingActive ? 2 : 1), rhPk);
            hBids.push(idx);
            ++bidsAdmitted;
            _ring(hReceipted, hReceiptCount++, idx);
        }
    }

    /// @dev A buyer about to order deposits credits if its available escrow is low (withdrawals
    /// and leases drain it), a provider about to bid stakes more if its available stake is below
    /// 3 units (announced unstakes keep it unavailable until withdrawn).
    function _topUpEscrow(address buyer) private {
        if (settlement.availableEscrow(buyer) >= 40e6) return;
        uint256 amount = credit.balanceOf(buyer);
        if (amount > 100e6) amount = 100e6;
        if (amount == 0) return;
        vm.prank(buyer);
        settlement.deposit(amount);
    }

    function _topUpStake(address provider) private {
        if (settlement.availableStake(provider) >= 3 * STAKE_PER_UNIT) return;
        vm.prank(provider);
        settlement.stake(5 * STAKE_PER_UNIT);
    }

    function _ring(uint256[] storage ring, uint256 count, uint256 value) private {
        if (ring.length < RECEIPT_RING) ring.push(value);
        else ring[count % RECEIPT_RING] = value;
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
    /// capacity of all its live admitted bids plus this one, plus what H's batch in flight will
    /// lock for its bids no longer admitted (e.g. their nonce's cancellation was requested since).
    function _stakeCovers(address provider, uint256 capacity) private view returns (bool) {
        uint256 units = capacity;
        for (uint256 j; j < hBids.length; ++j) {
            BidRec storage rec = _bids[hBids[j]];
            if (rec.b.provider == provider) units += _bidRemaining(rec);
        }
        if (pendingActive) {
            for (uint256 j; j < pendingMatches.length; ++j) {
                uint256 idx = pendingBids[pendingMatches[j].bidIndex];
                if (_bids[idx].b.provider != provider) continue;
                bool admitted;
                for (uint256 t; t < hBids.length; ++t) {
                    if (hBids[t] == idx) admitted = true;
                }
                if (!admitted) units += pendingMatches[j].units;
            }
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
        if (n == 0) ++simNoOrder;
        else if (m == 0) ++simNoBid;
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
        if (inst.bestGains == 0) {
            ++simNoTrade;
            return;
        }

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
        pendingStep = steps;
        pendingAdversary = 0;
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
            if (steps != pendingStep || pendingAdversary != 0) ++honestInterleaved;
            if (pendingAdversary != 0) ++honestAfterAdversary;
            _recordSettled(H, pendingRound, pendingOrders, pendingBids, matches);
        } catch (bytes memory err) {
            honestSettleReverted = true;
            honestSettleError = err;
        }
    }

    /// @dev Simulation and inclusion in the same block.
    function settleHonestNow() public {
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
    function settleAdversary(uint256 seed, uint256 priceSeed, uint256 shape) public {
        uint256 no = _orders.length;
        uint256 nb = _bids.length;
        if (no == 0 || nb == 0) return;
        uint256 k = shape % 4 == 0 ? 2 : 1;
        uint256[] memory oi = new uint256[](k);
        uint256[] memory bi = new uint256[](k);
        for (uint256 j; j < k; ++j) {
            oi[j] = _pickFor(seed >> (j * 16), no, true, 0, 0);
            OrderLib.Order storage o = _orders[oi[j]].o;
            bi[j] = _pickFor(seed >> (j * 16 + 8), nb, false, o.duration, o.maxPrice);
        }
        if (k == 2 && (oi[1] == oi[0] || bi[1] == bi[0])) {
            // the same message twice would only be DuplicateNonce: settle one match then
            k = 1;
            assembly ("memory-safe") {
                mstore(oi, 1)
                mstore(bi, 1)
            }
        }
        _settleAdversary(oi, bi, priceSeed, shape);
    }

    function _settleAdversary(uint256[] memory oi, uint256[] memory bi, uint256 priceSeed, uint256 shape) private {
        uint256 k = oi.length;
        OrderLib.Order[] memory orders = new OrderLib.Order[](k);
        bytes[] memory orderSigs = new bytes[](k);
        BidLib.Bid[] memory bids = new BidLib.Bid[](k);
        bytes[] memory bidSigs = new bytes[](k);
        UnderbidSettlement.Match[] memory matches = new UnderbidSettlement.Match[](k);
        for (uint256 j; j < k; ++j) {
            orders[j] = _orders[oi[j]].o;
            orderSigs[j] = _orders[oi[j]].sig;
            bids[j] = _bids[bi[j]].b;
            bidSigs[j] = _bids[bi[j]].sig;
            // mostly one unit, sometimes two
            matches[j] = UnderbidSettlement.Match(uint32(j), uint32(j), (shape >> (8 + 2 * j)) % 4 == 0 ? 2 : 1);
        }
        MatcherRounds.MarketPrice[] memory prices = new MatcherRounds.MarketPrice[](1);
        prices[0] = MatcherRounds.MarketPrice(MARKET, uint64(_adversaryPrice(orders, bids, priceSeed)));
        uint64 last = settlement.lastRound(A);
        (, uint32 batches,) = settlement.rounds(A, last);
        UnderbidSettlement.BatchHeader memory header = (shape >> 4) % 6 == 0 && last != 0
            ? UnderbidSettlement.BatchHeader(last, batches, (shape >> 6) % 2 == 0, uint64(block.timestamp))
            : UnderbidSettlement.BatchHeader(last + 1, 0, (shape >> 6) % 2 == 0, uint64(block.timestamp));
        _topUpAdversary();
        _adversary();
        vm.prank(A);
        try settlement.settle(header, orders, orderSigs, bids, bidSigs, matches, prices) {
            ++adversaryRounds;
            adversaryLeases += k;
            for (uint256 j; j < k; ++j) {
                if (
                    orders[j].matcher != A || bids[j].matcher != A || settlement.boundMatcherOf(orders[j].buyer) != A
                        || settlement.boundMatcherOf(bids[j].provider) != A
                ) foreignSettle = true;
            }
            _recordSettled(A, header.round, oi, bi, matches);
        } catch {}
    }

    /// @dev Mostly a price both sides accept (between the dearest bid and the cheapest order's
    /// maximum), else the dearest bid's, one time in eight anything.
    function _adversaryPrice(OrderLib.Order[] memory orders, BidLib.Bid[] memory bids, uint256 priceSeed)
        private
        pure
        returns (uint256 price)
    {
        uint256 maxPrice = type(uint256).max;
        for (uint256 j; j < orders.length; ++j) {
            if (bids[j].price > price) price = bids[j].price;
            if (orders[j].maxPrice < maxPrice) maxPrice = orders[j].maxPrice;
        }
        if (price < maxPrice && priceSeed % 2 == 0) price = _bound(priceSeed >> 2, price, maxPrice);
        if (priceSeed % 8 == 1) price = _bound(priceSeed >> 3, 1, 6e6);
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

    /// @dev Mostly a live message of A's (naming A, from an account bound to A, not expired,
    /// with units left; a bid that also accepts the order's duration and maximum price), else
    /// any naming A; one time in eight anyone's.
    function _pickFor(uint256 seed, uint256 len, bool isOrder, uint256 duration, uint256 maxPrice)
        private
        view
        returns (uint256)
    {
        uint256 start = (seed >> 3) % len;
        if (seed % 8 == 0) return start;
        uint256 named = type(uint256).max;
        for (uint256 t; t < len; ++t) {
            uint256 i = (start + t) % len;
            if (isOrder) {
                OrderRec storage o = _orders[i];
                if (o.o.matcher != A) continue;
                if (named == type(uint256).max) named = i;
                if (
                    o.o.deadline >= block.timestamp && settlement.boundMatcherOf(o.o.buyer) == A
                        && settlement.remainingOf(o.digest, o.o.buyer, o.o.nonce, o.o.units) != 0
                ) return i;
            } else {
                BidRec storage b = _bids[i];
                if (b.b.matcher != A) continue;
                if (named == type(uint256).max) named = i;
                if (
                    b.b.deadline >= block.timestamp && b.b.maxDuration >= duration && b.b.price <= maxPrice
                        && settlement.boundMatcherOf(b.b.provider) == A
                        && settlement.remainingOf(b.digest, b.b.provider, b.b.nonce, b.b.capacity) != 0
                ) return i;
            }
        }
        return named == type(uint256).max ? start : named;
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
            bytes32 id = settlement.leaseIdOf(matcher, round, o.digest, b.digest);
            (uint256 closesAt,,) = settlement.challengeTermsOf(id);
            LeaseRec memory rec = LeaseRec({
                id: id,
                matcher: matcher,
                round: round,
                orderDigest: o.digest,
                bid: bi[matches[j].bidIndex],
                closesAt: uint64(closesAt),
                start: uint64(block.timestamp),
                duration: o.o.duration
            });
            if (_leases.length < MAX_LEASES) _leases.push(rec);
            else _leases[leaseCount % MAX_LEASES] = rec;
            ++leaseCount;
            if (matcher == H) {
                if (_hRing.length < H_RING) _hRing.push(rec);
                else _hRing[hLeaseCount % H_RING] = rec;
                ++hLeaseCount;
            }
            lastLeaseOf[b.digest] = MatcherCourt.FillProof(round, o.digest);
            bytes32 key = keccak256(abi.encode(matcher, round, b.digest));
            uint256 shortest = ownLeaseDuration[key];
            if (shortest == 0 || o.o.duration < shortest) {
                ownLeaseDuration[key] = o.o.duration;
                ownLeaseOrder[key] = o.digest;
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
            // A bid used up by its first fill keeps no record (its nonce bits say it all); a
            // record missed for a partial fill would have shown as a mismatch at that settle.
            bool recordOk = recorded == bf || (recorded == 0 && bf == b.b.capacity);
            if (
                ofill > o.o.units || bf > b.b.capacity || !recordOk
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

    function heartbeat(uint256 pick) public {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        bytes32[] memory ids = new bytes32[](1);
        ids[0] = l.id;
        vm.prank(_bids[l.bid].b.provider);
        settlement.heartbeat(ids);
    }

    function claim(uint256 pick) public {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        bytes32[] memory ids = new bytes32[](1);
        ids[0] = l.id;
        uint256 before = _paidOpen(l.id);
        vm.prank(_bids[l.bid].b.provider);
        settlement.claimRevenue(ids);
        ghostPaidOpen = ghostPaidOpen + _paidOpen(l.id) - before;
    }

    function close(uint256 pick, uint256 byBuyer) public {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        address caller = byBuyer % 2 == 0 ? settlement.getLease(l.id).buyer : REPORTER;
        uint256 before = _paidOpen(l.id);
        vm.prank(caller);
        try settlement.close(l.id) {} catch {}
        ghostPaidOpen = ghostPaidOpen + _paidOpen(l.id) - before;
    }

    function reportFault(uint256 pick) public {
        if (_leases.length == 0) return;
        LeaseRec storage l = _leases[pick % _leases.length];
        uint256 before = _paidOpen(l.id);
        vm.prank(REPORTER);
        try settlement.reportFault(l.id) {} catch {}
        ghostPaidOpen = ghostPaidOpen + _paidOpen(l.id) - before;
    }

    /// @dev What lease `id` has paid so far while open (zero once closed), from `getLease`.
    function _paidOpen(bytes32 id) internal view returns (uint256) {
        UnderbidSettlement.Lease memory l = settlement.getLease(id);
        if (l.closed) return 0;
        uint256 until = l.paidUntil == 0 ? l.start : l.paidUntil;
        return uint256(l.units) * l.price * (until - l.start) / 3_600;
    }

    // =====================================================================================
    // Challenges
    // =====================================================================================

    /// @dev A provider holding H's receipt challenges one of H's rounds. Mostly the interesting
    /// pairs: a witness lease of one of H's recent rounds, still open for challenge, and a bid H
    /// receipted for that round or an earlier one, cheaper, accepting the witness's duration (so
    /// the challenge reaches the spare-unit or swap checks), preferring bids partly filled or
    /// filled again in a later round; by the swap proof when the bid has its own lease in the
    /// witness round. One time in eight any receipted bid against any pricier lease of H (the
    /// shallow checks). Every such challenge must revert: H clears exactly.
    function challengeHonest(uint256 bidPick, uint256 leasePick, uint256 mode) public {
        if (mode % 8 == 7) {
            _challengeHonestAny(bidPick, leasePick, mode >> 3);
            return;
        }
        uint256 nl = _hRing.length;
        uint256 nr = hReceipted.length;
        if (nl == 0 || nr == 0) return;
        bool preferFilled = (mode >> 1) % 2 == 0;
        uint256 first = leasePick % nl;
        for (uint256 t; t < nl; ++t) {
            LeaseRec storage w = _hRing[(first + t) % nl];
            if (block.timestamp > w.closesAt) continue;
            (bool found, uint256 idx) = _cheaperBid(w, bidPick % nr, preferFilled, mode % 2 == 1);
            if (!found) continue;
            BidRec storage rec = _bids[idx];
            bytes32 own = mode % 2 == 1 ? ownLeaseOrder[keccak256(abi.encode(H, w.round, rec.digest))] : bytes32(0);
            _challengeH(rec, w, own);
            return;
        }
    }

    /// @dev A receipted bid of H cheaper than witness `w`'s, receipted for its round or earlier,
    /// that accepts its duration; with `preferOwnLease` one with its own lease in the witness
    /// round (for the swap proof), else with `preferFilled` one already filled (partly, or again
    /// in a later round), if there is one.
    function _cheaperBid(LeaseRec storage w, uint256 first, bool preferFilled, bool preferOwnLease)
        private
        view
        returns (bool found, uint256 idx)
    {
        uint256 nr = hReceipted.length;
        uint64 price = _bids[w.bid].b.price;
        uint256 best;
        for (uint256 t; t < nr; ++t) {
            uint256 i = hReceipted[(first + t) % nr];
            BidRec storage rec = _bids[i];
            if (rec.b.price >= price || rec.r.round > w.round || rec.b.maxDuration < w.duration) continue;
            // score: 1 any, 2 still valid when the witness lease opened, 3 and (with
            // preferFilled) already filled; with preferOwnLease 3 for a bid with its own lease there
            uint256 score = 1;
            if (preferOwnLease) {
                if (ownLeaseDuration[keccak256(abi.encode(H, w.round, rec.digest))] != 0) score = 3;
            } else if (rec.b.deadline >= w.start) {
                score = 2;
                if (preferFilled) {
                    (uint32 filled,) = settlement.fills(rec.digest);
                    if (filled != 0) score = 3;
                }
            }
            if (score > best) (best, found, idx) = (score, true, i);
            if (score == 3 || (score == 2 && !preferFilled)) return (found, idx);
        }
    }

    /// @dev The old, broad pick: any receipted bid of H against any pricier lease of H.
    function _challengeHonestAny(uint256 bidPick, uint256 leasePick, uint256 mode) private {
        if (hReceipted.length == 0 || _leases.length == 0) return;
        BidRec storage rec = _bids[hReceipted[bidPick % hReceipted.length]];
        (bool found, LeaseRec storage w) = _witnessFor(H, rec, leasePick);
        if (!found) return;
        bytes32 own = mode % 2 == 1 ? ownLeaseOrder[keccak256(abi.encode(H, w.round, rec.digest))] : bytes32(0);
        _challengeH(rec, w, own);
    }

    function _challengeH(BidRec storage rec, LeaseRec storage w, bytes32 own) private {
        ++challengesTried;
        MatcherCourt.Witness memory witness = MatcherCourt.Witness(w.round, w.orderDigest, _bids[w.bid].b);
        vm.prank(rec.b.provider);
        try court.challenge(rec.r, rec.rsig, rec.b, rec.sig, witness, own, lastLeaseOf[rec.digest]) {
            ++challengeOutcome[bytes4(0)];
            honestChallenged = true;
            honestChallengeInfo = abi.encode(rec.b, rec.r, witness, own, lastLeaseOf[rec.digest], block.timestamp);
        } catch (bytes memory err) {
            bytes4 sel = bytes4(err);
            ++challengeOutcome[sel];
            if (
                sel == IUnderbidErrors.BidFullyFilled.selector || sel == IUnderbidErrors.BidNonceTaken.selector
                    || sel == IUnderbidErrors.BidCancelled.selector
                    || sel == IUnderbidErrors.StakeDecreasedAfterReceipt.selector
                    || sel == IUnderbidErrors.ProviderLeftMatcher.selector
                    || sel == IUnderbidErrors.BidExpiredBeforeWitness.selector
                    || sel == IUnderbidErrors.SwapNotShorter.selector
            ) {
                ++challengesPastWitness;
                if (own != bytes32(0)) ++challengesDeepSwap;
                if (steps != 0 && lastAdversaryStep + 1 >= steps) ++challengesDeepAfterAdversary;
            }
        }
    }

    /// @dev The same against A, whose rounds are arbitrary: success is allowed (and slashes A).
    function challengeAdversary(uint256 bidPick, uint256 leasePick, uint256 mode) public {
        if (aReceipted.length == 0 || _leases.length == 0) return;
        BidRec storage rec = _bids[aReceipted[bidPick % aReceipted.length]];
        (bool found, LeaseRec storage w) = _witnessFor(A, rec, leasePick);
        if (!found) return;
        bytes32 own = mode % 2 == 1 ? ownLeaseOrder[keccak256(abi.encode(A, w.round, rec.digest))] : bytes32(0);
        MatcherCourt.Witness memory witness = MatcherCourt.Witness(w.round, w.orderDigest, _bids[w.bid].b);
        vm.prank(rec.b.provider);
        try court.challenge(rec.r, rec.rsig, rec.b, rec.sig, witness, own, lastLeaseOf[rec.digest]) {
            ++adversaryChallenged;
        } catch {}
    }

    function _witnessFor(address matcher, BidRec storage rec, uint256 pick)
        private
        view
        returns (bool found, LeaseRec storage w)
    {
        uint256 len = _leases.length;
        uint256 first = pick % len;
        w = _leases[first];
        for (uint256 t; t < len; ++t) {
            LeaseRec storage l = _leases[(first + t) % len];
            if (l.matcher == matcher && _bids[l.bid].b.price > rec.b.price && l.round >= rec.r.round) {
                return (true, l);
            }
        }
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
