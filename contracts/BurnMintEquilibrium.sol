// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {IUnderbidErrors} from "./interfaces/IUnderbidErrors.sol";
import {UnderbidToken} from "./tokens/UnderbidToken.sol";
import {UnderbidCredit} from "./tokens/UnderbidCredit.sol";
import {PriceOracle} from "./PriceOracle.sol";

/// @title Burn-mint equilibrium: UBT is burned for credits and credits are redeemed for UBT.
/// @dev After Akash's x/bme. Minting credits burns UBT at the oracle price minus a spread;
/// redeeming burns credits and mints UBT at the oracle price. Redemption is the inflationary
/// side, so a circuit breaker halts it (minting stays open) when net UBT minted over a rolling
/// window would pass a cap.
///
/// The oracle price of each side is an end of the oracle's band (`PriceOracle.priceBand`, every
/// price in effect over at least the last `priceLag` seconds): minting uses the band's low,
/// redeeming its high. A mint and a redemption at most `priceLag` seconds apart therefore meet a
/// low no higher than the high, so the round trip (either way round) loses at least the spread,
/// whatever oracle updates land between its legs: no sandwich of an update mints new UBT or credits.
/// IMPORTANT: after a price move, and for one to two `priceLag` periods, minters get the lower
/// and redeemers the higher of the old and new prices; pass `minCreditsOut` / `minUbtOut` from
/// `quoteMint` / `quoteRedeem`, which quote exactly that.
///
/// The rolling window is a leaky bucket: `netMinted` rises by the UBT each redemption mints,
/// falls by the UBT each mint burns, never goes below zero, and drains linearly at
/// `redeemCap / window` per second. It needs two storage words instead of a ring of buckets.
/// NOTE: a leaky bucket admits a full `redeemCap` burst and then refills, so any span of one
/// `window` can see up to about twice `redeemCap` redeemed; set the cap with that in mind.
contract BurnMintEquilibrium is AccessControl, ReentrancyGuardTransient, IUnderbidErrors {
    uint256 private constant BPS = 10_000;
    /// @dev UBT has 18 decimals, credits 6, the oracle 8: credits = ubt * price / 10^(18 + 8 - 6).
    uint256 private constant SCALE = 1e20;

    UnderbidToken public immutable ubt;
    UnderbidCredit public immutable credit;
    PriceOracle public immutable oracle;

    /// @dev The mint spread in bps of the credits a mint would give at the oracle price.
    uint16 public mintSpreadBps;
    /// @dev The least credits (base units) one mint may produce.
    uint64 public minMintCredits;
    /// @dev The breaker's cap: UBT (wei) that redemptions may mint, net, per window.
    uint128 public redeemCap;
    /// @dev The breaker's window in seconds.
    uint32 public window;

    uint128 private _netMinted;
    uint64 private _netUpdatedAt;

    /// @dev Public running totals; their net is the BME health figure.
    uint256 public totalUbtBurned;
    uint256 public totalUbtMinted;
    uint256 public totalCreditsMinted;
    uint256 public totalCreditsBurned;

    /// @dev `price` is the one used: the band's low for a mint, its high for a redemption.
    event CreditsMinted(address indexed account, uint256 ubtBurned, uint256 creditsMinted, uint256 price);
    event CreditsRedeemed(address indexed account, uint256 creditsBurned, uint256 ubtMinted, uint256 price);
    event BmeParamsUpdated(uint16 mintSpreadBps, uint64 minMintCredits, uint128 redeemCap, uint32 window);

    /// @param admin Receives the admin role (parameter changes).
    /// @param ubt_ The UBT token; this contract must be bound as its minter.
    /// @param credit_ The credit token; this contract must be bound as its BME.
    /// @param oracle_ The UBT/USD oracle.
    /// Reverts with `InvalidParameter` like `setParams`.
    constructor(
        address admin,
        UnderbidToken ubt_,
        UnderbidCredit credit_,
        PriceOracle oracle_,
        uint16 mintSpreadBps_,
        uint64 minMintCredits_,
        uint128 redeemCap_,
        uint32 window_
    ) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        ubt = ubt_;
        credit = credit_;
        oracle = oracle_;
        _setParams(mintSpreadBps_, minMintCredits_, redeemCap_, window_);
    }

    /// @dev Burns `ubtIn` UBT from the caller and mints credits at the low of the oracle's price band
    /// minus the spread. The caller must have approved this contract for `ubtIn` (or used UBT's permit).
    /// NOTE: after a price rise the band's low is the older, lower price for up to `2 * priceLag`
    /// seconds; `quoteMint` shows what a mint gives now.
    /// @param ubtIn UBT to burn, in wei.
    /// @param minCreditsOut The least credits the caller accepts (slippage bound).
    /// @return creditsOut Credits minted to the caller, in base units.
    /// Reverts with `ZeroAmount`, `PriceNotSet`/`StalePrice`, `MintBelowMinimum`, `SlippageExceeded`,
    /// and UBT's `ERC20InsufficientAllowance`/`ERC20InsufficientBalance`.
    function mintCredits(uint256 ubtIn, uint256 minCreditsOut) external nonReentrant returns (uint256 creditsOut) {
        if (ubtIn == 0) revert ZeroAmount();
        // Slither: mints at the band's low; the high is not needed.
        // slither-disable-next-line unused-return
        (uint256 price,) = oracle.priceBand();
        creditsOut = quoteMintAt(ubtIn, price);
        if (creditsOut < minMintCredits) revert MintBelowMinimum(creditsOut, minMintCredits);
        if (creditsOut < minCreditsOut) revert SlippageExceeded(creditsOut, minCreditsOut);

        uint256 net = netMintedInWindow();
        _netMinted = uint128(net > ubtIn ? net - ubtIn : 0);
        _netUpdatedAt = uint64(block.timestamp);
        totalUbtBurned += ubtIn;
        totalCreditsMinted += creditsOut;

        ubt.burnFrom(msg.sender, ubtIn);
        credit.mint(msg.sender, creditsOut);
        emit CreditsMinted(msg.sender, ubtIn, creditsOut, price);
    }

    /// @dev Burns `creditsIn` of the caller's credits and mints UBT at the high of the oracle's price band.
    /// NOTE: after a price fall the band's high is the older, higher price for up to `2 * priceLag`
    /// seconds; `quoteRedeem` shows what a redemption gives now.
    /// @param creditsIn Credits to redeem, in base units.
    /// @param minUbtOut The least UBT the caller accepts (slippage bound).
    /// @return ubtOut UBT minted to the caller, in wei.
    /// Reverts with `ZeroAmount` (also when the output would round to zero),
    /// `PriceNotSet`/`StalePrice`, `SlippageExceeded`, `RedemptionHalted` when the breaker trips, and
    /// the credit token's `ERC20InsufficientBalance`.
    function redeem(uint256 creditsIn, uint256 minUbtOut) external nonReentrant returns (uint256 ubtOut) {
        if (creditsIn == 0) revert ZeroAmount();
        // Slither: redeems at the band's high; the low is not needed.
        // slither-disable-next-line unused-return
        (, uint256 price) = oracle.priceBand();
        ubtOut = quoteRedeemAt(creditsIn, price);
        if (ubtOut == 0) revert ZeroAmount();
        if (ubtOut < minUbtOut) revert SlippageExceeded(ubtOut, minUbtOut);

        uint256 net = netMintedInWindow();
        if (net + ubtOut > redeemCap) revert RedemptionHalted(net, ubtOut, redeemCap);
        _netMinted = uint128(net + ubtOut);
        _netUpdatedAt = uint64(block.timestamp);
        totalCreditsBurned += creditsIn;
        totalUbtMinted += ubtOut;

        credit.burn(msg.sender, creditsIn);
        ubt.mint(msg.sender, ubtOut);
        emit CreditsRedeemed(msg.sender, creditsIn, ubtOut, price);
    }

    /// @dev Credits that burning `ubtIn` would mint now (at the band's low, as `mintCredits`), before
    /// the minimum-mint check. Reverts with `PriceNotSet`/`StalePrice` like `mintCredits`.
    function quoteMint(uint256 ubtIn) external view returns (uint256) {
        // Slither: quotes a mint at the band's low; the high is not needed.
        // slither-disable-next-line unused-return
        (uint256 price,) = oracle.priceBand();
        return quoteMintAt(ubtIn, price);
    }

    /// @dev UBT that redeeming `creditsIn` would mint now (at the band's high, as `redeem`), before the
    /// breaker check. Reverts with `PriceNotSet`/`StalePrice` like `redeem`.
    function quoteRedeem(uint256 creditsIn) external view returns (uint256) {
        // Slither: quotes a redemption at the band's high; the low is not needed.
        // slither-disable-next-line unused-return
        (, uint256 price) = oracle.priceBand();
        return quoteRedeemAt(creditsIn, price);
    }

    /// @dev Credits for `ubtIn` at `price`, after the spread, rounded down. Reverts (`Math`'s overflow
    /// panic) only when the result would not fit in 256 bits.
    function quoteMintAt(uint256 ubtIn, uint256 price) public view returns (uint256) {
        return Math.mulDiv(ubtIn, price * (BPS - mintSpreadBps), SCALE * BPS);
    }

    /// @dev UBT for `creditsIn` at `price`, rounded down. Reverts (panic) for a zero price or a
    /// result that would not fit in 256 bits.
    function quoteRedeemAt(uint256 creditsIn, uint256 price) public pure returns (uint256) {
        return Math.mulDiv(creditsIn, SCALE, price);
    }

    /// @dev Net UBT minted by redemptions in the rolling window (the leaky bucket's level now). Never reverts.
    function netMintedInWindow() public view returns (uint256) {
        uint256 drained = Math.mulDiv(block.timestamp - _netUpdatedAt, redeemCap, window);
        uint256 net = _netMinted;
        return net > drained ? net - drained : 0;
    }

    /// @dev UBT that redemptions may still mint before the breaker trips. Never reverts.
    function redeemableUbt() external view returns (uint256) {
        uint256 net = netMintedInWindow();
        return net >= redeemCap ? 0 : redeemCap - net;
    }

    /// @dev Sets the spread, minimum mint and breaker. Only the admin role.
    /// Reverts with `InvalidParameter` and, for another caller, `AccessControlUnauthorizedAccount`.
    function setParams(uint16 mintSpreadBps_, uint64 minMintCredits_, uint128 redeemCap_, uint32 window_)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        // Settle the bucket at the old drain rate before the rate changes.
        _netMinted = uint128(netMintedInWindow());
        _netUpdatedAt = uint64(block.timestamp);
        _setParams(mintSpreadBps_, minMintCredits_, redeemCap_, window_);
    }

    /// @dev Validates and stores the parameters. Reverts with `InvalidParameter`.
    function _setParams(uint16 mintSpreadBps_, uint64 minMintCredits_, uint128 redeemCap_, uint32 window_) private {
        if (mintSpreadBps_ >= BPS) revert InvalidParameter("mintSpreadBps");
        if (window_ == 0) revert InvalidParameter("window");
        if (minMintCredits_ == 0) revert InvalidParameter("minMintCredits");
        mintSpreadBps = mintSpreadBps_;
        minMintCredits = minMintCredits_;
        redeemCap = redeemCap_;
        window = window_;
        emit BmeParamsUpdated(mintSpreadBps_, minMintCredits_, redeemCap_, window_);
    }
}
