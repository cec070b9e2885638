// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Buyer escrow: credits deposited to pay for leases.
/// @dev `free` can be withdrawn or committed to new leases; `locked` backs open leases and only
/// leaves as lease payments to providers or refunds back to `free`.
abstract contract BuyerEscrow is UnderbidBase {
    using SafeERC20 for *;

    struct EscrowAccount {
        uint128 free;
        uint128 locked;
    }

    mapping(address => EscrowAccount) public escrowOf;

    /// @dev Moves `amount` credits from the caller into free escrow. Needs no approval: the
    /// credit token lets the escrow pull (see UnderbidCredit._spendAllowance).
    /// Reverts with `ZeroAmount`.
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        escrowOf[msg.sender].free += SafeCast.toUint128(amount);
        credit.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(msg.sender, amount);
    }

    /// @dev Sends `amount` of the caller's free escrow back to the caller.
    /// Reverts with `ZeroAmount` and `InsufficientEscrow`.
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        EscrowAccount storage account = escrowOf[msg.sender];
        if (account.free < amount) revert InsufficientEscrow(msg.sender, amount, account.free);
        account.free -= uint128(amount);
        credit.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @dev Moves `amount` from free to locked. Reverts with `InsufficientEscrow`.
    function _lockEscrow(address buyer, uint256 amount) internal {
        EscrowAccount storage account = escrowOf[buyer];
        uint256 free = account.free;
        if (free < amount) revert InsufficientEscrow(buyer, amount, free);
        account.free = uint128(free - amount);
        account.locked += SafeCast.toUint128(amount);
    }
}
