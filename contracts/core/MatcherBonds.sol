// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Matcher bonds: only a matcher with a UBT bond at or above the minimum may settle.
/// @dev Leaving takes `matcherExitDelay`, and never ends before the challenge window of the
/// matcher's last batch (`slashableUntil`): a matcher that asks to leave stops settling at once,
/// and its bond stays slashable until every lease it opened is past its window. Receipts are
/// checked against a `receiptSigner` key fixed while the matcher is bonded, so a matcher that
/// settles from a contract is as accountable as one that settles from a key.
abstract contract MatcherBonds is UnderbidBase {
    using SafeERC20 for *;

    struct MatcherAccount {
        uint128 bond;
        /// Zero while active; when the bond can be withdrawn once the matcher asked to leave.
        uint40 exitAt;
        /// The end of the challenge window of the latest lease this matcher opened.
        uint40 slashableUntil;
        /// The key whose EIP-712 signatures are this matcher's receipts.
        address receiptSigner;
    }

    mapping(address => MatcherAccount) public matchers;

    /// @dev Adds `amount` UBT (approved to this contract) to the caller's matcher bond.
    /// @param receiptSigner The key that signs the caller's receipts. Fixed by the first bond;
    /// later bonds must name the same key.
    /// Reverts with `ZeroAmount`, `InvalidParameter` (zero signer), `ReceiptSignerFixed` and
    /// `MatcherExiting`.
    function bondMatcher(uint256 amount, address receiptSigner) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (receiptSigner == address(0)) revert InvalidParameter("receiptSigner");
        MatcherAccount storage account = matchers[msg.sender];
        if (account.exitAt != 0) revert MatcherExiting(msg.sender);
        address fixedSigner = account.receiptSigner;
        if (fixedSigner == address(0)) account.receiptSigner = receiptSigner;
        else if (fixedSigner != receiptSigner) revert ReceiptSignerFixed(fixedSigner);
        account.bond += SafeCast.toUint128(amount);
        ubt.safeTransferFrom(msg.sender, address(this), amount);
        emit MatcherBonded(msg.sender, amount, account.bond, receiptSigner);
    }

    /// @dev Stops the caller settling and starts its exit delay.
    /// Reverts with `MatcherNotBonded` and `MatcherExiting`.
    function requestMatcherExit() external {
        MatcherAccount storage account = matchers[msg.sender];
        if (account.bond == 0) revert MatcherNotBonded(msg.sender);
        if (account.exitAt != 0) revert MatcherExiting(msg.sender);
        uint256 exitAt = block.timestamp + params.matcherExitDelay;
        account.exitAt = uint40(exitAt);
        emit MatcherExitRequested(msg.sender, exitAt);
    }

    /// @dev Sends the caller's remaining bond back once its exit delay, and the challenge window
    /// of every lease it opened, are over.
    /// Reverts with `ExitNotRequested` and `ExitDelayNotOver`.
    function withdrawMatcherBond() external nonReentrant {
        MatcherAccount storage account = matchers[msg.sender];
        uint256 exitAt = account.exitAt;
        if (exitAt == 0) revert ExitNotRequested(msg.sender);
        if (account.slashableUntil > exitAt) exitAt = account.slashableUntil;
        if (block.timestamp < exitAt) revert ExitDelayNotOver(exitAt);
        uint256 amount = account.bond;
        delete matchers[msg.sender];
        ubt.safeTransfer(msg.sender, amount);
        emit MatcherBondWithdrawn(msg.sender, amount);
    }

    /// @dev True if `matcher` may settle now.
    function isBondedMatcher(address matcher) public view returns (bool) {
        MatcherAccount storage account = matchers[matcher];
        return account.exitAt == 0 && account.bond >= minMatcherBond && account.bond != 0;
    }

    /// @dev Reverts with `MatcherNotBonded` unless `matcher` may settle.
    function _requireBondedMatcher(address matcher) internal view {
        if (!isBondedMatcher(matcher)) revert MatcherNotBonded(matcher);
    }

    /// @dev Keeps `matcher`'s bond until the challenge window of a lease opened now has closed.
    function _extendSlashable(address matcher) internal {
        MatcherAccount storage account = matchers[matcher];
        uint256 until = block.timestamp + maxRoundSpan + params.challengeWindow;
        if (account.slashableUntil < until) account.slashableUntil = uint40(until);
    }

    /// @dev Takes `matcherSlashBps` of `matcher`'s bond. Returns the amount taken.
    function _slashMatcher(address matcher) internal returns (uint256 slashed) {
        MatcherAccount storage account = matchers[matcher];
        slashed = uint256(account.bond) * params.matcherSlashBps / BPS;
        account.bond -= uint128(slashed);
    }
}
