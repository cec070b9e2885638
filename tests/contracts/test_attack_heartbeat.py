"""Heartbeat and claim griefing (issue 9, finding 6): a buyer closes its own lease just before the
provider's batched `heartbeat([...])` or `claim([...])`. Before, the whole batch reverted
`LeaseAlreadyClosed`; if the retry missed the grace period the buyer reported faults on the other
leases and took the reporter's share. Now a closed lease is skipped (`LeaseSkipped`, reason Closed)
and counted in the return value, and every other lease in the batch is served.
"""

from __future__ import annotations

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts
from .attack_kit import P_DEAR, at, head_time

CLOSED, ENDED, FAULT_PENDING = 0, 1, 2


def three_leases(m, chain, buyers, provider):
    """One provider serves one unit to each of three buyers; returns (lease ids by buyer, start)."""
    t0 = head_time(chain) + 2
    at(chain, t0)
    b = m.bid(provider, capacity=3, price=P_DEAR)
    orders = [m.order(buyer, units=1, duration=2 * HOUR, max_price=3 * UBC) for buyer in buyers]
    tx = m.settle(orders, [b], [(i, 0, 1) for i in range(3)], {H100: P_DEAR})
    by_buyer = {log.buyer: log.leaseId for log in tx.decode_logs(m.settlement.LeaseOpened)}
    return [by_buyer[buyer.address] for buyer in buyers], tx.timestamp


def test_buyer_closing_before_the_batched_heartbeat(funded, chain, settlement, buyers, providers, params):
    """Attack: buyer 0 closes its lease right before the provider's batched heartbeat, just inside
    the grace period, then reports faults on the other leases. The heartbeat lands for the other
    two (1 skipped, reason Closed), and the fault reports revert `HeartbeatNotMissed`."""
    m = funded
    provider = providers[0]
    leases, t0 = three_leases(m, chain, buyers, provider)
    last_chance = t0 + params.heartbeat_interval + params.heartbeat_grace  # the fault is reportable one second later
    assert settlement.faultReportableAt(leases[1]) == last_chance + 1

    at(chain, last_chance - 1)
    settlement.close(leases[0], sender=buyers[0])
    at(chain, last_chance)
    tx = settlement.heartbeat(leases, sender=provider)
    assert tx.return_value == 1
    [skipped] = tx.decode_logs(settlement.LeaseSkipped)
    assert bytes(skipped.leaseId) == bytes(leases[0]) and skipped.reason == CLOSED
    beats = tx.decode_logs(settlement.Heartbeat)
    assert [bytes(b.leaseId) for b in beats] == [bytes(leases[1]), bytes(leases[2])]
    for lease in leases[1:]:
        assert settlement.getLease(lease).lastHeartbeat == last_chance

    at(chain, last_chance + 1)
    reportable = last_chance + params.heartbeat_interval + params.heartbeat_grace + 1
    for lease in leases[1:]:
        with reverts(settlement.HeartbeatNotMissed, leaseId=lease, reportableAt=reportable):
            settlement.reportFault(lease, sender=buyers[0])
    with reverts(settlement.LeaseAlreadyClosed, leaseId=leases[0]):
        settlement.reportFault(leases[0], sender=buyers[0])


def test_buyer_closing_before_the_batched_claim(funded, chain, settlement, credit, buyers, providers, params):
    """Attack: the same move before the provider's batched `claim`. The claim pays the other two
    leases and reports one skipped (reason Closed)."""
    m = funded
    provider = providers[0]
    leases, t0 = three_leases(m, chain, buyers, provider)
    at(chain, t0 + 30)
    settlement.heartbeat(leases, sender=provider)
    at(chain, t0 + 40)
    settlement.close(leases[0], sender=buyers[0])
    at(chain, t0 + 50)
    balance = credit.balanceOf(provider)
    tx = settlement.claimRevenue(leases, sender=provider)
    total, skipped = tx.return_value
    assert skipped == 1 and total > 0
    # Each of the two others paid 50 s of one unit at the clearing price.
    assert total == 2 * (P_DEAR * 50 // 3600)
    assert credit.balanceOf(provider) == balance + total
    [log] = tx.decode_logs(settlement.LeaseSkipped)
    assert bytes(log.leaseId) == bytes(leases[0]) and log.reason == CLOSED
    # Both other leases were paid up to now (payments have no event: each lease's paid-until).
    assert [settlement.getLease(x).paidUntil for x in leases[1:]] == [t0 + 50, t0 + 50]


def test_ended_and_faulty_leases_are_skipped_too(funded, chain, settlement, buyers, providers, params):
    """The other skip reasons: a lease with a reportable fault (FaultPending) is skipped rather
    than healed by a late heartbeat, and the batch still serves the rest."""
    m = funded
    provider = providers[0]
    leases, t0 = three_leases(m, chain, buyers, provider)
    at(chain, t0 + 30)
    settlement.heartbeat(leases[1:], sender=provider)  # lease 0 is left to fault
    at(chain, settlement.faultReportableAt(leases[0]))
    tx = settlement.heartbeat(leases, sender=provider)
    assert tx.return_value == 1
    [log] = tx.decode_logs(settlement.LeaseSkipped)
    assert bytes(log.leaseId) == bytes(leases[0]) and log.reason == FAULT_PENDING
    settlement.reportFault(leases[0], sender=buyers[0])  # the real fault stays reportable


def test_only_the_providers_own_mistakes_revert(funded, chain, settlement, buyers, providers):
    """A batch naming a lease of another provider is the caller's mistake and still reverts
    `NotLeaseProvider`; no buyer action can produce it."""
    m = funded
    leases, _ = three_leases(m, chain, buyers, providers[0])
    with reverts(settlement.NotLeaseProvider, leaseId=leases[0], caller=providers[1]):
        settlement.heartbeat(leases, sender=providers[1])
