// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Provider registration, stake, unbonding and slashing.
/// @dev `staked` includes `locked` (collateral of open leases) and, until it is withdrawn, the
/// `unbonding` amount. Unstaking is announced: the amount stays staked, and lockable by
/// settlement, until `unbondingEnd`, so no unstake can land between a matcher's simulation and its
/// batch and make the batch revert; then at most the free stake leaves. Locked collateral never
/// leaves, so leaving cannot escape a pending fault.
abstract contract ProviderStaking is UnderbidBase {
    using SafeERC20 for *;

    struct ProviderAccount {
        uint128 staked;
        uint128 locked;
        /// Announced to leave at `unbondingEnd`; still part of `staked` until withdrawn.
        uint128 unbonding;
        uint40 unbondingEnd;
        /// Last time stake was announced to go down or was slashed; read by matcher challenges.
        uint40 stakeDecreasedAt;
        bool registered;
    }

    mapping(address => ProviderAccount) public providers;
    // A provider's metadata URI lives only in its `ProviderRegistered` / `MetadataUpdated` events
    // (the latest one is current): a string in storage cost ~1 KB of the core's code, at the 24 KiB limit.

    /// @dev Registers the caller as a provider. Reverts with `AlreadyRegistered`.
    /// @param uri Where the provider describes itself (hardware, region, contact); published in
    /// the `ProviderRegistered` event, not stored.
    function register(string calldata uri) external {
        ProviderAccount storage account = providers[msg.sender];
        if (account.registered) revert AlreadyRegistered(msg.sender);
        account.registered = true;
        emit ProviderRegistered(msg.sender, uri);
    }

    /// @dev Replaces the caller's metadata URI (published in a `MetadataUpdated` event, which
    /// supersedes the earlier ones). Reverts with `NotRegistered`.
    function updateMetadata(string calldata uri) external {
        if (!providers[msg.sender].registered) revert NotRegistered(msg.sender);
        emit MetadataUpdated(msg.sender, uri);
    }

    /// @dev Pulls `amount` UBT from the caller into stake (the caller approves this contract first).
    /// Reverts with `ZeroAmount` and `NotRegistered`.
    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        ProviderAccount storage account = providers[msg.sender];
        if (!account.registered) revert NotRegistered(msg.sender);
        account.staked += SafeCast.toUint128(amount);
        ubt.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(msg.sender, amount);
    }

    /// @dev Announces that `amount` of stake will leave after the unbonding period (at least
    /// `noticePeriod`). A second request adds to the first and restarts the period.
    /// Reverts with `ZeroAmount` and `InsufficientFreeStake` (more than the free stake not yet
    /// announced to leave).
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        ProviderAccount storage account = providers[msg.sender];
        uint256 available = availableStake(msg.sender);
        if (amount > available) revert InsufficientFreeStake(msg.sender, amount, available);
        account.unbonding += uint128(amount);
        uint256 period = params.unbondingPeriod > noticePeriod ? params.unbondingPeriod : noticePeriod;
        uint256 unlocksAt = block.timestamp + period;
        account.unbondingEnd = uint40(unlocksAt);
        account.stakeDecreasedAt = uint40(block.timestamp);
        emit UnstakeRequested(msg.sender, amount, unlocksAt);
    }

    /// @dev Sends the caller the announced amount, or its free stake if that is less now.
    /// Reverts with `NothingUnbonding` and `UnbondingNotFinished`.
    function withdrawUnbonded() external nonReentrant {
        ProviderAccount storage account = providers[msg.sender];
        uint256 amount = account.unbonding;
        if (amount == 0) revert NothingUnbonding(msg.sender);
        if (block.timestamp < account.unbondingEnd) revert UnbondingNotFinished(account.unbondingEnd);
        uint256 free = account.staked - account.locked;
        if (amount > free) amount = free;
        account.unbonding = 0;
        account.staked -= uint128(amount);
        if (amount != 0) ubt.safeTransfer(msg.sender, amount);
        emit UnbondedWithdrawn(msg.sender, amount);
    }

    /// @dev Stake not locked as collateral (it may still be announced to leave).
    function freeStake(address provider) public view returns (uint256) {
        ProviderAccount storage account = providers[provider];
        return account.staked - account.locked;
    }

    /// @dev Stake a matcher may commit to new leases: free stake minus any announced unstake.
    function availableStake(address provider) public view returns (uint256) {
        ProviderAccount storage account = providers[provider];
        uint256 free = account.staked - account.locked;
        uint256 leaving = account.unbonding;
        return free > leaving ? free - leaving : 0;
    }

    /// @dev Locks `amount` of free stake as collateral for a lease. Reverts with `InsufficientFreeStake`.
    /// NOTE: one read and one write of the raw first word of the account (`staked` in the low
    /// 128 bits, `locked` in the high ones: Solidity's layout of `ProviderAccount`); `settle`
    /// locks once per match, and the field-by-field update read the word three times.
    function _lockStake(address provider, uint256 amount) internal {
        ProviderAccount storage account = providers[provider];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(account.slot)
        }
        uint256 staked = uint128(word);
        uint256 locked = word >> 128;
        if (staked - locked < amount) revert InsufficientFreeStake(provider, amount, staked - locked);
        // Safe: locked + amount <= staked < 2^128, so the new `locked` fits its 128 bits.
        assembly ("memory-safe") {
            sstore(account.slot, or(staked, shl(128, add(locked, amount))))
        }
    }

    /// @dev Unlocks `amount` of collateral.
    function _unlockStake(address provider, uint256 amount) internal {
        providers[provider].locked -= uint128(amount);
    }

    /// @dev Removes `amount` from `provider`'s stake. Callers pass at most the collateral they
    /// just unlocked, so `staked` always covers it.
    function _slash(address provider, uint256 amount) internal {
        ProviderAccount storage account = providers[provider];
        account.staked -= uint128(amount);
        account.stakeDecreasedAt = uint40(block.timestamp);
    }
}
