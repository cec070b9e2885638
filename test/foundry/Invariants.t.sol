// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Protocol} from "./Protocol.sol";
import {Handler} from "./Handler.sol";
import {IUnderbidErrors} from "../../contracts/interfaces/IUnderbidErrors.sol";

/// @dev The invariant campaign: forge calls random sequences of the Handler's actions and checks
/// `invariant_protocol` after every call. Run: `forge test --match-contract InvariantsTest`.
/// One invariant function checks every property, so each property is checked after every one of
/// the campaign's calls (runs x depth in foundry.toml) instead of one campaign per property.
contract InvariantsTest is Protocol {
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    Handler internal handler;

    function setUp() public {
        _deploy();
        handler = new Handler(ubt, credit, oracle, bme, settlement, address(this));
        address[] memory actors = handler.actors();
        for (uint256 i; i < 8; ++i) {
            ubt.transfer(actors[i], 2_000_000e18);
        }
        handler.init();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// @dev Only `step`: it picks the action by weight (see Handler.step).
    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[] memory s = new bytes4[](1);
        s[0] = Handler.step.selector;
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector(address(handler), s);
    }

    function invariant_protocol() public view {
        _creditConservation();
        _ubtConservation();
        _stake();
        _fills();
        require(!handler.honestChallenged(), "an exactly cleared round of H was challenged successfully");
        require(!handler.honestSettleReverted(), "H's simulated batch reverted on inclusion");
        require(!handler.nonceShared(), "two messages with one (signer, nonce) both filled");
        require(!handler.fillMismatch(), "a settle overfilled or mis-recorded a message");
        require(!handler.foreignSettle(), "A settled a message or account that is not its own");
    }

    /// @dev credit supply = escrow held by the settlement + credits held by users; the
    /// settlement's balance is exactly the escrow it records, less what open leases have already
    /// paid (a lease's whole cost stays in `locked` until it closes; the handler sums each open
    /// lease's paid part from `getLease` after every lease action).
    function _creditConservation() private view {
        address[] memory actors = handler.actors();
        uint256 escrow;
        uint256 held;
        for (uint256 i; i < actors.length; ++i) {
            (uint128 free, uint128 locked) = settlement.escrowOf(actors[i]);
            escrow += uint256(free) + locked;
            held += credit.balanceOf(actors[i]);
        }
        uint256 paidOpen = handler.ghostPaidOpen();
        require(credit.balanceOf(address(settlement)) + paidOpen == escrow, "settlement credits != escrow - paid open");
        require(credit.totalSupply() + paidOpen == escrow + held, "credit supply != escrow - paid open + user credits");
    }

    /// @dev UBT supply = genesis + BME minted - BME burned - slashing burned; the settlement
    /// holds exactly all stake and matcher bonds.
    function _ubtConservation() private view {
        require(
            ubt.totalSupply() + handler.bmeBurned() + settlement.totalSlashedBurned() == GENESIS + handler.bmeMinted(),
            "UBT supply != genesis + minted - burned - slashed"
        );
        uint256 held;
        for (uint256 i; i < 3; ++i) {
            (uint128 staked,,,,,) = settlement.providers(handler.providers(i));
            held += staked;
        }
        (uint128 bondH,,,) = settlement.matchers(handler.H());
        (uint128 bondA,,,) = settlement.matchers(handler.A());
        held += uint256(bondH) + bondA;
        require(ubt.balanceOf(address(settlement)) == held, "settlement UBT != stake + bonds");
    }

    function _stake() private view {
        for (uint256 i; i < 3; ++i) {
            (uint128 staked, uint128 locked,,,,) = settlement.providers(handler.providers(i));
            require(locked <= staked, "locked > staked");
        }
    }

    uint256 internal constant WINDOW = 8;

    /// @dev No message fills beyond its units or capacity; the contract's records agree. Checks a
    /// window of 8 orders and 8 bids that moves with time and rounds (every message is visited
    /// many times per run; the handler checks the messages a settle touched right after it).
    function _fills() private view {
        uint256 n = handler.orderCount();
        uint256 from = block.timestamp + handler.honestRounds();
        for (uint256 t; t < n && t < WINDOW; ++t) {
            (bytes32 digest, address buyer, uint256 nonce, uint256 units) = handler.orderAt((from + t) % n);
            uint256 filled = handler.ghostFilled(digest);
            require(filled <= units, "order overfilled");
            require(settlement.remainingOf(digest, buyer, nonce, units) <= units - filled, "order remaining too high");
        }
        n = handler.bidCount();
        for (uint256 t; t < n && t < WINDOW; ++t) {
            (bytes32 digest, address provider, uint256 nonce, uint256 capacity) = handler.bidAt((from + t) % n);
            uint256 filled = handler.ghostFilled(digest);
            require(filled <= capacity, "bid overfilled");
            (uint32 recorded,) = settlement.fills(digest);
            // A bid used up by its first fill keeps no record (its nonce bits are claimed and void).
            require(recorded == filled || (recorded == 0 && filled == capacity), "bid fill record != fills");
            require(settlement.remainingOf(digest, provider, nonce, capacity) <= capacity - filled, "bid remaining too high");
        }
    }

    /// @dev Runs after each of the campaign's runs: adds this run's coverage counters to the
    /// campaign's totals (kept in environment variables of the forge process, the one thing that
    /// outlives a run's state) and prints the totals so far; forge shows the last run's print
    /// (the whole campaign) with -vv, and scripts/assurance.sh echoes the `coverage:` lines.
    function afterInvariant() public {
        // forge calls this once more after the last run, on that run's state: count each run once
        uint256 fingerprint = uint256(
            keccak256(abi.encode(block.timestamp, handler.steps(), handler.challengesTried(), handler.adversaryActions()))
        );
        fresh = vm.envOr("UNDERBID_COVERAGE_RUN", uint256(0)) != fingerprint;
        vm.setEnv("UNDERBID_COVERAGE_RUN", vm.toString(fingerprint));
        uint256 runs = _add("runs", 1);
        _log(string.concat("coverage: campaign totals after ", vm.toString(runs), " runs"));
        _count("handler calls", handler.steps());
        _count("H rounds settled (each with leases)", handler.honestRounds());
        _count("H leases opened", handler.honestLeases());
        _count("A rounds settled", handler.adversaryRounds());
        _count("A leases opened", handler.adversaryLeases());
        _count("H batches landed with other actions between simulation and inclusion", handler.honestInterleaved());
        _count("  of which with adversarial actions in between", handler.honestAfterAdversary());
        _count("H batches dropped past their deadline", handler.expiredBatches());
        _count("orders admitted by H", handler.ordersAdmitted());
        _count("bids admitted (receipted) by H", handler.bidsAdmitted());
        _count("H simulations without an order", handler.simNoOrder());
        _count("H simulations without a bid", handler.simNoBid());
        _count("H simulations without a trade", handler.simNoTrade());
        _count("adversarial actions (withdraw/unstake/cancel/binding/A settle)", handler.adversaryActions());
        _count("  of which while an H batch was pending", handler.adversaryWhilePending());
        _count("challenges on H attempted", handler.challengesTried());
        _count("  reaching the spare-unit/swap checks", handler.challengesPastWitness());
        _count("    of which swap proofs", handler.challengesDeepSwap());
        _count("    of which right after an adversarial action", handler.challengesDeepAfterAdversary());
        _outcome("SUCCEEDED (a violation)", bytes4(0));
        _outcome("BidFullyFilled", IUnderbidErrors.BidFullyFilled.selector);
        _outcome("BidNonceTaken", IUnderbidErrors.BidNonceTaken.selector);
        _outcome("BidCancelled", IUnderbidErrors.BidCancelled.selector);
        _outcome("StakeDecreasedAfterReceipt", IUnderbidErrors.StakeDecreasedAfterReceipt.selector);
        _outcome("ProviderLeftMatcher", IUnderbidErrors.ProviderLeftMatcher.selector);
        _outcome("BidExpiredBeforeWitness", IUnderbidErrors.BidExpiredBeforeWitness.selector);
        _outcome("SwapNotShorter", IUnderbidErrors.SwapNotShorter.selector);
        _outcome("WitnessDurationTooLong", IUnderbidErrors.WitnessDurationTooLong.selector);
        _outcome("WitnessNotPricier", IUnderbidErrors.WitnessNotPricier.selector);
        _outcome("WitnessMarketMismatch", IUnderbidErrors.WitnessMarketMismatch.selector);
        _outcome("ChallengeWindowClosed", IUnderbidErrors.ChallengeWindowClosed.selector);
        _outcome("WitnessNotInRound", IUnderbidErrors.WitnessNotInRound.selector);
        _outcome("WitnessBeforeReceipt", IUnderbidErrors.WitnessBeforeReceipt.selector);
        _outcome("RoundNotFinal", IUnderbidErrors.RoundNotFinal.selector);
        _outcome("AlreadyChallenged", IUnderbidErrors.AlreadyChallenged.selector);
        _outcome("InvalidSignature", IUnderbidErrors.InvalidSignature.selector);
        _outcome("SignerMismatch", IUnderbidErrors.SignerMismatch.selector);
        _count("successful challenges on A", handler.adversaryChallenged());
    }

    /// @dev False when afterInvariant sees a run it has already counted.
    bool internal fresh;

    function _add(string memory name, uint256 value) private returns (uint256 total) {
        string memory key = string.concat("UNDERBID_COVERAGE_", name);
        total = vm.envOr(key, uint256(0));
        if (!fresh) return total;
        total += value;
        vm.setEnv(key, vm.toString(total));
    }

    function _count(string memory label, uint256 value) private {
        _log(string.concat("coverage: ", label, ": ", vm.toString(_add(label, value))));
    }

    function _outcome(string memory name, bytes4 selector) private {
        _count(string.concat("  challenge on H outcome ", name), handler.challengeOutcome(selector));
    }

    // ----- deterministic checks of the harness itself (run once each) -----

    function test_initialState() public view {
        invariant_protocol();
    }

    /// @dev One deterministic round by H: an order and two bids, the cheaper one wins.
    function test_honestRoundSettles() public {
        // (the handler bounds its inputs: units 1, 600 s, max 5 UBC; capacity 2, 1 and 2 UBC, 3600 s)
        handler.newOrder(0, 0, 0, 40, 3_600, 0x21);
        handler.newBid(0, 1, 0, 50, 3_600, 0x21);
        handler.newBid(1, 1, 10, 50, 3_600, 0x21);
        handler.settleHonestNow();
        require(handler.honestRounds() == 1 && handler.honestLeases() == 1, "H settled one lease");
        handler.challengeHonest(0, 0, 0);
        handler.challengeHonest(1, 0, 0);
        invariant_protocol();
    }
}
