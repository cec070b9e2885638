"""BuyerEscrow: deposit (no approval), withdrawal of free balance only after a notice, and the free/locked views."""

import ape

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts


def open_lease(market, buyer, provider, *, units=2, duration=2 * HOUR, price=2 * UBC, round_id=None):
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


def withdraw(settlement, chain, buyer, amount, notice):
    """Announces a withdrawal of `amount`, waits the notice period out, withdraws; returns the receipt."""
    settlement.requestWithdrawal(amount, sender=buyer)
    chain.pending_timestamp = chain.pending_timestamp + notice
    return settlement.withdraw(sender=buyer)


def test_deposit_and_withdraw_zero_are_refused(market, settlement, buyers):
    market.fund_buyer(buyers[0], 20 * UBC)
    with reverts(settlement.ZeroAmount):
        settlement.deposit(0, sender=buyers[0])
    with reverts(settlement.ZeroAmount):
        settlement.requestWithdrawal(0, sender=buyers[0])
    with reverts(settlement.NothingToWithdraw, buyer=buyers[0].address):
        settlement.withdraw(sender=buyers[0])
    assert tuple(settlement.escrowOf(buyers[0])) == (20 * UBC, 0)


def test_deposit_beyond_balance_reverts(market, settlement, credit, buyers):
    buyer = buyers[0]
    minted = market.mint_credits(buyer, 20 * UBC)
    with ape.reverts():
        settlement.deposit(minted + 1, sender=buyer)
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)
    assert credit.balanceOf(buyer) == minted


def test_withdraw_free_balance(market, settlement, credit, buyers, chain, params):
    buyer = buyers[1]
    market.fund_buyer(buyer, 100 * UBC)
    wallet_before = credit.balanceOf(buyer)

    receipt = withdraw(settlement, chain, buyer, 30 * UBC, params.notice_period)

    [log] = receipt.decode_logs(settlement.Withdrawn)
    assert log.buyer == buyer.address and log.amount == 30 * UBC
    assert receipt.return_value == 30 * UBC
    assert credit.balanceOf(buyer) == wallet_before + 30 * UBC
    assert tuple(settlement.escrowOf(buyer)) == (70 * UBC, 0)
    assert tuple(settlement.pendingWithdrawal(buyer)) == (0, 0)
    # Asking for more than is free sends what is free.
    receipt = withdraw(settlement, chain, buyer, 70 * UBC + 1, params.notice_period)
    assert receipt.return_value == 70 * UBC
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)
    assert credit.balanceOf(buyer) == wallet_before + 100 * UBC


def test_withdrawal_waits_for_the_notice(market, settlement, credit, buyers, chain, params):
    buyer = buyers[0]
    market.fund_buyer(buyer, 100 * UBC)
    receipt = settlement.requestWithdrawal(40 * UBC, sender=buyer)
    requested_at = chain.blocks.head.timestamp
    ready_at = requested_at + params.notice_period
    [log] = receipt.decode_logs(settlement.WithdrawalRequested)
    assert (log.buyer, log.amount, log.readyAt) == (buyer.address, 40 * UBC, ready_at)
    assert tuple(settlement.pendingWithdrawal(buyer)) == (40 * UBC, ready_at)
    # Until the notice is over the credits stay free escrow that a matcher can still lock, but
    # an honest matcher counts only what is not announced to leave.
    assert tuple(settlement.escrowOf(buyer)) == (100 * UBC, 0)
    assert settlement.availableEscrow(buyer) == 60 * UBC

    chain.pending_timestamp = ready_at - 1
    with reverts(settlement.NoticeNotOver, readyAt=ready_at):
        settlement.withdraw(sender=buyer)
    chain.pending_timestamp = ready_at
    wallet_before = credit.balanceOf(buyer)
    settlement.withdraw(sender=buyer)
    assert credit.balanceOf(buyer) == wallet_before + 40 * UBC
    assert settlement.availableEscrow(buyer) == 60 * UBC
    # The request is used up.
    with reverts(settlement.NothingToWithdraw, buyer=buyer.address):
        settlement.withdraw(sender=buyer)


def test_a_new_request_replaces_the_old_and_restarts_the_notice(market, settlement, buyers, chain, params):
    buyer = buyers[0]
    market.fund_buyer(buyer, 100 * UBC)
    settlement.requestWithdrawal(10 * UBC, sender=buyer)
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period - 5
    settlement.requestWithdrawal(25 * UBC, sender=buyer)
    ready_at = chain.blocks.head.timestamp + params.notice_period
    assert tuple(settlement.pendingWithdrawal(buyer)) == (25 * UBC, ready_at)
    assert settlement.availableEscrow(buyer) == 75 * UBC
    chain.pending_timestamp = ready_at - 1
    with reverts(settlement.NoticeNotOver, readyAt=ready_at):
        settlement.withdraw(sender=buyer)
    chain.pending_timestamp = ready_at
    assert settlement.withdraw(sender=buyer).return_value == 25 * UBC


def test_available_escrow_is_never_negative(market, settlement, buyers):
    buyer = buyers[0]
    market.fund_buyer(buyer, 10 * UBC)
    settlement.requestWithdrawal(50 * UBC, sender=buyer)
    assert settlement.availableEscrow(buyer) == 0
    assert settlement.availableEscrow(buyers[1]) == 0


def test_one_buyer_cannot_withdraw_anothers_escrow(market, settlement, credit, buyers, chain, params):
    market.fund_buyer(buyers[0], 50 * UBC)
    with reverts(settlement.NothingToWithdraw, buyer=buyers[1].address):
        settlement.withdraw(sender=buyers[1])
    receipt = withdraw(settlement, chain, buyers[1], UBC, params.notice_period)
    assert receipt.return_value == 0
    assert credit.balanceOf(buyers[1]) == 0
    assert tuple(settlement.escrowOf(buyers[0])) == (50 * UBC, 0)


def test_locked_escrow_cannot_be_withdrawn(market, settlement, credit, buyers, providers, chain, params):
    buyer, provider = buyers[0], providers[0]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(provider, 4)
    lease_id = open_lease(market, buyer, provider, units=2, duration=2 * HOUR, price=2 * UBC)
    cost = 2 * 2 * UBC * 2
    assert tuple(settlement.escrowOf(buyer)) == (100 * UBC - cost, cost)

    # A request for everything sends only the free part; the locked part stays.
    wallet_before = credit.balanceOf(buyer)
    receipt = withdraw(settlement, chain, buyer, 100 * UBC, params.notice_period)
    assert receipt.return_value == 100 * UBC - cost
    assert credit.balanceOf(buyer) == wallet_before + 100 * UBC - cost
    assert tuple(settlement.escrowOf(buyer)) == (0, cost)
    assert withdraw(settlement, chain, buyer, 1, params.notice_period).return_value == 0
    assert tuple(settlement.escrowOf(buyer)) == (0, cost)

    # Closing early moves the unaccrued part back to free escrow, which can then leave.
    start = settlement.getLease(lease_id).start
    settlement.heartbeat([lease_id], sender=provider)  # the notices above took longer than one interval
    assert settlement.getLease(lease_id).lastHeartbeat > 0
    settlement.requestWithdrawal(cost, sender=buyer)
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period
    settlement.close(lease_id, sender=buyer)
    elapsed = settlement.getLease(lease_id).paidUntil - start
    paid = 2 * 2 * UBC * elapsed // HOUR
    assert tuple(settlement.escrowOf(buyer)) == (cost - paid, 0)
    wallet_before = credit.balanceOf(buyer)
    assert settlement.withdraw(sender=buyer).return_value == cost - paid
    assert credit.balanceOf(buyer) == wallet_before + cost - paid
    assert tuple(settlement.escrowOf(buyer)) == (0, 0)


def test_a_withdrawal_in_notice_does_not_stop_settlement(market, settlement, credit, buyers, providers, chain, params):
    """Announced credits stay lockable until the notice is over, and then only the free rest leaves."""
    buyer, provider = buyers[0], providers[0]
    market.fund_buyer(buyer, 100 * UBC)
    market.stake_provider(provider, 4)
    settlement.requestWithdrawal(100 * UBC, sender=buyer)
    assert settlement.availableEscrow(buyer) == 0
    open_lease(market, buyer, provider, units=2, duration=2 * HOUR, price=2 * UBC)
    cost = 2 * 2 * UBC * 2
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period
    wallet_before = credit.balanceOf(buyer)
    assert settlement.withdraw(sender=buyer).return_value == 100 * UBC - cost
    assert credit.balanceOf(buyer) == wallet_before + 100 * UBC - cost
    assert tuple(settlement.escrowOf(buyer)) == (0, cost)


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

    # A claim pays the provider; the buyer's escrow does not move at all: `locked` keeps each open
    # lease's whole cost until the lease closes (what lease a has paid is its paid-until).
    start_a = settlement.getLease(lease_a).start
    start_b = settlement.getLease(lease_b).start
    claim_at = start_b + 40
    assert claim_at - start_a < 60  # still covered by lease a's first interval
    chain.pending_timestamp = claim_at
    settlement.claimRevenue([lease_a], sender=providers[0])
    paid_a = 3 * 1_234_567 * (claim_at - start_a) // HOUR
    assert tuple(settlement.escrowOf(buyer)) == (free, locked)
    assert settlement.getLease(lease_a).paidUntil == claim_at
    assert credit.balanceOf(providers[0]) == paid_a

    # Closing lease b takes its whole cost out of locked and refunds its unpaid part to free;
    # only lease a's whole cost stays locked.
    chain.pending_timestamp = start_b + 45
    settlement.close(lease_b, sender=buyer)
    paid_b = 2_000_003 * 45 // HOUR
    free_now, locked_now = settlement.escrowOf(buyer)
    assert locked_now == cost_a
    assert free_now == free + cost_b - paid_b
    # Nothing is created or lost: free + locked (which still counts the open lease's paid part)
    # + what the closed lease paid == deposited; the provider of the open lease holds paid_a.
    assert free_now + locked_now + paid_b == 100 * UBC
    assert credit.balanceOf(providers[1]) == paid_b
