// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Provider registration, stake, unbonding and slashing.
/// @dev `staked` includes `locked` (collateral of open leases) and excludes `unbonding`. Only
/// `staked - locked` can start unbonding, so a provider can never unbond the collateral a pending
/// fault would slash. Unbonding stake stays in this contract, and `_slash` may reach it as well.
abstract contract ProviderStaking is UnderbidBase {
    using SafeERC20 for *;

    struct ProviderAccount {
        uint128 staked;
        uint128 locked;
        uint128 unbonding;
        uint40 unbondingEnd;
        /// Last time stake went down (unstake request or slash); read by matcher challenges.
        uint40 stakeDecreasedAt;
        bool registered;
    }

    /// @dev Which matcher last locked a provider's stake, and when. A matcher's receipt promises
    /// the provider's stake was free for the bid; a lock by *another* matcher after the receipt
    /// breaks that promise without any stake decrease, so challenges read this record.
    struct StakeLocks {
        address lastLocker;
        uint40 lastLockAt;
        /// Last time a lock came from a different matcher than the one before it.
        uint40 lockerChangedAt;
    }

    mapping(address => ProviderAccount) public providers;
    mapping(address => StakeLocks) public stakeLocks;
    mapping(address => string) public metadataURI;

    /// @dev Registers the caller as a provider. Reverts with `AlreadyRegistered`.
    /// @param uri Where the provider describes itself (hardware, region, contact).
    function register(string calldata uri) external {
        ProviderAccount storage account = providers[msg.sender];
        if (account.registered) revert AlreadyRegistered(msg.sender);
        account.registered = true;
        metadataURI[msg.sender] = uri;
        emit ProviderRegistered(msg.sender, uri);
    }

    /// @dev Replaces the caller's metadata URI. Reverts with `NotRegistered`.
    function updateMetadata(string calldata uri) external {
        if (!providers[msg.sender].registered) revert NotRegistered(msg.sender);
        metadataURI[msg.sender] = uri;
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

    /// @dev Starts unbonding `amount` of free stake. A second request adds to the first and
    /// restarts the unbonding period.
    /// Reverts with `ZeroAmount` and `InsufficientFreeStake` (locked collateral cannot unbond).
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        ProviderAccount storage account = providers[msg.sender];
        uint256 free = account.staked - account.locked;
        if (amount > free) revert InsufficientFreeStake(msg.sender, amount, free);
        account.staked -= uint128(amount);
        account.unbonding += uint128(amount);
        uint256 unlocksAt = block.timestamp + params.unbondingPeriod;
        account.unbondingEnd = uint40(unlocksAt);
        account.stakeDecreasedAt = uint40(block.timestamp);
        emit UnstakeRequested(msg.sender, amount, unlocksAt);
    }

    /// @dev Sends the caller's unbonded stake back once the unbonding period is over.
    /// Reverts with `NothingUnbonding` and `UnbondingNotFinished`.
    function withdrawUnbonded() external nonReentrant {
        ProviderAccount storage account = providers[msg.sender];
        uint256 amount = account.unbonding;
        if (amount == 0) revert NothingUnbonding(msg.sender);
        if (block.timestamp < account.unbondingEnd) revert UnbondingNotFinished(account.unbondingEnd);
        account.unbonding = 0;
        ubt.safeTransfer(msg.sender, amount);
        emit UnbondedWithdrawn(msg.sender, amount);
    }

    /// @dev Stake that can back new leases or start unbonding.
    function freeStake(address provider) public view returns (uint256) {
        ProviderAccount storage account = providers[provider];
        return account.staked - account.locked;
    }

    /// @dev Locks `amount` of free stake as collateral for a lease settled by `matcher`.
    /// Reverts with `InsufficientFreeStake`.
    function _lockStake(address provider, uint256 amount, address matcher) internal {
        ProviderAccount storage account = providers[provider];
        uint256 staked = account.staked;
        uint256 locked = account.locked;
        if (staked - locked < amount) revert InsufficientFreeStake(provider, amount, staked - locked);
        account.locked = uint128(locked + amount);

        StakeLocks storage locks = stakeLocks[provider];
        // Written once per provider and block: later matches of the same batch find it current.
        if (locks.lastLockAt != block.timestamp || locks.lastLocker != matcher) {
            address previous = locks.lastLocker;
            if (previous != matcher && previous != address(0)) locks.lockerChangedAt = uint40(block.timestamp);
            locks.lastLocker = matcher;
            locks.lastLockAt = uint40(block.timestamp);
        }
    }

    /// @dev True if a matcher other than `matcher` may have locked `provider`'s stake at or after `since`.
    function _lockedByOtherSince(address provider, address matcher, uint256 since) internal view returns (bool) {
        StakeLocks storage locks = stakeLocks[provider];
        return locks.lockerChangedAt >= since || (locks.lastLocker != matcher && locks.lastLockAt >= since);
    }

    /// @dev Unlocks `amount` of collateral.
    function _unlockStake(address provider, uint256 amount) internal {
        providers[provider].locked -= uint128(amount);
    }

    /// @dev Removes `amount` from `provider`'s stake, first from `staked`, then from `unbonding`.
    /// Callers pass at most the collateral they just unlocked, so `staked` always covers it;
    /// the unbonding branch keeps the rule "leaving never escapes a penalty" true by construction.
    function _slash(address provider, uint256 amount) internal {
        ProviderAccount storage account = providers[provider];
        uint256 fromStaked = amount <= account.staked ? amount : account.staked;
        account.staked -= uint128(fromStaked);
        account.unbonding -= uint128(amount - fromStaked);
        account.stakeDecreasedAt = uint40(block.timestamp);
    }
}
