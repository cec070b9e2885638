// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {IUnderbidErrors} from "../interfaces/IUnderbidErrors.sol";

/// @title UBT, the native token: staked by providers, bonded by matchers, burned for credits.
/// @dev The genesis supply is minted once in the constructor. After that only the bound minter
/// (the burn-mint equilibrium contract) can mint, and only when credits are redeemed.
contract UnderbidToken is ERC20, ERC20Burnable, ERC20Permit, IUnderbidErrors {
    /// @dev The account allowed to bind the minter, once.
    address private immutable _deployer;
    /// @dev The burn-mint equilibrium contract; zero until bound.
    address public minter;

    event MinterBound(address indexed minter);

    /// @dev Mints `genesisSupply` to `genesisHolder`.
    /// @param genesisHolder Receives the genesis supply (the treasury; on the devnet, the deployer).
    /// @param genesisSupply The genesis supply in wei (18 decimals).
    constructor(address genesisHolder, uint256 genesisSupply)
        ERC20("Underbid Token", "UBT")
        ERC20Permit("Underbid Token")
    {
        _deployer = msg.sender;
        _mint(genesisHolder, genesisSupply);
    }

    /// @dev Binds the only minter. Callable once, by the deployer.
    /// @param newMinter The burn-mint equilibrium contract.
    /// Reverts with `UnauthorizedCaller` for anyone but the deployer and `AlreadyBound` the second time.
    function bindMinter(address newMinter) external {
        if (msg.sender != _deployer) revert UnauthorizedCaller(msg.sender);
        if (minter != address(0)) revert AlreadyBound();
        if (newMinter == address(0)) revert InvalidParameter("minter");
        minter = newMinter;
        emit MinterBound(newMinter);
    }

    /// @dev Mints `amount` UBT to `to`.
    /// Reverts with `UnauthorizedCaller` unless called by the bound minter.
    function mint(address to, uint256 amount) external {
        if (msg.sender != minter) revert UnauthorizedCaller(msg.sender);
        _mint(to, amount);
    }
}
