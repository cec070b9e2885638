// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Protocol} from "./Protocol.sol";
import {Handler} from "./Handler.sol";

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

    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[] memory s = new bytes4[](28);
        s[0] = Handler.movePrice.selector;
        s[1] = Handler.mintCredits.selector;
        s[2] = Handler.redeem.selector;
        s[3] = Handler.deposit.selector;
        s[4] = Handler.requestWithdrawal.selector;
        s[5] = Handler.withdraw.selector;
        s[6] = Handler.stake.selector;
        s[7] = Handler.requestUnstake.selector;
        s[8] = Handler.withdrawUnbonded.selector;
        s[9] = Handler.bindMatcher.selector;
        s[10] = Handler.requestCancel.selector;
        s[11] = Handler.cancelNonces.selector;
        s[12] = Handler.warp.selector;
        s[13] = Handler.newOrder.selector;
        s[14] = Handler.newBid.selector;
        s[15] = Handler.prepareHonest.selector;
        s[16] = Handler.landHonest.selector;
        s[17] = Handler.settleHonestNow.selector;
        s[18] = Handler.settleAdversary.selector;
        s[19] = Handler.heartbeat.selector;
        s[20] = Handler.claim.selector;
        s[21] = Handler.close.selector;
        s[22] = Handler.reportFault.selector;
        s[23] = Handler.challengeHonest.selector;
        s[24] = Handler.challengeAdversary.selector;
        // the frequent actions twice: more orders, bids, rounds and challenges per run
        s[25] = Handler.newOrder.selector;
        s[26] = Handler.newBid.selector;
        s[27] = Handler.challengeHonest.selector;
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
    /// settlement's balance is exactly the escrow it records.
    function _creditConservation() private view {
        address[] memory actors = handler.actors();
        uint256 escrow;
        uint256 held;
        for (uint256 i; i < actors.length; ++i) {
            (uint128 free, uint128 locked) = settlement.escrowOf(actors[i]);
            escrow += uint256(free) + locked;
            held += credit.balanceOf(actors[i]);
        }
        require(credit.balanceOf(address(settlement)) == escrow, "settlement credits != recorded escrow");
        require(credit.totalSupply() == escrow + held, "credit supply != escrow + user credits");
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
            require(recorded == filled, "bid fill record != fills");
            require(settlement.remainingOf(digest, provider, nonce, capacity) <= capacity - filled, "bid remaining too high");
        }
    }

    /// @dev Prints the campaign's coverage once per run (shown with -vv).
    function afterInvariant() public view {
        _log("honest rounds", handler.honestRounds());
        _log("honest leases", handler.honestLeases());
        _log("adversary rounds", handler.adversaryRounds());
        _log("challenges on H tried", handler.challengesTried());
        _log("  of which reached the spare-unit/swap checks", handler.challengesPastWitness());
        _log("successful challenges on A", handler.adversaryChallenged());
        _log("H batches expired before landing", handler.expiredBatches());
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
