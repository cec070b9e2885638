// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IUnderbidErrors} from "./interfaces/IUnderbidErrors.sol";

/// @title The UBT/USD price, posted by an updater, with a maximum age.
/// @dev Prices carry 8 decimals (USD per whole UBT), as Chainlink USD feeds do.
/// NOTE: every read goes through `latestPrice`, which reverts on a zero, missing or stale price,
/// so no caller can act on a bad price by forgetting a check.
contract PriceOracle is AccessControl, IUnderbidErrors {
    bytes32 public constant UPDATER_ROLE = keccak256("UPDATER_ROLE");
    uint8 public constant DECIMALS = 8;

    uint128 private _price;
    uint64 private _updatedAt;
    /// @dev Seconds after an update during which the price may be used.
    uint32 public maxAge;

    event PricePosted(uint256 price, uint256 updatedAt);
    event MaxAgeUpdated(uint256 maxAge);

    /// @param admin Receives the admin and updater roles.
    /// @param maxAge_ Seconds a posted price stays usable.
    constructor(address admin, uint32 maxAge_) {
        if (maxAge_ == 0) revert InvalidParameter("maxAge");
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(UPDATER_ROLE, admin);
        maxAge = maxAge_;
    }

    /// @dev Posts a price (8 decimals). Reverts with `InvalidPrice` for zero or above 2^128.
    function setPrice(uint256 newPrice) external onlyRole(UPDATER_ROLE) {
        if (newPrice == 0 || newPrice > type(uint128).max) revert InvalidPrice();
        _price = uint128(newPrice);
        _updatedAt = uint64(block.timestamp);
        emit PricePosted(newPrice, block.timestamp);
    }

    /// @dev Sets the max age. Reverts with `InvalidParameter` for zero.
    function setMaxAge(uint32 newMaxAge) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newMaxAge == 0) revert InvalidParameter("maxAge");
        maxAge = newMaxAge;
        emit MaxAgeUpdated(newMaxAge);
    }

    /// @dev The usable price and when it was posted.
    /// Reverts with `PriceNotSet` before the first post and `StalePrice` once it is older than `maxAge`.
    function latestPrice() public view returns (uint256 price, uint256 updatedAt) {
        price = _price;
        updatedAt = _updatedAt;
        if (price == 0) revert PriceNotSet();
        if (block.timestamp > updatedAt + maxAge) revert StalePrice(updatedAt, maxAge);
    }

    /// @dev The last posted price and time, without the freshness check (for display only).
    function lastPosted() external view returns (uint256 price, uint256 updatedAt) {
        return (_price, _updatedAt);
    }
}
