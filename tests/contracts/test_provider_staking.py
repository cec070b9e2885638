"""ProviderStaking: registration, metadata, stake, unbonding, and why unbonding cannot dodge a slash.

Time travel: `chain.pending_timestamp = t` fixes the timestamp of the next mined block (anvil
`evm_setNextBlockTimestamp`), so every time-dependent figure below is exact.
"""

import ape
import pytest

from ..conftest import H100, HOUR, UBC, UBT
from ..reverts import reverts


@pytest.fixture
def unit(params):
    """UBT collateral per leased unit."""
    return params.stake_per_unit


def give_and_approve(market, ubt, settlement, account, amount):
    market.give_ubt(account, amount)
    ubt.approve(settlement, amount, sender=account)


def open_lease(market, buyer, provider, *, units, duration=2 * HOUR, price=2 * UBC):
    market.fund_buyer(buyer, 1_000 * UBC)
    order = market.order(buyer, units=units, duration=duration, max_price=price)
    bid = market.bid(provider, capacity=units, price=price, max_duration=duration)
    receipt = market.settle([order], [bid], [(0, 0, units)], {H100: price})
    [lease_id] = market.lease_ids(receipt)
    return lease_id


# ----- register / updateMetadata -----


def current_metadata(settlement, provider) -> str:
    """A provider's metadata URI: the latest `ProviderRegistered` / `MetadataUpdated` event's (the
    contract keeps it in events only, to save code size); empty if it never registered."""
    logs = [
        log for event in (settlement.ProviderRegistered, settlement.MetadataUpdated)
        for log in event.range(0, settlement.chain_manager.blocks.height + 1, search_topics={"provider": provider})
    ]
    logs.sort(key=lambda log: (log.block_number, log.log_index))
    return logs[-1].metadataURI if logs else ""


def test_register_publishes_uri_and_emits_event(settlement, providers):
    provider = providers[0]
    assert not settlement.providers(provider).registered
    receipt = settlement.register("ipfs://bafy-provider-0/meta.json", sender=provider)

    [log] = receipt.decode_logs(settlement.ProviderRegistered)
    assert log.event_arguments["provider"] == provider.address
    assert log.metadataURI == "ipfs://bafy-provider-0/meta.json"
    account = settlement.providers(provider)
    assert account.registered
    assert (account.staked, account.locked, account.unbonding) == (0, 0, 0)
    assert current_metadata(settlement, provider) == "ipfs://bafy-provider-0/meta.json"
    assert settlement.freeStake(provider) == 0


def test_register_twice_is_refused(settlement, providers):
    provider = providers[0]
    settlement.register("https://first.example/meta.json", sender=provider)
    with ape.reverts(settlement.AlreadyRegistered, provider=provider.address):
        settlement.register("https://second.example/meta.json", sender=provider)
    assert current_metadata(settlement, provider) == "https://first.example/meta.json"


def test_update_metadata(settlement, providers, outsider):
    with ape.reverts(settlement.NotRegistered, provider=outsider.address):
        settlement.updateMetadata("https://nobody.example", sender=outsider)
    assert current_metadata(settlement, outsider) == ""

    provider = providers[1]
    settlement.register("https://old.example/meta.json", sender=provider)
    receipt = settlement.updateMetadata("https://new.example/meta.json", sender=provider)
    [log] = receipt.decode_logs(settlement.MetadataUpdated)
    assert log.event_arguments["provider"] == provider.address and log.metadataURI == "https://new.example/meta.json"
    assert current_metadata(settlement, provider) == "https://new.example/meta.json"
    assert settlement.providers(provider).registered


# ----- stake -----


def test_stake_needs_registration(market, settlement, ubt, providers, unit):
    provider = providers[0]
    give_and_approve(market, ubt, settlement, provider, 3 * unit)
    with ape.reverts(settlement.NotRegistered, provider=provider.address):
        settlement.stake(3 * unit, sender=provider)
    assert ubt.balanceOf(provider) == 3 * unit
    assert settlement.providers(provider).staked == 0


def test_stake_zero_is_refused(market, settlement, ubt, providers):
    provider = providers[0]
    settlement.register("https://p.example", sender=provider)
    with ape.reverts(settlement.ZeroAmount):
        settlement.stake(0, sender=provider)


def test_stake_moves_ubt_and_adds_up(market, settlement, ubt, providers, unit):
    provider = providers[0]
    settlement.register("https://p.example", sender=provider)
    give_and_approve(market, ubt, settlement, provider, 5 * unit)
    held_before = ubt.balanceOf(settlement)

    receipt = settlement.stake(2 * unit, sender=provider)
    [log] = receipt.decode_logs(settlement.Staked)
    assert log.event_arguments["provider"] == provider.address and log.amount == 2 * unit
    settlement.stake(3 * unit, sender=provider)

    assert settlement.providers(provider).staked == 5 * unit
    assert settlement.freeStake(provider) == 5 * unit
    assert ubt.balanceOf(provider) == 0
    assert ubt.balanceOf(settlement) == held_before + 5 * unit


def test_stake_without_approval_reverts(market, settlement, ubt, providers, unit):
    provider = providers[0]
    settlement.register("https://p.example", sender=provider)
    market.give_ubt(provider, unit)
    with ape.reverts():
        settlement.stake(unit, sender=provider)
    assert settlement.providers(provider).staked == 0
    assert ubt.balanceOf(provider) == unit


# ----- requestUnstake -----


def test_request_unstake_zero_is_refused(market, settlement, providers):
    market.stake_provider(providers[0], 2)
    with ape.reverts(settlement.ZeroAmount):
        settlement.requestUnstake(0, sender=providers[0])


def test_request_unstake_more_than_staked(market, settlement, providers, outsider, unit):
    market.stake_provider(providers[0], 2)
    with ape.reverts(settlement.InsufficientFreeStake, required=2 * unit + 1, free=2 * unit):
        settlement.requestUnstake(2 * unit + 1, sender=providers[0])
    # Someone who never staked has nothing free.
    with ape.reverts(settlement.InsufficientFreeStake, provider=outsider.address, required=1, free=0):
        settlement.requestUnstake(1, sender=outsider)


def test_request_unstake_starts_unbonding(market, settlement, providers, chain, params, unit):
    provider = providers[0]
    market.stake_provider(provider, 5)
    t0 = chain.pending_timestamp + 10
    chain.pending_timestamp = t0
    receipt = settlement.requestUnstake(2 * unit, sender=provider)

    [log] = receipt.decode_logs(settlement.UnstakeRequested)
    assert log.event_arguments["provider"] == provider.address
    assert log.amount == 2 * unit and log.unlocksAt == t0 + params.unbonding_period
    # The announced amount stays staked (and lockable) until unbondingEnd; only a matcher's
    # view of what it may commit (availableStake) drops at once.
    account = settlement.providers(provider)
    assert account.staked == 5 * unit and account.unbonding == 2 * unit
    assert account.unbondingEnd == t0 + params.unbonding_period
    assert account.stakeDecreasedAt == t0
    assert settlement.freeStake(provider) == 5 * unit
    assert settlement.availableStake(provider) == 3 * unit
    # A second request may announce only what is not announced yet.
    with reverts(settlement.InsufficientFreeStake, provider=provider, required=3 * unit + 1, free=3 * unit):
        settlement.requestUnstake(3 * unit + 1, sender=provider)


def test_locked_collateral_cannot_unbond(market, settlement, buyers, providers, unit):
    provider = providers[0]
    market.stake_provider(provider, 8)
    lease_id = open_lease(market, buyers[0], provider, units=3)
    assert settlement.providers(provider).locked == 3 * unit
    assert settlement.freeStake(provider) == 5 * unit

    with ape.reverts(settlement.InsufficientFreeStake, provider=provider.address, required=5 * unit + 1, free=5 * unit):
        settlement.requestUnstake(5 * unit + 1, sender=provider)
    with ape.reverts(settlement.InsufficientFreeStake, required=8 * unit, free=5 * unit):
        settlement.requestUnstake(8 * unit, sender=provider)

    settlement.requestUnstake(5 * unit, sender=provider)
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (8 * unit, 3 * unit, 5 * unit)
    assert settlement.freeStake(provider) == 5 * unit
    assert settlement.availableStake(provider) == 0
    with ape.reverts(settlement.InsufficientFreeStake, required=1, free=0):
        settlement.requestUnstake(1, sender=provider)

    # Once the lease closes, its collateral is free again and may unbond.
    settlement.close(lease_id, sender=buyers[0])
    assert settlement.freeStake(provider) == 8 * unit
    assert settlement.availableStake(provider) == 3 * unit
    settlement.requestUnstake(3 * unit, sender=provider)
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (8 * unit, 0, 8 * unit)
    assert settlement.availableStake(provider) == 0


# ----- withdrawUnbonded -----


def test_withdraw_unbonded_without_request(market, settlement, providers, outsider):
    with ape.reverts(settlement.NothingUnbonding, provider=outsider.address):
        settlement.withdrawUnbonded(sender=outsider)
    market.stake_provider(providers[0], 1)
    with ape.reverts(settlement.NothingUnbonding, provider=providers[0].address):
        settlement.withdrawUnbonded(sender=providers[0])


def test_withdraw_unbonded_only_after_period(market, settlement, ubt, providers, chain, params, unit):
    provider = providers[0]
    market.stake_provider(provider, 4)
    t0 = chain.pending_timestamp + 5
    chain.pending_timestamp = t0
    settlement.requestUnstake(3 * unit, sender=provider)
    unlocks_at = t0 + params.unbonding_period

    chain.pending_timestamp = unlocks_at - 1
    with ape.reverts(settlement.UnbondingNotFinished, unlocksAt=unlocks_at):
        settlement.withdrawUnbonded(sender=provider)
    assert ubt.balanceOf(provider) == 0

    chain.pending_timestamp = unlocks_at
    held_before = ubt.balanceOf(settlement)
    receipt = settlement.withdrawUnbonded(sender=provider)
    [log] = receipt.decode_logs(settlement.UnbondedWithdrawn)
    assert log.event_arguments["provider"] == provider.address and log.amount == 3 * unit
    assert ubt.balanceOf(provider) == 3 * unit
    assert ubt.balanceOf(settlement) == held_before - 3 * unit
    account = settlement.providers(provider)
    assert (account.staked, account.unbonding) == (unit, 0)

    with ape.reverts(settlement.NothingUnbonding):
        settlement.withdrawUnbonded(sender=provider)


def test_second_request_adds_and_restarts_the_period(market, settlement, ubt, providers, chain, params, unit):
    provider = providers[0]
    period = params.unbonding_period
    market.stake_provider(provider, 4)
    t0 = chain.pending_timestamp + 5
    chain.pending_timestamp = t0
    settlement.requestUnstake(unit, sender=provider)
    chain.pending_timestamp = t0 + period // 2
    settlement.requestUnstake(2 * unit, sender=provider)

    account = settlement.providers(provider)
    assert account.unbonding == 3 * unit and account.unbondingEnd == t0 + period // 2 + period
    chain.pending_timestamp = t0 + period
    with ape.reverts(settlement.UnbondingNotFinished, unlocksAt=t0 + period // 2 + period):
        settlement.withdrawUnbonded(sender=provider)
    chain.pending_timestamp = t0 + period // 2 + period
    settlement.withdrawUnbonded(sender=provider)
    assert ubt.balanceOf(provider) == 3 * unit


# ----- freeStake -----


def test_free_stake_view_follows_stake_locks_and_unbonding(market, settlement, buyers, providers, outsider, unit):
    provider = providers[2]
    assert settlement.freeStake(outsider) == 0
    market.stake_provider(provider, 6)
    assert settlement.freeStake(provider) == 6 * unit
    lease_a = open_lease(market, buyers[0], provider, units=2)
    assert settlement.freeStake(provider) == 4 * unit
    market.fund_buyer(buyers[1], 1_000 * UBC)
    order = market.order(buyers[1], units=3, max_price=2 * UBC)
    bid = market.bid(provider, capacity=3, price=2 * UBC)
    market.settle([order], [bid], [(0, 0, 3)], {H100: 2 * UBC})
    assert settlement.freeStake(provider) == 1 * unit
    assert settlement.availableStake(provider) == 1 * unit
    settlement.requestUnstake(unit, sender=provider)
    assert settlement.freeStake(provider) == 1 * unit
    assert settlement.availableStake(provider) == 0
    settlement.close(lease_a, sender=buyers[0])
    assert settlement.freeStake(provider) == 3 * unit
    assert settlement.availableStake(provider) == 2 * unit
    account = settlement.providers(provider)
    assert account.staked - account.locked == settlement.freeStake(provider)
    assert account.staked - account.locked - account.unbonding == settlement.availableStake(provider)
    assert account.locked == 3 * unit


# ----- unbonding cannot dodge a pending fault -----


def test_unstake_cannot_dodge_a_pending_fault(
    market, settlement, ubt, buyers, providers, outsider, chain, params, unit
):
    """A provider stops heartbeating, then tries to pull out everything it can before the report."""
    provider, buyer = providers[0], buyers[0]
    market.stake_provider(provider, 8)
    lease_id = open_lease(market, buyer, provider, units=4)
    lease = settlement.getLease(lease_id)
    collateral = 4 * unit
    chain.pending_timestamp = lease.start + 30
    settlement.heartbeat([lease_id], sender=provider)  # last heartbeat; silence from here on

    reportable_at = lease.start + 30 + params.heartbeat_interval + params.heartbeat_grace + 1
    assert settlement.faultReportableAt(lease_id) == reportable_at

    # Before the fault is reportable, the provider unbonds all it can. The collateral is not part of it.
    chain.pending_timestamp = reportable_at - 20
    with ape.reverts(settlement.InsufficientFreeStake, required=8 * unit, free=4 * unit):
        settlement.requestUnstake(8 * unit, sender=provider)
    with ape.reverts(settlement.InsufficientFreeStake, required=4 * unit + 1, free=4 * unit):
        settlement.requestUnstake(4 * unit + 1, sender=provider)
    settlement.requestUnstake(settlement.freeStake(provider), sender=provider)
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (8 * unit, collateral, 4 * unit)

    chain.pending_timestamp = reportable_at - 1
    with ape.reverts(settlement.HeartbeatNotMissed, reportableAt=reportable_at):
        settlement.reportFault(lease_id, sender=outsider)

    supply_before = ubt.totalSupply()
    chain.pending_timestamp = reportable_at
    receipt = settlement.reportFault(lease_id, sender=outsider)
    slashed = collateral * params.slash_bps // 10_000
    burned = slashed - slashed * params.slash_buyer_bps // 10_000 - slashed * params.slash_reporter_bps // 10_000
    [log] = receipt.decode_logs(settlement.FaultReported)
    assert log.slashed == slashed == 200 * UBT

    # The collateral stayed locked until the report and was slashed; the unbonding part is untouched.
    account = settlement.providers(provider)
    assert account.locked == 0
    assert account.staked == 8 * unit - slashed
    assert account.unbonding == 4 * unit
    assert ubt.totalSupply() == supply_before - burned

    # After unbonding the provider recovers the unbonded part and the unslashed collateral, no more.
    chain.pending_timestamp = account.unbondingEnd
    assert settlement.withdrawUnbonded(sender=provider).decode_logs(settlement.UnbondedWithdrawn)[0].amount == 4 * unit
    settlement.requestUnstake(settlement.freeStake(provider), sender=provider)
    chain.pending_timestamp = settlement.providers(provider).unbondingEnd
    settlement.withdrawUnbonded(sender=provider)
    assert ubt.balanceOf(provider) == 8 * unit - slashed
    assert settlement.providers(provider).staked == 0


# ----- announced stake stays lockable; the withdrawal sends min(unbonding, free) -----


def test_announced_stake_stays_lockable_until_unbonding_end(
    market, settlement, ubt, buyers, providers, chain, params, unit
):
    """A matcher that simulated against the stake before the announcement still lands its batch;
    the withdrawal then sends only what is free."""
    provider = providers[0]
    market.stake_provider(provider, 8)
    settlement.requestUnstake(8 * unit, sender=provider)
    assert settlement.availableStake(provider) == 0
    unbonding_end = settlement.providers(provider).unbondingEnd

    lease_id = open_lease(market, buyers[0], provider, units=3)
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (8 * unit, 3 * unit, 8 * unit)

    chain.pending_timestamp = unbonding_end
    receipt = settlement.withdrawUnbonded(sender=provider)
    [log] = receipt.decode_logs(settlement.UnbondedWithdrawn)
    assert log.amount == 5 * unit
    assert ubt.balanceOf(provider) == 5 * unit
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (3 * unit, 3 * unit, 0)
    assert settlement.freeStake(provider) == 0 and settlement.availableStake(provider) == 0
    # The collateral is still locked for the lease, which ends normally.
    assert settlement.getLease(lease_id).units == 3


def test_withdraw_unbonded_sends_nothing_when_all_is_locked(market, settlement, ubt, buyers, providers, chain, unit):
    provider = providers[0]
    market.stake_provider(provider, 2)
    settlement.requestUnstake(2 * unit, sender=provider)
    open_lease(market, buyers[0], provider, units=2)
    chain.pending_timestamp = settlement.providers(provider).unbondingEnd
    receipt = settlement.withdrawUnbonded(sender=provider)
    assert receipt.decode_logs(settlement.UnbondedWithdrawn)[0].amount == 0
    assert ubt.balanceOf(provider) == 0
    account = settlement.providers(provider)
    assert (account.staked, account.locked, account.unbonding) == (2 * unit, 2 * unit, 0)
    with reverts(settlement.NothingUnbonding, provider=provider):
        settlement.withdrawUnbonded(sender=provider)


def test_available_stake_of_an_outsider_is_zero(settlement, outsider):
    assert settlement.availableStake(outsider) == 0
    assert settlement.freeStake(outsider) == 0
