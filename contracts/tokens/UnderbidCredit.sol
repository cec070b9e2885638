// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";

/// @title UBC, the compute credit: 6 decimals, 1 UBC = 1 USD of compute.
/// @dev Minted only by burning UBT and burned only by redeeming it (both through the bound
/// burn-mint equilibrium contract). It never moves from one user to another: the only transfers
/// are the ones the settlement escrow makes, into itself (deposits) or out of it (withdrawals,
/// lease payments). A user cannot push credits into a contract where no account records them.
contract UnderbidCredit is ERC20, IUnderbidErrors {
    address private immutable _deployer;
    /// @dev The burn-mint equilibrium contract: the only minter and burner.
    address public bme;
    /// @dev The settlement contract that holds buyer escrow, fixed at construction.
    /// NOTE: immutable because every credit transfer checks it: a storage read would add a cold
    /// `SLOAD` (2,100 gas) to each deposit, withdrawal, claim and close. The settlement does not
    /// exist yet when the credit is deployed, so deployers pass its predicted address, and the
    /// settlement's constructor refuses a credit token whose `escrow` is not itself.
    address public immutable escrow;

    event ProtocolBound(address indexed bme, address indexed escrow);

    /// @param escrow_ The settlement contract that will hold buyer escrow (its predicted address).
    /// Reverts with `InvalidParameter` for the zero address.
    constructor(address escrow_) ERC20("Underbid Credit", "UBC") {
        if (escrow_ == address(0)) revert InvalidParameter("escrow");
        _deployer = msg.sender;
        escrow = escrow_;
    }

    /// @dev 1 UBC = 1_000_000 base units, like USD stablecoins and Akash's ACT.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @dev Binds the burn-mint equilibrium contract (the escrow was fixed at construction).
    /// Callable once, by the deployer.
    /// @param bme_ The burn-mint equilibrium contract.
    /// Reverts with `UnauthorizedCaller` for anyone but the deployer, `InvalidParameter` for the
    /// zero address and `AlreadyBound` the second time.
    function bindProtocol(address bme_) external {
        if (msg.sender != _deployer) revert UnauthorizedCaller(msg.sender);
        if (bme != address(0)) revert AlreadyBound();
        if (bme_ == address(0)) revert InvalidParameter("bme");
        bme = bme_;
        emit ProtocolBound(bme_, escrow);
    }


    /// @dev Mints credits. Reverts with `UnauthorizedCaller` unless called by the BME.
    function mint(address to, uint256 amount) external {
        if (msg.sender != bme) revert UnauthorizedCaller(msg.sender);
        _mint(to, amount);
    }

    /// @dev Burns credits held by `from`. Reverts with `UnauthorizedCaller` unless called by the BME.
    function burn(address from, uint256 amount) external {
        if (msg.sender != bme) revert UnauthorizedCaller(msg.sender);
        _burn(from, amount);
    }

    /// @dev Reverts with `CreditNonTransferable` for any transfer other than the escrow moving
    /// credits into or out of itself. Mints and burns (from or to the zero address) come from the BME.
    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0) && (msg.sender != escrow || (from != escrow && to != escrow))) {
            revert CreditNonTransferable(from, to);
        }
        super._update(from, to, value);
    }

    /// @dev IMPORTANT: the escrow pulls a buyer's deposit without an allowance. Credits can go
    /// nowhere but a protocol contract, so an approval step would add a transaction and no safety.
    function _spendAllowance(address owner, address spender, uint256 value) internal override {
        if (spender == escrow) return;
        super._spendAllowance(owner, spender, value);
    }
}
