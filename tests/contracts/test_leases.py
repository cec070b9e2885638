"""Leases: heartbeats, claims (both skip closed or faulty leases), closing, fault reports and
slashing, live balances, and versioned parameters set through the timelock.

Every amount is checked against a Python reference of the accrual rule:
`accrued(t) = units * price * (min(t, end) - start) // 3600`, cumulative, paid only for time covered
by heartbeats (the last heartbeat, or the start, plus one interval).

Time travel: `chain.pending_timestamp = t` fixes the timestamp of the next mined block (anvil
`evm_setNextBlockTimestamp`), and `chain.mine(timestamp=t)` mines an empty block for views.
Reverting views are called with `.transact` so ape decodes the custom error.
"""

from __future__ import annotations

from dataclasses import dataclass

import ape
import pytest

from ..conftest import A100, H100, HOUR
from ..governance import execute, schedule, through_timelock
from ..reverts import reverts

MAX_UINT = 2**256 - 1
BPS = 10_000
# Prices with remainders, so the per-second rounding is exercised.
P1 = 2_345_677
P2 = 1_999_999
UNKNOWN = b"\x42" * 32
# LeaseSkipped reasons (SkipReason).
SKIP_CLOSED, SKIP_ENDED, SKIP_FAULT_PENDING = 0, 1, 2


@dataclass
class Lease:
    id: bytes
    buyer: object
    provider: object
    units: int
    price: int
    start: int
    end: int

    def acc(self, t: int) -> int:
        t = min(max(t, self.start), self.end)
        return self.units * self.price * (t - self.start) // HOUR

    @property
    def cost(self) -> int:
        return self.units * self.price * (self.end - self.start) // HOUR


def args(log):
    return log.event_arguments


def paid_to(receipt, credit, settlement, provider) -> int:
    """Credits the receipt paid `provider`: the credit's `Transfer`s from the settlement (payments
    have no event of their own; see PROTOCOL.md, Leases)."""
    return sum(
        args(log)["value"] for log in receipt.decode_logs(credit.Transfer)
        # decode_logs matches the event by its signature only, and UBT's Transfer has the same one
        if log.contract_address == credit.address
        and args(log)["from"] == settlement.address and args(log)["to"] == provider.address
    )


def at(chain, t: int) -> None:
    chain.pending_timestamp = t


def open_lease(m, buyer, provider, *, units=3, duration=2 * HOUR, price=P1, round_id=None, market=H100) -> Lease:
    order = m.order(buyer, units=units, duration=duration, max_price=price, market=market)
    bid = m.bid(provider, capacity=units, price=price, max_duration=max(duration, HOUR), market=market)
    receipt = m.settle([order], [bid], [(0, 0, units)], {market: price}, round_id=round_id)
    [lease_id] = m.lease_ids(receipt)
    record = m.settlement.getLease(lease_id)
    assert record.end - record.start == duration
    return Lease(lease_id, buyer, provider, units, price, record.start, record.end)


def heartbeat_every(chain, settlement, lease: Lease, offsets) -> None:
    for offset in offsets:
        at(chain, lease.start + offset)
        settlement.heartbeat([lease.id], sender=lease.provider)


# ----- heartbeat -----


def test_heartbeat_batched_over_several_leases(funded, settlement, buyers, providers, chain, params):
    m = funded
    orders = [m.order(buyers[i], units=u, max_price=P1) for i, u in enumerate((2, 3, 1))]
    bid = m.bid(providers[0], capacity=8, price=P1)
    receipt = m.settle(orders, [bid], [(0, 0, 2), (1, 0, 3), (2, 0, 1)], {H100: P1})
    lease_ids = m.lease_ids(receipt)
    assert len(set(lease_ids)) == 3
    start = settlement.getLease(lease_ids[0]).start
    grace = params.heartbeat_interval + params.heartbeat_grace + 1
    for lease_id in lease_ids:
        assert settlement.getLease(lease_id).lastHeartbeat == 0  # zero means `start`
        assert settlement.faultReportableAt(lease_id) == start + grace

    at(chain, start + 45)
    receipt = settlement.heartbeat(lease_ids, sender=providers[0])

    assert receipt.return_value == 0  # nothing skipped
    assert receipt.decode_logs(settlement.LeaseSkipped) == []
    logs = receipt.decode_logs(settlement.Heartbeat)
    assert [log.leaseId for log in logs] == lease_ids
    assert receipt.timestamp == start + 45  # `Heartbeat` carries no time: it is its block's
    for lease_id in lease_ids:
        assert settlement.getLease(lease_id).lastHeartbeat == start + 45
        assert settlement.faultReportableAt(lease_id) == start + 45 + grace


def test_heartbeat_batch_with_a_foreign_lease_reverts_entirely(funded, settlement, buyers, providers, outsider, chain):
    mine = open_lease(funded, buyers[0], providers[0], round_id=1)
    theirs = open_lease(funded, buyers[1], providers[1], round_id=2)
    at(chain, theirs.start + 10)
    with ape.reverts(settlement.NotLeaseProvider, caller=providers[0].address) as info:
        settlement.heartbeat([mine.id, theirs.id], sender=providers[0])
    assert info.value.inputs["leaseId"] == theirs.id
    assert settlement.getLease(mine.id).lastHeartbeat == 0
    with ape.reverts(settlement.NotLeaseProvider, caller=outsider.address):
        settlement.heartbeat([mine.id], sender=outsider)
    with ape.reverts(settlement.NotLeaseProvider, caller=buyers[0].address):
        settlement.heartbeat([mine.id], sender=buyers[0])


def test_unknown_lease_everywhere(funded, settlement, providers, outsider):
    with ape.reverts(settlement.UnknownLease, leaseId=UNKNOWN):
        settlement.heartbeat([UNKNOWN], sender=providers[0])
    with ape.reverts(settlement.UnknownLease, leaseId=UNKNOWN):
        settlement.claimRevenue([UNKNOWN], sender=providers[0])
    with ape.reverts(settlement.UnknownLease, leaseId=UNKNOWN):
        settlement.close(UNKNOWN, sender=outsider)
    with ape.reverts(settlement.UnknownLease, leaseId=UNKNOWN):
        settlement.reportFault(UNKNOWN, sender=outsider)
    for view in (settlement.getLease, settlement.leaseBalances, settlement.faultReportableAt):
        with ape.reverts(settlement.UnknownLease, leaseId=UNKNOWN):
            view.transact(UNKNOWN, sender=outsider)


def test_heartbeat_missed_from_fault_reportable_at(funded, settlement, buyers, providers, chain, params):
    lease = open_lease(funded, buyers[0], providers[0])
    other = open_lease(funded, buyers[1], providers[0], market=A100)
    first_reportable = lease.start + params.heartbeat_interval + params.heartbeat_grace + 1
    # The last second of the grace period still counts.
    at(chain, first_reportable - 1)
    assert settlement.heartbeat([lease.id, other.id], sender=lease.provider).return_value == 0
    reportable = settlement.faultReportableAt(lease.id)
    assert reportable == first_reportable - 1 + params.heartbeat_interval + params.heartbeat_grace + 1

    # From then on a heartbeat cannot erase the fault: the lease is skipped, not the batch.
    at(chain, reportable - 1)
    settlement.heartbeat([other.id], sender=lease.provider)  # the other lease stays alive
    at(chain, reportable)
    receipt = settlement.heartbeat([lease.id, other.id], sender=lease.provider)
    assert receipt.return_value == 1
    [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
    assert (skipped.leaseId, skipped.reason) == (lease.id, SKIP_FAULT_PENDING)
    assert [log.leaseId for log in receipt.decode_logs(settlement.Heartbeat)] == [other.id]
    assert settlement.getLease(lease.id).lastHeartbeat == first_reportable - 1
    assert settlement.getLease(other.id).lastHeartbeat == reportable
    at(chain, reportable + 500)
    receipt = settlement.heartbeat([lease.id], sender=lease.provider)
    assert receipt.return_value == 1
    assert settlement.getLease(lease.id).lastHeartbeat == first_reportable - 1


def test_heartbeat_at_or_after_end_is_lease_ended(funded, settlement, buyers, providers, chain):
    lease = open_lease(funded, buyers[0], providers[0], duration=150)
    heartbeat_every(chain, settlement, lease, (50, 100, 149))
    assert settlement.faultReportableAt(lease.id) == MAX_UINT  # covered to the end
    at(chain, lease.end)
    receipt = settlement.heartbeat([lease.id], sender=lease.provider)
    assert receipt.return_value == 1
    [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
    assert (skipped.leaseId, skipped.reason) == (lease.id, SKIP_ENDED)
    assert receipt.decode_logs(settlement.Heartbeat) == []
    assert settlement.getLease(lease.id).lastHeartbeat == lease.start + 149


def test_heartbeat_on_closed_lease(funded, settlement, buyers, providers, chain):
    """A buyer closing its lease cannot make the provider's batch of heartbeats fail."""
    lease = open_lease(funded, buyers[0], providers[0])
    other = open_lease(funded, buyers[1], providers[0], market=A100)
    at(chain, lease.start + 20)
    settlement.close(lease.id, sender=lease.buyer)
    receipt = settlement.heartbeat([lease.id, other.id], sender=lease.provider)
    assert receipt.return_value == 1
    [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
    assert (skipped.leaseId, skipped.reason) == (lease.id, SKIP_CLOSED)
    assert [log.leaseId for log in receipt.decode_logs(settlement.Heartbeat)] == [other.id]
    assert settlement.getLease(lease.id).lastHeartbeat == 0
    assert settlement.getLease(other.id).lastHeartbeat == receipt.timestamp


def test_claim_in_batches_pays_exact_accruals(funded, settlement, credit, buyers, providers, chain):
    m = funded
    provider = providers[0]
    a = open_lease(m, buyers[0], provider, units=3, price=P1, round_id=1, market=H100)
    b = open_lease(m, buyers[1], provider, units=5, price=P2, round_id=2, market=A100)
    base = b.start
    assert base - a.start < 20

    at(chain, base + 40)
    settlement.heartbeat([a.id, b.id], sender=provider)
    at(chain, base + 70)
    receipt = settlement.claimRevenue([a.id, b.id], sender=provider)
    due_a, due_b = a.acc(base + 70), b.acc(base + 70)
    assert receipt.return_value == (due_a + due_b, 0)
    assert paid_to(receipt, credit, settlement, provider) == due_a + due_b
    assert [settlement.getLease(x.id).paidUntil for x in (a, b)] == [base + 70, base + 70]
    assert credit.balanceOf(provider) == due_a + due_b
    # A claim leaves the buyers' escrow alone: `locked` is the whole cost until the close.
    assert settlement.escrowOf(a.buyer).locked == a.cost
    assert settlement.escrowOf(b.buyer).locked == b.cost

    at(chain, base + 95)
    settlement.heartbeat([a.id, b.id], sender=provider)
    # Claiming late pays only up to the last heartbeat plus one interval (the fault becomes
    # reportable at base + 186, after which a claim skips the lease).
    at(chain, base + 180)
    receipt = settlement.claimRevenue([b.id, a.id], sender=provider)
    covered = base + 95 + 60
    more_a, more_b = a.acc(covered) - due_a, b.acc(covered) - due_b
    assert receipt.return_value == (more_a + more_b, 0)
    assert paid_to(receipt, credit, settlement, provider) == more_a + more_b
    assert [settlement.getLease(x.id).paidUntil for x in (a, b)] == [covered, covered]
    assert credit.balanceOf(provider) == a.acc(covered) + b.acc(covered)

    # Nothing new has accrued under cover: a second claim pays nothing and emits nothing.
    at(chain, base + 181)
    receipt = settlement.claimRevenue([a.id, b.id], sender=provider)
    assert receipt.return_value == (0, 0)
    assert paid_to(receipt, credit, settlement, provider) == 0
    assert credit.balanceOf(provider) == a.acc(covered) + b.acc(covered)
    assert settlement.getLease(a.id).paidUntil == covered


def test_claim_without_heartbeat_stops_at_one_interval(funded, settlement, credit, buyers, providers, chain):
    lease = open_lease(funded, buyers[0], providers[0], units=7, price=P2)
    at(chain, lease.start + 50)
    settlement.claimRevenue([lease.id], sender=lease.provider)
    assert credit.balanceOf(lease.provider) == lease.acc(lease.start + 50)
    at(chain, lease.start + 80)
    receipt = settlement.claimRevenue([lease.id], sender=lease.provider)
    assert receipt.return_value == (lease.acc(lease.start + 60) - lease.acc(lease.start + 50), 0)
    assert credit.balanceOf(lease.provider) == lease.acc(lease.start + 60)


def test_only_the_provider_claims(funded, settlement, buyers, providers, outsider, chain):
    lease = open_lease(funded, buyers[0], providers[0])
    at(chain, lease.start + 30)
    for caller in (outsider, lease.buyer, providers[1]):
        with ape.reverts(settlement.NotLeaseProvider, caller=caller.address):
            settlement.claimRevenue([lease.id], sender=caller)
    assert settlement.getLease(lease.id).paidUntil == 0


def test_claim_after_end_closes_and_unlocks_collateral(
    funded, settlement, credit, buyers, providers, outsider, chain, params
):
    lease = open_lease(funded, buyers[0], providers[0], units=3, duration=300)
    free_before = settlement.escrowOf(lease.buyer).free
    assert settlement.providers(lease.provider).locked == 3 * params.stake_per_unit
    heartbeat_every(chain, settlement, lease, (55, 110))
    at(chain, lease.start + 120)
    settlement.claimRevenue([lease.id], sender=lease.provider)
    first = lease.acc(lease.start + 120)
    heartbeat_every(chain, settlement, lease, (165, 220, 275))

    at(chain, lease.end + 10)
    receipt = settlement.claimRevenue([lease.id], sender=lease.provider)

    assert receipt.return_value == (lease.cost - first, 0)
    assert credit.balanceOf(lease.provider) == lease.cost
    [closed] = receipt.decode_logs(settlement.LeaseClosed)
    assert closed.leaseId == lease.id
    assert (closed.refund, closed.collateral) == (0, 3 * params.stake_per_unit)
    assert settlement.getLease(lease.id).closed
    assert settlement.getLease(lease.id).paidUntil == lease.end
    account = settlement.providers(lease.provider)
    assert account.locked == 0 and account.staked == 8 * params.stake_per_unit
    assert settlement.freeStake(lease.provider) == 8 * params.stake_per_unit
    assert tuple(settlement.escrowOf(lease.buyer)) == (free_before, 0)

    # A claim skips the closed lease and pays nothing; everything else refuses it.
    receipt = settlement.claimRevenue([lease.id], sender=lease.provider)
    assert receipt.return_value == (0, 1)
    [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
    assert (skipped.leaseId, skipped.reason) == (lease.id, SKIP_CLOSED)
    assert credit.balanceOf(lease.provider) == lease.cost
    for call in (
        lambda: settlement.close(lease.id, sender=lease.buyer),
        lambda: settlement.close(lease.id, sender=outsider),
        lambda: settlement.reportFault(lease.id, sender=outsider),
    ):
        with ape.reverts(settlement.LeaseAlreadyClosed, leaseId=lease.id):
            call()


def test_claim_batch_skips_a_closed_lease(funded, settlement, credit, buyers, providers, chain):
    """A buyer closing its lease cannot make the provider's batch of claims fail."""
    m = funded
    a = open_lease(m, buyers[0], providers[0], round_id=1)
    b = open_lease(m, buyers[1], providers[0], round_id=2, market=A100, price=P2)
    at(chain, b.start + 10)
    settlement.close(a.id, sender=a.buyer)
    paid_on_close = credit.balanceOf(providers[0])
    assert paid_on_close == a.acc(b.start + 10)
    at(chain, b.start + 30)
    receipt = settlement.claimRevenue([b.id, a.id], sender=providers[0])
    assert receipt.return_value == (b.acc(b.start + 30), 1)
    [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
    assert (skipped.leaseId, skipped.reason) == (a.id, SKIP_CLOSED)
    assert paid_to(receipt, credit, settlement, providers[0]) == b.acc(b.start + 30)
    assert settlement.getLease(b.id).paidUntil == b.start + 30
    assert credit.balanceOf(providers[0]) == paid_on_close + b.acc(b.start + 30)


def test_claim_after_end_refunds_uncovered_time(funded, settlement, credit, buyers, providers, chain, params):
    lease = open_lease(funded, buyers[0], providers[0], units=3, duration=300)
    free_before = settlement.escrowOf(lease.buyer).free
    heartbeat_every(chain, settlement, lease, (55, 110, 165, 220))  # covered to start + 280
    covered = lease.start + 280
    assert settlement.faultReportableAt(lease.id) == covered + params.heartbeat_grace + 1

    at(chain, lease.end + 5)
    receipt = settlement.claimRevenue([lease.id], sender=lease.provider)

    paid = lease.acc(covered)
    assert receipt.return_value == (paid, 0) and credit.balanceOf(lease.provider) == paid
    [closed] = receipt.decode_logs(settlement.LeaseClosed)
    assert closed.refund == lease.cost - paid > 0
    assert tuple(settlement.escrowOf(lease.buyer)) == (free_before + lease.cost - paid, 0)
    assert settlement.providers(lease.provider).locked == 0


# ----- close -----


def test_buyer_closes_early_and_is_refunded_exactly(funded, settlement, credit, buyers, providers, chain, params):
    lease = open_lease(funded, buyers[1], providers[1], units=5, price=P1)
    free_before = settlement.escrowOf(lease.buyer).free
    assert settlement.escrowOf(lease.buyer).locked == lease.cost
    at(chain, lease.start + 30)
    settlement.claimRevenue([lease.id], sender=lease.provider)
    heartbeat_every(chain, settlement, lease, (50,))

    at(chain, lease.start + 97)
    receipt = settlement.close(lease.id, sender=lease.buyer)

    accrued = lease.acc(lease.start + 97)
    refund = lease.cost - accrued
    assert paid_to(receipt, credit, settlement, lease.provider) == accrued - lease.acc(lease.start + 30)
    assert settlement.getLease(lease.id).paidUntil == lease.start + 97
    [closed] = receipt.decode_logs(settlement.LeaseClosed)
    assert (closed.refund, closed.collateral) == (refund, 5 * params.stake_per_unit)
    assert credit.balanceOf(lease.provider) == accrued
    assert tuple(settlement.escrowOf(lease.buyer)) == (free_before + refund, 0)
    assert settlement.providers(lease.provider).locked == 0
    assert settlement.getLease(lease.id).closed
    assert tuple(settlement.leaseBalances(lease.id)) == (0, 0, 0)


def test_only_the_buyer_closes_before_end_anyone_after(funded, settlement, credit, buyers, providers, outsider, chain):
    lease = open_lease(funded, buyers[0], providers[0], units=2, duration=150, price=P2)
    heartbeat_every(chain, settlement, lease, (50, 100))  # covered to the end
    for caller in (outsider, lease.provider, buyers[1]):
        at(chain, lease.end - 1)  # reverted transactions are mined too: set the time for each
        with ape.reverts(settlement.NotLeaseBuyer, caller=caller.address):
            settlement.close(lease.id, sender=caller)
    assert not settlement.getLease(lease.id).closed

    at(chain, lease.end)
    receipt = settlement.close(lease.id, sender=outsider)
    assert credit.balanceOf(lease.provider) == lease.cost
    assert receipt.decode_logs(settlement.LeaseClosed)[0].refund == 0
    assert settlement.escrowOf(lease.buyer).locked == 0
    assert settlement.providers(lease.provider).locked == 0


# ----- reportFault -----


def test_report_fault_not_before_reportable(funded, settlement, buyers, providers, outsider, chain, params):
    lease = open_lease(funded, buyers[0], providers[0])
    heartbeat_every(chain, settlement, lease, (40,))
    reportable = lease.start + 40 + params.heartbeat_interval + params.heartbeat_grace + 1
    assert settlement.faultReportableAt(lease.id) == reportable
    at(chain, reportable - 1)
    with ape.reverts(settlement.HeartbeatNotMissed, leaseId=lease.id, reportableAt=reportable):
        settlement.reportFault(lease.id, sender=outsider)
    assert not settlement.getLease(lease.id).closed

    # Heartbeats that cover a lease to its end leave nothing to report, ever.
    short = open_lease(funded, buyers[1], providers[1], duration=120, round_id=2)
    heartbeat_every(chain, settlement, short, (70,))
    at(chain, short.end + 1_000)
    with ape.reverts(settlement.HeartbeatNotMissed, reportableAt=MAX_UINT):
        settlement.reportFault(short.id, sender=outsider)


def test_report_fault_settles_and_slashes(funded, settlement, credit, ubt, buyers, providers, outsider, chain, params):
    lease = open_lease(funded, buyers[0], providers[0], units=3, price=P1)
    provider, buyer = lease.provider, lease.buyer
    unit = params.stake_per_unit
    free_before = settlement.escrowOf(buyer).free
    heartbeat_every(chain, settlement, lease, (40,))
    at(chain, lease.start + 70)
    settlement.claimRevenue([lease.id], sender=provider)
    claimed = lease.acc(lease.start + 70)

    ubt_before = {who: ubt.balanceOf(who) for who in (buyer, outsider, provider, settlement)}
    supply_before = ubt.totalSupply()
    burned_before = settlement.totalSlashedBurned()
    reportable = settlement.faultReportableAt(lease.id)
    assert reportable == lease.start + 40 + 60 + 30 + 1

    at(chain, reportable)
    receipt = settlement.reportFault(lease.id, sender=outsider)

    # Credits: the provider is paid up to the last heartbeat plus one interval, the buyer gets the rest.
    stop = lease.start + 40 + params.heartbeat_interval
    assert credit.balanceOf(provider) == lease.acc(stop)
    assert paid_to(receipt, credit, settlement, provider) == lease.acc(stop) - claimed
    assert settlement.getLease(lease.id).paidUntil == stop
    [closed] = receipt.decode_logs(settlement.LeaseClosed)
    assert (closed.refund, closed.collateral) == (lease.cost - lease.acc(stop), 3 * unit)
    assert tuple(settlement.escrowOf(buyer)) == (free_before + lease.cost - lease.acc(stop), 0)
    assert settlement.getLease(lease.id).closed

    # UBT: 50% of the collateral is slashed; 50% of that to the buyer, 10% to the reporter, 40% burned.
    collateral = 3 * unit
    slashed = collateral * params.slash_bps // BPS
    to_buyer = slashed * params.slash_buyer_bps // BPS
    to_reporter = slashed * params.slash_reporter_bps // BPS
    burned = slashed - to_buyer - to_reporter
    assert (slashed, to_buyer, to_reporter, burned) == (150 * 10**18, 75 * 10**18, 15 * 10**18, 60 * 10**18)
    [fault] = receipt.decode_logs(settlement.FaultReported)
    assert fault.leaseId == lease.id and fault.reporter == outsider.address
    assert (fault.slashed, fault.toBuyer, fault.toReporter, fault.burned) == (slashed, to_buyer, to_reporter, burned)
    assert ubt.balanceOf(buyer) == ubt_before[buyer] + to_buyer
    assert ubt.balanceOf(outsider) == ubt_before[outsider] + to_reporter
    assert ubt.balanceOf(provider) == ubt_before[provider]
    assert ubt.balanceOf(settlement) == ubt_before[settlement] - slashed
    assert ubt.totalSupply() == supply_before - burned
    assert settlement.totalSlashedBurned() == burned_before + burned

    account = settlement.providers(provider)
    assert account.locked == 0 and account.staked == 8 * unit - slashed
    assert account.stakeDecreasedAt == reportable
    with ape.reverts(settlement.LeaseAlreadyClosed, leaseId=lease.id):
        settlement.reportFault(lease.id, sender=outsider)


def test_buyer_may_report_after_end_and_takes_both_shares(
    funded, settlement, credit, ubt, buyers, providers, chain, params
):
    lease = open_lease(funded, buyers[2], providers[3], units=1, duration=600, price=P2)
    before = ubt.balanceOf(lease.buyer)
    free_before = settlement.escrowOf(lease.buyer).free
    at(chain, lease.end + 100)  # never heartbeated; nobody reported during the lease
    settlement.reportFault(lease.id, sender=lease.buyer)
    slashed = params.stake_per_unit * params.slash_bps // BPS
    share = slashed * (params.slash_buyer_bps + params.slash_reporter_bps) // BPS
    assert ubt.balanceOf(lease.buyer) == before + share
    assert credit.balanceOf(lease.provider) == lease.acc(lease.start + params.heartbeat_interval)
    assert settlement.escrowOf(lease.buyer).free == free_before + lease.cost - lease.acc(lease.start + 60)


@pytest.mark.parametrize("how", ["provider_claims", "provider_closes"])
def test_fault_cannot_be_dodged_by_closing_after_end(
    funded, settlement, ubt, buyers, providers, outsider, chain, params, how
):
    """A fault reportable long before the end must still cost the slash when the lease is closed after it.

    `heartbeat` refuses to erase a reportable fault; closing the lease after its end must not erase it either.
    """
    lease = open_lease(funded, buyers[0], providers[0], units=4, duration=600)
    unit = params.stake_per_unit
    slashed = 4 * unit * params.slash_bps // BPS
    supply_before = ubt.totalSupply()
    reportable = settlement.faultReportableAt(lease.id)
    assert reportable < lease.end  # the provider went silent from the start

    at(chain, lease.end)
    if how == "provider_claims":
        # The claim skips the lease (the fault is pending) and pays nothing.
        receipt = settlement.claimRevenue([lease.id], sender=lease.provider)
        assert receipt.return_value == (0, 1)
        [skipped] = receipt.decode_logs(settlement.LeaseSkipped)
        assert (skipped.leaseId, skipped.reason) == (lease.id, SKIP_FAULT_PENDING)
        assert settlement.getLease(lease.id).paidUntil == 0
    else:
        with ape.reverts(settlement.FaultPending):
            settlement.close(lease.id, sender=lease.provider)
    assert not settlement.getLease(lease.id).closed
    at(chain, lease.end + 1)
    settlement.reportFault(lease.id, sender=outsider)

    assert settlement.getLease(lease.id).closed
    assert settlement.providers(lease.provider).staked == 8 * unit - slashed
    assert ubt.totalSupply() < supply_before


# ----- leaseBalances -----


def test_lease_balances_live_figures(funded, settlement, buyers, providers, chain, params):
    lease = open_lease(funded, buyers[0], providers[0], units=3, price=P1, duration=HOUR)
    collateral = 3 * params.stake_per_unit

    chain.mine(timestamp=lease.start + 30)
    assert tuple(settlement.leaseBalances(lease.id)) == (
        lease.acc(lease.start + 30),
        lease.cost - lease.acc(lease.start + 30),
        collateral,
    )

    at(chain, lease.start + 45)
    settlement.claimRevenue([lease.id], sender=lease.provider)
    chain.mine(timestamp=lease.start + 52)
    paid = lease.acc(lease.start + 45)
    now = lease.acc(lease.start + 52)
    assert tuple(settlement.leaseBalances(lease.id)) == (now - paid, lease.cost - now, collateral)

    # Without a heartbeat the claimable part stops growing after one interval.
    chain.mine(timestamp=lease.start + 500)
    capped = lease.acc(lease.start + params.heartbeat_interval)
    assert tuple(settlement.leaseBalances(lease.id)) == (capped - paid, lease.cost - capped, collateral)


def test_lease_balances_at_end_and_after_close(funded, settlement, buyers, providers, chain, params):
    lease = open_lease(funded, buyers[0], providers[0], units=2, price=P2, duration=150)
    heartbeat_every(chain, settlement, lease, (50, 100))
    chain.mine(timestamp=lease.end + 300)
    assert tuple(settlement.leaseBalances(lease.id)) == (lease.cost, 0, 2 * params.stake_per_unit)
    at(chain, lease.end + 301)
    settlement.claimRevenue([lease.id], sender=lease.provider)
    assert tuple(settlement.leaseBalances(lease.id)) == (0, 0, 0)


# ----- no lease pays more than it locked -----

SCENARIOS = {
    # name: (units, price, duration, [(action, offset from start)])
    "heartbeats_claims_to_the_end": (
        3, P1, 400,
        [("hb", 55), ("claim", 100), ("hb", 110), ("hb", 165), ("hb", 220), ("claim", 221),
         ("hb", 275), ("hb", 330), ("hb", 385), ("claim", 401)],
    ),
    "buyer_closes_midway": (5, P2, 2 * HOUR, [("hb", 50), ("claim", 77), ("hb", 100), ("close", 123)]),
    "fault_after_claims": (7, 999_999, 2 * HOUR, [("hb", 50), ("claim", 77), ("claim", 90), ("report", 141)]),
    "uncovered_tail_claimed_after_end": (
        1, 3_333_333, 300, [("hb", 55), ("hb", 110), ("claim", 111), ("hb", 165), ("hb", 220), ("claim", 305)],
    ),
    "anyone_closes_after_end": (2, 1_000_001, 200, [("hb", 50), ("hb", 100), ("hb", 150), ("close_outsider", 260)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_lease_pays_more_than_it_locked(
    funded, settlement, credit, buyers, providers, outsider, chain, params, name
):
    units, price, duration, actions = SCENARIOS[name]
    lease = open_lease(funded, buyers[1], providers[2], units=units, price=price, duration=duration)
    free_before = settlement.escrowOf(lease.buyer).free
    assert settlement.escrowOf(lease.buyer).locked == lease.cost
    interval = params.heartbeat_interval

    # Python reference of the payment rule.
    last_hb, paid_until, expected_paid = lease.start, lease.start, 0

    def pay_to(t):
        nonlocal paid_until, expected_paid
        until = min(t, last_hb + interval, lease.end)
        if until > paid_until:
            expected_paid += lease.acc(until) - lease.acc(paid_until)
            paid_until = until

    receipts = []
    for action, offset in actions:
        t = lease.start + offset
        at(chain, t)
        if action == "hb":
            settlement.heartbeat([lease.id], sender=lease.provider)
            last_hb = t
            continue
        if action == "claim":
            receipts.append(settlement.claimRevenue([lease.id], sender=lease.provider))
        elif action == "close":
            receipts.append(settlement.close(lease.id, sender=lease.buyer))
        elif action == "close_outsider":
            receipts.append(settlement.close(lease.id, sender=outsider))
        elif action == "report":
            receipts.append(settlement.reportFault(lease.id, sender=outsider))
            t = last_hb + interval
        pay_to(t)

    payments = [paid_to(r, credit, settlement, lease.provider) for r in receipts]
    refunds = [log.refund for r in receipts for log in r.decode_logs(settlement.LeaseClosed)]
    assert len(refunds) == 1 and settlement.getLease(lease.id).closed
    assert sum(payments) == expected_paid == credit.balanceOf(lease.provider)
    assert sum(payments) <= lease.cost
    assert sum(payments) + refunds[0] == lease.cost
    assert tuple(settlement.escrowOf(lease.buyer)) == (free_before + refunds[0], 0)
    # Every credit the escrow holds is some buyer's free or locked balance.
    held = sum(sum(settlement.escrowOf(b)) for b in buyers)
    assert credit.balanceOf(settlement) == held


# ----- setParams -----
# Params field order: unbondingPeriod, heartbeatInterval, heartbeatGrace, slashBps, slashBuyerBps,
# slashReporterBps, challengeWindow, matcherExitDelay, matcherSlashBps, challengerShareBps.


def with_params(params, **changes):
    names = (
        "unbonding",
        "interval",
        "grace",
        "slash",
        "buyer",
        "reporter",
        "window",
        "exit_delay",
        "matcher_slash",
        "challenger",
    )
    values = list(params.core_params())
    for key, value in changes.items():
        values[names.index(key)] = value
    return tuple(values)


def set_params(settlement, timelock, chain, deployer, params, new):
    return through_timelock(timelock, chain, settlement, "setParams", new, sender=deployer, delay=params.admin_delay)


def test_core_is_owned_by_the_timelock(settlement, timelock, deployer, params):
    assert settlement.owner() == timelock.address
    assert timelock.getMinDelay() == params.admin_delay
    assert settlement.paramsVersion() == 1


def test_set_params_is_owner_only(settlement, params, deployer, providers, outsider, matcher):
    new = with_params(params, unbonding=100, interval=120, grace=10, slash=1_000, buyer=2_000, reporter=3_000)
    for caller in (deployer, outsider, providers[0], matcher):
        with reverts(settlement.OwnableUnauthorizedAccount, account=caller):
            settlement.setParams(new, sender=caller)
    assert tuple(settlement.params()) == params.core_params()
    assert settlement.paramsVersion() == 1


def test_set_params_waits_for_the_timelock_delay(settlement, timelock, chain, deployer, params):
    new = with_params(params, interval=120)
    data = settlement.setParams.encode_input(new)
    salt, ready_at = schedule(timelock, chain, settlement.address, data, sender=deployer, delay=params.admin_delay)
    # A shorter delay than the timelock's minimum cannot be scheduled.
    with ape.reverts():
        timelock.schedule(settlement, 0, data, b"\x00" * 32, b"\x01" * 32, params.admin_delay - 1, sender=deployer)
    chain.pending_timestamp = ready_at - 1
    with ape.reverts():
        execute(timelock, settlement.address, data, salt, sender=deployer)
    assert tuple(settlement.params()) == params.core_params()
    chain.pending_timestamp = ready_at
    execute(timelock, settlement.address, data, salt, sender=deployer)
    assert tuple(settlement.params()) == new
    assert settlement.paramsVersion() == 2


@pytest.mark.parametrize(
    "changes, name",
    [
        (dict(interval=0), "heartbeatInterval"),
        (dict(slash=10_001), "slashBps"),
        (dict(buyer=9_001, reporter=1_000), "slashSplit"),
        (dict(buyer=10_000, reporter=1), "slashSplit"),
        (dict(window=0), "challengeWindow"),
        (dict(exit_delay=3_600 + 20), "matcherExitDelay"),
        (dict(matcher_slash=10_001), "matcherSlashBps"),
        (dict(challenger=10_001), "challengerShareBps"),
    ],
)
def test_set_params_validation(settlement, timelock, chain, deployer, params, changes, name):
    assert params.challenge_window + params.max_round_span == 3_600 + 20
    with reverts(settlement.InvalidParameter, name=name):
        set_params(settlement, timelock, chain, deployer, params, with_params(params, **changes))
    assert tuple(settlement.params()) == params.core_params()
    assert settlement.paramsVersion() == 1


def test_set_params_applies_to_new_leases_only(
    funded, settlement, timelock, ubt, deployer, buyers, providers, outsider, chain, params
):
    old = open_lease(funded, buyers[0], providers[0], units=2, duration=3 * HOUR)
    assert settlement.faultReportableAt(old.id) == old.start + 91
    assert settlement.getLease(old.id).paramsVersion == 1
    # Boundaries are allowed: the whole collateral slashed, all of it paid out (nothing burned).
    new = with_params(params, unbonding=0, interval=120, grace=10, slash=10_000, buyer=7_000, reporter=3_000)
    receipt = set_params(settlement, timelock, chain, deployer, params, new)
    [log] = receipt.decode_logs(settlement.ParamsUpdated)
    assert log.version == 2
    assert (log.unbondingPeriod, log.heartbeatInterval, log.heartbeatGrace) == (0, 120, 10)
    assert (log.slashBps, log.slashBuyerBps, log.slashReporterBps) == (10_000, 7_000, 3_000)
    assert tuple(settlement.params()) == new
    assert settlement.paramsVersion() == 2

    # The open lease keeps the heartbeat terms and slash split it opened under.
    assert settlement.faultReportableAt(old.id) == old.start + 91
    assert settlement.getLease(old.id).paramsVersion == 1
    collateral = 2 * params.stake_per_unit
    reporter_before = ubt.balanceOf(outsider)
    burned_before = settlement.totalSlashedBurned()
    settlement.reportFault(old.id, sender=outsider)
    slashed = collateral * params.slash_bps // BPS
    assert ubt.balanceOf(outsider) == reporter_before + slashed * params.slash_reporter_bps // BPS
    burned = slashed - slashed * params.slash_buyer_bps // BPS - slashed * params.slash_reporter_bps // BPS
    assert settlement.totalSlashedBurned() == burned_before + burned

    # A lease opened now runs under the new version.
    lease = open_lease(funded, buyers[1], providers[1], units=2)
    assert settlement.getLease(lease.id).paramsVersion == 2
    assert settlement.faultReportableAt(lease.id) == lease.start + 120 + 10 + 1
    at(chain, lease.start + 130)
    settlement.heartbeat([lease.id], sender=providers[1])  # still in time under the new terms
    assert settlement.faultReportableAt(lease.id) == lease.start + 130 + 131
    supply_before = ubt.totalSupply()
    burned_before = settlement.totalSlashedBurned()
    reporter_before = ubt.balanceOf(outsider)
    at(chain, lease.start + 130 + 131)
    settlement.reportFault(lease.id, sender=outsider)
    assert ubt.balanceOf(outsider) == reporter_before + collateral * 3_000 // BPS
    assert ubt.totalSupply() == supply_before
    assert settlement.totalSlashedBurned() == burned_before
    assert settlement.providers(providers[1]).staked == 8 * params.stake_per_unit - collateral
