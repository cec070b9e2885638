// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IUnderbidErrors} from "./interfaces/IUnderbidErrors.sol";

/// @title The UBT/USD price, posted by an updater, with a maximum age and a price band.
/// @dev Prices carry 8 decimals (USD per whole UBT), as Chainlink USD feeds do.
/// NOTE: every read goes through `latestPrice` or `priceBand`, which revert on a zero, missing or
/// stale price, so no caller can act on a bad price by forgetting a check.
///
/// The band. Time is cut into periods of `priceLag` seconds (period n is
/// [n * priceLag, (n + 1) * priceLag)). The oracle keeps, for the period of the last post and for
/// the period before it, the lowest and highest price in effect at any moment of that period (the
/// price in effect when the period began counts). `priceBand` returns the low and high over the
/// current period and the previous one: every price in effect at any moment of the last
/// `priceLag` seconds (and at most `2 * priceLag` seconds) lies in it. Four words of storage; no
/// list of past prices.
/// IMPORTANT: the burn-mint equilibrium mints credits at the band's low and redeems at its high,
/// so a round trip through it whose two legs are at most `priceLag` seconds apart never gains,
/// whatever was posted in between. After a move, users get the worse end of the band for one to
/// two periods. Set `priceLag` above the longest spacing of updates (at least `maxAge`), so a
/// round trip that outlasts the band carries at least one update its maker could not know.
contract PriceOracle is AccessControl, IUnderbidErrors {
    bytes32 public constant UPDATER_ROLE = keccak256("UPDATER_ROLE");
    uint8 public constant DECIMALS = 8;

    /// @dev Seconds per band period: a price stays in the band for `priceLag` to `2 * priceLag`
    /// seconds after it stopped being the latest.
    uint32 public immutable priceLag;

    uint128 private _price;
    uint64 private _updatedAt;
    /// @dev Seconds after an update during which the price may be used.
    uint32 public maxAge;

    /// @dev Lowest and highest price in effect during the period of the last post (so far).
    uint128 private _low;
    uint128 private _high;
    /// @dev Lowest and highest price in effect during the period before it.
    uint128 private _prevLow;
    uint128 private _prevHigh;

    event PricePosted(uint256 price, uint256 updatedAt);
    event MaxAgeUpdated(uint256 maxAge);

    /// @param admin Receives the admin and updater roles.
    /// @param maxAge_ Seconds a posted price stays usable.
    /// @param priceLag_ Seconds per band period (see the contract's notes); immutable.
    /// Reverts with `InvalidParameter("maxAge")` or `InvalidParameter("priceLag")` for zero.
    constructor(address admin, uint32 maxAge_, uint32 priceLag_) {
        if (maxAge_ == 0) revert InvalidParameter("maxAge");
        if (priceLag_ == 0) revert InvalidParameter("priceLag");
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(UPDATER_ROLE, admin);
        maxAge = maxAge_;
        priceLag = priceLag_;
    }

    /// @dev Posts a price (8 decimals) and folds it into the band. Only the updater role.
    /// NOTE: the price it replaces stays in the band for one to two periods (`priceBand`), even
    /// when it had gone stale: the band never narrows early.
    /// Reverts with `InvalidPrice` for zero or above 2^128, `AccessControlUnauthorizedAccount`
    /// for a caller without the updater role.
    function setPrice(uint256 newPrice) external onlyRole(UPDATER_ROLE) {
        if (newPrice == 0 || newPrice > type(uint128).max) revert InvalidPrice();
        uint128 price = uint128(newPrice);
        uint128 old = _price;
        if (old == 0) {
            // The first post: no price was in effect before it.
            (_low, _high, _prevLow, _prevHigh) = (price, price, price, price);
        } else {
            uint256 lastPeriod = _updatedAt / priceLag;
            uint256 period = block.timestamp / priceLag;
            // Slither: period numbers are exact integers (timestamp / priceLag); equality is the intended test.
            // slither-disable-next-line incorrect-equality
            if (period == lastPeriod) {
                if (price < _low) _low = price;
                if (price > _high) _high = price;
            } else {
                // A new period begins with `old` in effect. The last post's period becomes the
                // previous one, or, if whole periods passed without a post, `old` alone was in effect.
                // Slither: period numbers are exact integers; `lastPeriod + 1` is the adjacent period.
                // slither-disable-next-line incorrect-equality
                (_prevLow, _prevHigh) = period == lastPeriod + 1 ? (_low, _high) : (old, old);
                (_low, _high) = price < old ? (price, old) : (old, price);
            }
        }
        _price = price;
        _updatedAt = uint64(block.timestamp);
        emit PricePosted(newPrice, block.timestamp);
    }

    /// @dev Sets the max age. Only the admin role.
    /// Reverts with `InvalidParameter("maxAge")` for zero, `AccessControlUnauthorizedAccount`
    /// for a caller without the admin role.
    function setMaxAge(uint32 newMaxAge) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newMaxAge == 0) revert InvalidParameter("maxAge");
        maxAge = newMaxAge;
        emit MaxAgeUpdated(newMaxAge);
    }

    /// @dev The usable price and when it was posted.
    /// NOTE: the burn-mint equilibrium does not trade at this price but at the ends of `priceBand`.
    /// Reverts with `PriceNotSet` before the first post and `StalePrice` once it is older than `maxAge`.
    function latestPrice() public view returns (uint256 price, uint256 updatedAt) {
        price = _price;
        updatedAt = _updatedAt;
        if (price == 0) revert PriceNotSet();
        if (block.timestamp > updatedAt + maxAge) revert StalePrice(updatedAt, maxAge);
    }

    /// @dev The lowest and highest price in effect at any moment of the current band period and the
    /// one before it: a superset of the prices in effect in the last `priceLag` seconds. Both equal
    /// the latest price once it has been the only one in effect for two whole periods.
    /// Reverts like `latestPrice`: `PriceNotSet` before the first post, `StalePrice` once the
    /// latest price is older than `maxAge`.
    function priceBand() external view returns (uint256 low, uint256 high) {
        (uint256 price, uint256 updatedAt) = latestPrice();
        uint256 lastPeriod = updatedAt / priceLag;
        uint256 period = block.timestamp / priceLag;
        // Slither: period numbers are exact integers (timestamp / priceLag); equality is the intended test.
        // slither-disable-next-line incorrect-equality
        if (period == lastPeriod) {
            (low, high) = (_low, _high);
            if (_prevLow < low) low = _prevLow;
            if (_prevHigh > high) high = _prevHigh;
        // Slither: period numbers are exact integers; `lastPeriod + 1` is the adjacent period.
        // slither-disable-next-line incorrect-equality
        } else if (period == lastPeriod + 1) {
            // Only `price` has been in effect since the last post's period ended; it is in that band.
            (low, high) = (_low, _high);
        } else {
            (low, high) = (price, price);
        }
    }

    /// @dev The last posted price and time, without the freshness check (for display only).
    function lastPosted() external view returns (uint256 price, uint256 updatedAt) {
        return (_price, _updatedAt);
    }
}
