// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Buyer escrow: credits deposited to pay for leases.
/// @dev `free` can be withdrawn or committed to new leases; `locked` is the whole cost of the
/// buyer's open leases: a lease's cost leaves it when the lease closes, its unpaid part back to
/// `free` and its paid part (already sent to the provider by claims and the close) gone. Claims
/// do not touch it, so while a lease runs `locked` also counts what the lease has paid so far
/// (see `Leases._settleAndClose`). A withdrawal is announced `noticePeriod` ahead: until then
/// the credits stay free for settlement, so no withdrawal can land between a matcher's
/// simulation and its batch and make the batch revert.
abstract contract BuyerEscrow is UnderbidBase {
    using SafeERC20 for *;

    struct EscrowAccount {
        uint128 free;
        uint128 locked;
    }

    /// @dev An announced withdrawal: up to `amount` from `readyAt` on.
    struct Withdrawal {
        uint128 amount;
        uint40 readyAt;
    }

    mapping(address => EscrowAccount) public escrowOf;
    mapping(address => Withdrawal) public pendingWithdrawal;

    /// @dev Moves `amount` credits from the caller into free escrow. Needs no approval: the
    /// credit token lets the escrow pull (see UnderbidCredit._spendAllowance).
    /// Reverts with `ZeroAmount`.
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        escrowOf[msg.sender].free += SafeCast.toUint128(amount);
        credit.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(msg.sender, amount);
    }

    /// @dev Announces a withdrawal of up to `amount` free credits, possible from
    /// `block.timestamp + noticePeriod`. Replaces any earlier announcement (and restarts the notice).
    /// Reverts with `ZeroAmount`.
    function requestWithdrawal(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 readyAt = block.timestamp + noticePeriod;
        pendingWithdrawal[msg.sender] = Withdrawal(SafeCast.toUint128(amount), uint40(readyAt));
        emit WithdrawalRequested(msg.sender, amount, readyAt);
    }

    /// @dev Sends the announced amount, or the free escrow if that is less now, to the caller.
    /// @return amount Credits sent.
    /// Reverts with `NothingToWithdraw` and `NoticeNotOver`.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Withdrawal memory request = pendingWithdrawal[msg.sender];
        if (request.amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < request.readyAt) revert NoticeNotOver(request.readyAt);
        delete pendingWithdrawal[msg.sender];
        EscrowAccount storage account = escrowOf[msg.sender];
        amount = request.amount < account.free ? request.amount : account.free;
        account.free -= uint128(amount);
        if (amount != 0) credit.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @dev Free escrow a matcher may commit to new leases: free minus any announced withdrawal.
    function availableEscrow(address buyer) public view returns (uint256) {
        uint256 free = escrowOf[buyer].free;
        uint256 leaving = pendingWithdrawal[buyer].amount;
        return free > leaving ? free - leaving : 0;
    }

    /// @dev Moves `amount` from free to locked. Reverts with `InsufficientEscrow`.
    /// NOTE: one read and one write of the account's raw word (`free` in the low 128 bits,
    /// `locked` in the high ones: Solidity's layout of `EscrowAccount`); `settle` locks once per match.
    function _lockEscrow(address buyer, uint256 amount) internal {
        EscrowAccount storage account = escrowOf[buyer];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(account.slot)
        }
        uint256 free = uint128(word);
        if (free < amount) revert InsufficientEscrow(buyer, amount, free);
        uint256 locked = SafeCast.toUint128((word >> 128) + amount);
        // Safe: free - amount and locked both fit 128 bits (checked above).
        assembly ("memory-safe") {
            sstore(account.slot, or(sub(free, amount), shl(128, locked)))
        }
    }
}
