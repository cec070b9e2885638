// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {UnderbidBase} from "./UnderbidBase.sol";

/// @title Matcher binding: each account trades through one matcher at a time.
/// @dev Only the matcher an account is bound to may settle its orders and bids, and so lock its
/// escrow or stake. Another matcher therefore cannot make a batch revert by spending the same
/// funds, nonces or stake first. Binding an unbound account takes effect at once (no matcher can
/// be relying on it); any later change takes effect after `noticePeriod`, so a matcher's batches
/// in flight always land while the binding they were simulated against still holds.
abstract contract MatcherBinding is UnderbidBase {
    /// @dev An account's binding as `bindingOf` returns it.
    struct Binding {
        /// The matcher bound until `changeAt` (or for good while `changeAt` is zero).
        address matcher;
        /// When `next` takes over; zero when no change is pending.
        uint40 changeAt;
        /// The matcher bound from `changeAt` on (zero: unbound).
        address next;
        /// When the account last asked to change its matcher; challenges read it.
        uint40 requestedAt;
    }

    /// @dev The stored binding: `Binding` plus the account's compact id, packed into the first
    /// word beside the matcher, so the binding read `settle` already makes yields the id for free.
    struct BindingRecord {
        address matcher;
        uint40 changeAt;
        /// The account's compact id (1, 2, ...), given at its first `bindMatcher`; leases store
        /// ids instead of addresses so that a lease fits one storage word.
        uint32 id;
        address next;
        uint40 requestedAt;
    }

    // Slither: written through the storage pointer in bindMatcher (a Slither false positive).
    // slither-disable-next-line uninitialized-state
    mapping(address => BindingRecord) internal _bindings;
    /// @dev Compact account id => account (see `BindingRecord.id`).
    mapping(uint32 => address) public accountAt;
    /// @dev The last account id given.
    uint32 internal _accountCount;

    /// @dev Binds the caller to `matcher`: at once if the caller is unbound with nothing pending,
    /// otherwise after `noticePeriod`. A new request replaces a pending one; `address(0)` unbinds.
    /// NOTE: while a change is pending an honest matcher takes no new messages from the account.
    /// The first call also gives the caller its compact account id.
    function bindMatcher(address matcher) external {
        BindingRecord storage binding = _bindings[msg.sender];
        if (binding.id == 0) {
            uint32 id = ++_accountCount;
            binding.id = id;
            accountAt[id] = msg.sender;
        }
        address current = boundMatcherOf(msg.sender);
        bool pending = binding.changeAt != 0 && block.timestamp < binding.changeAt;
        uint256 effectiveAt = block.timestamp;
        if (current == address(0) && !pending) {
            binding.matcher = matcher;
            binding.changeAt = 0;
            binding.next = address(0);
        } else {
            effectiveAt = block.timestamp + noticePeriod;
            binding.matcher = current;
            binding.changeAt = uint40(effectiveAt);
            binding.next = matcher;
            binding.requestedAt = uint40(block.timestamp);
        }
        emit MatcherBound(msg.sender, matcher, effectiveAt);
    }

    /// @dev The matcher that may settle `account`'s messages now (zero: none).
    function boundMatcherOf(address account) public view returns (address) {
        BindingRecord storage binding = _bindings[account];
        uint256 changeAt = binding.changeAt;
        if (changeAt != 0 && block.timestamp >= changeAt) return binding.next;
        return binding.matcher;
    }

    /// @dev The whole binding record: current matcher, pending change and when it was asked for.
    function bindingOf(address account) external view returns (Binding memory) {
        BindingRecord storage binding = _bindings[account];
        return Binding(binding.matcher, binding.changeAt, binding.next, binding.requestedAt);
    }

    /// @dev Reverts with `AccountNotBound` unless `account` is bound to `matcher` now.
    /// @return id The account's compact id (non-zero: a bound account has bound once).
    /// NOTE: `boundMatcherOf` on the raw first word of the record, which holds the matcher, the
    /// change time and the id (Solidity's layout of `BindingRecord`): `settle` calls this for
    /// every message, and reading the fields one by one cost a second hash and read.
    function _requireBound(address account, address matcher) internal view returns (uint32 id) {
        BindingRecord storage binding = _bindings[account];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(binding.slot)
        }
        uint256 changeAt = uint40(word >> 160);
        address current = changeAt != 0 && block.timestamp >= changeAt ? binding.next : address(uint160(word));
        if (current != matcher) revert AccountNotBound(account, matcher);
        return uint32(word >> 200);
    }

    /// @dev True if `account` is bound to `matcher` now and has not asked to change since `since`.
    function _boundSince(address account, address matcher, uint256 since) internal view returns (bool) {
        return boundMatcherOf(account) == matcher && _bindings[account].requestedAt < since;
    }
}
