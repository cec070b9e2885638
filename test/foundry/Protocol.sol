// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidToken} from "../../contracts/tokens/UnderbidToken.sol";
import {UnderbidCredit} from "../../contracts/tokens/UnderbidCredit.sol";
import {PriceOracle} from "../../contracts/PriceOracle.sol";
import {BurnMintEquilibrium} from "../../contracts/BurnMintEquilibrium.sol";
import {UnderbidSettlement} from "../../contracts/UnderbidSettlement.sol";
import {UnderbidBase} from "../../contracts/core/UnderbidBase.sol";
import {CheatBase} from "./Vm.sol";

/// @dev The real contracts, wired as src/underbid/deploy.py wires them, with short periods so a
/// campaign of warps crosses every notice, heartbeat, unbonding and challenge window.
abstract contract Protocol is CheatBase {
    uint256 internal constant GENESIS = 100_000_000e18;
    uint256 internal constant STAKE_PER_UNIT = 100e18;
    uint256 internal constant MIN_BOND = 10_000e18;
    uint32 internal constant NOTICE = 300;
    uint32 internal constant ROUND_SPAN = 120;
    uint32 internal constant MIN_LEASE = 600;
    uint32 internal constant HEARTBEAT = 60;
    uint32 internal constant GRACE = 30;
    uint32 internal constant CHALLENGE_WINDOW = 3_600;
    uint256 internal constant START = 1_700_000_000;

    UnderbidToken internal ubt;
    UnderbidCredit internal credit;
    PriceOracle internal oracle;
    BurnMintEquilibrium internal bme;
    UnderbidSettlement internal settlement;

    function _limits() internal pure returns (UnderbidBase.Limits memory) {
        return UnderbidBase.Limits({
            stakePerUnit: STAKE_PER_UNIT,
            minMatcherBond: MIN_BOND,
            noticePeriod: NOTICE,
            maxRoundSpan: ROUND_SPAN,
            minLeaseDuration: MIN_LEASE
        });
    }

    function _params() internal pure returns (UnderbidBase.Params memory) {
        return UnderbidBase.Params({
            unbondingPeriod: 600,
            heartbeatInterval: HEARTBEAT,
            heartbeatGrace: GRACE,
            slashBps: 5_000,
            slashBuyerBps: 5_000,
            slashReporterBps: 1_000,
            challengeWindow: CHALLENGE_WINDOW,
            matcherExitDelay: 7_200,
            matcherSlashBps: 5_000,
            challengerShareBps: 5_000
        });
    }

    /// @dev Deploys and wires everything from this contract (admin, oracle updater, genesis holder).
    function _deploy() internal {
        vm.warp(START);
        ubt = new UnderbidToken(address(this), GENESIS);
        oracle = new PriceOracle(address(this), 3_600, 3_600);
        // The credit's escrow is fixed at construction: the settlement's address, predicted from
        // this contract's next nonce (the settlement's constructor checks it).
        credit = new UnderbidCredit(vm.computeCreateAddress(address(this), vm.getNonce(address(this)) + 1));
        settlement = new UnderbidSettlement(address(this), ubt, credit, _limits(), _params());
        // If the BME constructor changes (a colleague's branch), this is the one line to adapt.
        bme = new BurnMintEquilibrium(address(this), ubt, credit, oracle, 25, 10e6, 1_000_000e18, 86_400);
        ubt.bindMinter(address(bme));
        credit.bindProtocol(address(bme));
        oracle.setPrice(2e8);
    }
}
