"""BuyerEscrow: deposit (no approval), withdraw of free balance only, and the free/locked views."""

import ape

from ..conftest import H100, HOUR, UBC


def open_lease(market, buyer, provider, *, units=2, duration=2 * HOUR, price=2 * UBC, round_id=1):
    order = market.order(buyer, units=units, duration=duration, max_price=price)
    bid = market.bid(provider, capacity=units, price=price, max_duration=duration)
    receipt = market.settle([order], [bid], [(0, 0, units)], {H100: price}, round_id=round_id)
    [lease_id] = market.lease_ids(receipt)
    return lease_id


def test_deposit_needs_no_approval(market, settlement, credit, buyers):
    buyer = buyers[0]
    minted = market.mint_credits(buyer, 50 * UBC)
    assert minted >= 50 * UBC
    assert credit.allowance(buyer, settlement) == 0
    held_before = credit.balanceOf(settlement)

    receipt = settlement.deposit(40 * UBC, sender=buyer)

    [log] = receipt.decode_logs(settlement.Deposited)
    assert log.buyer == buyer.address and log.amount == 40 * UBC
    assert credit.balanceOf(buyer) == minted - 40 * UBC
    assert credit.balanceOf(settlement) == held_before + 40 * UBC
    assert tuple(settlement.escrowOf(buyer)) == (40 * UBC, 0)
    # The allowance was not touched (it was never needed).
    assert credit.allowance(buyer, settlement) == 0


def test_deposits_add_up_per_buyer(market, settlement, buyers):
    market.mint_credits(buyers[0], 30 * UBC)
    settlement.deposit(10 * UBC, sender=buyers[0])
    settlement.deposit(15 * UBC, sender=buyers[0])
    assert tuple(settlement.escrowOf(buyers[0])) == (25 * UBC, 0)
    assert tuple(settlement.escrowOf(buyers[1])) == (0, 0)


def test_deposit_and_withdraw_zero_are_refused(market, settlement, buyers):
    market.fund_buyer(buyers[0], 20 * UBC)
    with ape.reverts(settlement.ZeroAmount):
        settlement.deposit(0, sender=buyers[0])
    with ape.reverts(settlement.ZeroAmount):
        settlement.withdraw(0, sender=buyers[0])
    assert tuple(settlement.escrowOf(buyers[0])) == (20 * UBC, 0)


def test_deposit_beyond_balance_reverts(market, settlement, credit, buyers):
    buyer = buyers[0]
    minted = market.mint_credits(buyer, 20 * UBC)
    with ape.reverts():
        settlement.deposit(minted + 1, sender=buyer)
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)
    assert credit.balanceOf(buyer) == minted


def test_withdraw_free_balance(market, settlement, credit, buyers):
    buyer = buyers[1]
    market.fund_buyer(buyer, 100 * UBC)
    wallet_before = credit.balanceOf(buyer)

    receipt = settlement.withdraw(30 * UBC, sender=buyer)

    [log] = receipt.decode_logs(settlement.Withdrawn)
    assert log.buyer == buyer.address and log.amount == 30 * UBC
    assert credit.balanceOf(buyer) == wallet_before + 30 * UBC
    assert tuple(settlement.escrowOf(buyer)) == (70 * UBC, 0)
    with ape.reverts(settlement.InsufficientEscrow, buyer=buyer.address, required=70 * UBC + 1, free=70 * UBC):
        settlement.withdraw(70 * UBC + 1, sender=buyer)
    settlement.withdraw(70 * UBC, sender=buyer)
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)
    assert credit.balanceOf(buyer) == wallet_before + 100 * UBC


def test_one_buyer_cannot_withdraw_anothers_escrow(market, settlement, buyers):
    market.fund_buyer(buyers[0], 50 * UBC)
    with ape.reverts(settlement.InsufficientEscrow, buyer=buyers[1].address, required=UBC, free=0):
        settlement.withdraw(UBC, sender=buyers[1])
    assert tuple(settlement.escrowOf(buyers[0])) == (50 * UBC, 0)


def test_locked_escrow_cannot_be_withdrawn(market, settlement, credit, buyers, providers, chain):
    buyer, provider = buyers[0], providers[0]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(provider, 4)
    lease_id = open_lease(market, buyer, provider, units=2, duration=2 * HOUR, price=2 * UBC)
    cost = 2 * 2 * UBC * 2
    assert tuple(settlement.escrowOf(buyer)) == (100 * UBC - cost, cost)

    with ape.reverts(settlement.InsufficientEscrow, required=100 * UBC - cost + 1, free=100 * UBC - cost):
        settlement.withdraw(100 * UBC - cost + 1, sender=buyer)
    with ape.reverts(settlement.InsufficientEscrow, required=100 * UBC, free=100 * UBC - cost):
        settlement.withdraw(100 * UBC, sender=buyer)
    settlement.withdraw(100 * UBC - cost, sender=buyer)
    assert tuple(settlement.escrowOf(buyer)) == (0, cost)
    with ape.reverts(settlement.InsufficientEscrow, required=1, free=0):
        settlement.withdraw(1, sender=buyer)

    # Closing early moves the unaccrued part back to free escrow, which can then leave.
    start = settlement.getLease(lease_id).start
    chain.pending_timestamp = start + 36  # no heartbeat yet: covered up to start + interval
    settlement.close(lease_id, sender=buyer)
    paid = 2 * 2 * UBC * 36 // HOUR
    assert tuple(settlement.escrowOf(buyer)) == (cost - paid, 0)
    wallet_before = credit.balanceOf(buyer)
    settlement.withdraw(cost - paid, sender=buyer)
    assert credit.balanceOf(buyer) == wallet_before + cost - paid
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)


def test_escrow_views_free_versus_locked(market, settlement, credit, buyers, providers, chain):
    buyer = buyers[2]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(providers[0], 4)
    market.stake_provider(providers[1], 4)
    lease_a = open_lease(market, buyer, providers[0], units=3, duration=HOUR, price=1_234_567, round_id=1)
    cost_a = 3 * 1_234_567 * HOUR // HOUR
    assert tuple(settlement.escrowOf(buyer)) == (100 * UBC - cost_a, cost_a)
    lease_b = open_lease(market, buyer, providers[1], units=1, duration=1_801, price=2_000_003, round_id=2)
    cost_b = 1 * 2_000_003 * 1_801 // HOUR
    free, locked = settlement.escrowOf(buyer)
    assert (free, locked) == (100 * UBC - cost_a - cost_b, cost_a + cost_b)

    # A claim pays the provider out of locked escrow; free escrow does not move.
    start_a = settlement.getLease(lease_a).start
    start_b = settlement.getLease(lease_b).start
    claim_at = start_b + 40
    assert claim_at - start_a < 60  # still covered by lease a's first interval
    chain.pending_timestamp = claim_at
    settlement.claim([lease_a], sender=providers[0])
    paid_a = 3 * 1_234_567 * (claim_at - start_a) // HOUR
    assert tuple(settlement.escrowOf(buyer)) == (free, locked - paid_a)
    assert credit.balanceOf(providers[0]) == paid_a

    # Closing lease b refunds its unpaid part to free; only lease a stays locked.
    chain.pending_timestamp = start_b + 45
    settlement.close(lease_b, sender=buyer)
    paid_b = 2_000_003 * 45 // HOUR
    free_now, locked_now = settlement.escrowOf(buyer)
    assert locked_now == cost_a - paid_a
    assert free_now == free + cost_b - paid_b
    # Nothing is created or lost: free + locked + paid out == deposited.
    assert free_now + locked_now + paid_a + paid_b == 100 * UBC
    assert credit.balanceOf(providers[1]) == paid_b
