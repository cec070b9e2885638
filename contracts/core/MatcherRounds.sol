// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Rounds: each matcher's own sequence of rounds, with one price per market and round.
/// @dev Rounds belong to their matcher (`rounds[matcher][id]`), so no one can squat or close
/// another matcher's round. A matcher's round ids only grow. A round takes batches 0, 1, ... in
/// order until the first of: its final batch lands, the matcher opens a later round, or
/// `maxRoundSpan` has passed since its first batch. From then on the round is *final*: nothing
/// can be added to it, and it can be challenged. A matcher therefore cannot keep a round open,
/// or finalize it late, to dodge a challenge.
abstract contract MatcherRounds is UnderbidBase {
    /// @dev The uniform clearing price of one market in the round being settled.
    struct MarketPrice {
        bytes32 market;
        uint64 price;
    }

    struct Round {
        /// When the first batch landed (zero: the round never opened).
        uint40 openedAt;
        uint32 batches;
        /// When the final batch landed (zero: no batch was marked final).
        uint40 finalizedAt;
    }

    /// @dev matcher => round id => round.
    // Slither: written through the storage pointer in _openBatch (a Slither false positive).
    // slither-disable-next-line uninitialized-state
    mapping(address => mapping(uint64 => Round)) public rounds;
    /// @dev matcher => the highest round id it has opened.
    mapping(address => uint64) public lastRound;
    /// @dev matcher => round => market => uniform clearing price (credit base units per unit-hour).
    // Slither: written through the storage pointer in _storePrices (a Slither false positive).
    // slither-disable-next-line uninitialized-state
    mapping(address => mapping(uint64 => mapping(bytes32 => uint256))) public clearingPrice;

    /// @dev True once `round` of `matcher` can take no more batches (and can be challenged).
    function isRoundFinal(address matcher, uint64 round) public view returns (bool) {
        Round storage opened = rounds[matcher][round];
        if (opened.openedAt == 0) return false;
        return opened.finalizedAt != 0 || lastRound[matcher] > round
            || block.timestamp > uint256(opened.openedAt) + maxRoundSpan;
    }

    /// @dev Admits batch `batch` of the caller's round `round`.
    /// Reverts with `BatchExpired` (past the matcher's own `deadline`), `RoundIdNotIncreasing`
    /// (a batch 0 whose id is not above every earlier round of the caller), `RoundClosed`,
    /// `RoundAlreadySettled` and `BatchOutOfOrder`.
    function _openBatch(uint64 round, uint32 batch, bool finalBatch, uint64 deadline) internal {
        if (block.timestamp > deadline) revert BatchExpired(deadline);
        Round storage opened = rounds[msg.sender][round];
        uint64 last = lastRound[msg.sender];
        if (batch == 0) {
            if (round <= last) revert RoundIdNotIncreasing(round, last);
            lastRound[msg.sender] = round;
            opened.openedAt = uint40(block.timestamp);
        } else {
            if (opened.openedAt == 0) revert BatchOutOfOrder(round, 0, batch);
            if (opened.finalizedAt != 0) revert RoundAlreadySettled(round);
            if (round != last || block.timestamp > uint256(opened.openedAt) + maxRoundSpan) {
                revert RoundClosed(round);
            }
            if (batch != opened.batches) revert BatchOutOfOrder(round, opened.batches, batch);
        }
        opened.batches = batch + 1;
        if (finalBatch) opened.finalizedAt = uint40(block.timestamp);
    }

    /// @dev Records each market's uniform price for the caller's `round`.
    /// Reverts with `ZeroClearingPrice` and `ConflictingClearingPrice`.
    function _storePrices(uint64 round, MarketPrice[] calldata prices) internal {
        mapping(bytes32 => uint256) storage stored = clearingPrice[msg.sender][round];
        for (uint256 i; i < prices.length; ++i) {
            bytes32 market = prices[i].market;
            uint256 price = prices[i].price;
            if (price == 0) revert ZeroClearingPrice(market);
            uint256 previous = stored[market];
            if (previous == 0) {
                stored[market] = price;
                emit ClearingPrice(msg.sender, round, market, price);
            } else if (previous != price) {
                revert ConflictingClearingPrice(market, previous, price);
            }
        }
    }
}
