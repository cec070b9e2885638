"""UnderbidSettlement.settle: the happy path, fills across rounds, batches, and every attack."""

import ape
import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import keccak

from underbid.protocol.eip712 import Domain

from ..conftest import A100, H100, HOUR, UBC
from ..reverts import reverts

ZERO_ADDRESS = "0x" + "00" * 20

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_settle_opens_lease_and_locks_escrow_and_stake(funded, settlement, buyers, providers, params):
    m = funded
    order = m.order(buyers[0], units=2, duration=2 * HOUR, max_price=3 * UBC)
    bid = m.bid(providers[0], capacity=4, price=2 * UBC)
    receipt = m.settle([order], [bid], [(0, 0, 2)], {H100: int(2.5 * UBC)})

    cost = 2 * int(2.5 * UBC) * 2 * HOUR // HOUR
    free, locked = settlement.escrowOf(buyers[0])
    assert (free, locked) == (1_000 * UBC - cost, cost)
    account = settlement.providers(providers[0])
    assert account.locked == 2 * params.stake_per_unit

    [lease_id] = m.lease_ids(receipt)
    lease = settlement.getLease(lease_id)
    assert lease.buyer == buyers[0].address and lease.provider == providers[0].address
    assert lease.units == 2 and lease.price == int(2.5 * UBC)
    assert lease.end - lease.start == 2 * HOUR
    assert settlement.clearingPrice(m.matcher, 1, H100) == int(2.5 * UBC)
    round_info = settlement.rounds(m.matcher, 1)
    assert round_info.openedAt > 0 and round_info.batches == 1 and round_info.finalizedAt == round_info.openedAt
    assert settlement.lastRound(m.matcher) == 1 and settlement.isRoundFinal(m.matcher, 1)
    order_digest = order[0].digest(m.domain)
    bid_digest = bid[0].digest(m.domain)
    assert lease_id == settlement.leaseIdOf(m.matcher, 1, order_digest, bid_digest)
    assert lease_id == keccak(
        abi_encode(["address", "uint64", "bytes32", "bytes32"], [m.matcher.address, 1, order_digest, bid_digest])
    )
    [opened] = receipt.decode_logs(settlement.LeaseOpened)
    assert tuple(opened.event_arguments[k] for k in ("round", "buyer", "matcher", "provider")) == (
        1,
        buyers[0].address,
        m.matcher.address,
        providers[0].address,
    )
    assert (bytes(opened.orderDigest), bytes(opened.bidDigest)) == (order_digest, bid_digest)
    assert opened.end - opened.start == 2 * HOUR
    [price_log] = receipt.decode_logs(settlement.ClearingPrice)
    assert (price_log.matcher, price_log.round, bytes(price_log.market), price_log.price) == (
        m.matcher.address,
        1,
        bytes.fromhex(H100.removeprefix("0x")),
        int(2.5 * UBC),
    )
    # The order was filled completely: its nonce is claimed and void, no fill record is written.
    assert tuple(settlement.nonceState(buyers[0], order[0].nonce)) == (True, True)
    assert settlement.isNonceUsed(buyers[0], order[0].nonce)
    assert not settlement.isNonceCancelled(buyers[0], order[0].nonce)
    assert tuple(settlement.fills(order_digest)) == (0, 0)
    # The bid was filled partly: 2 of 4 units, in round 1; its nonce is claimed, not void.
    assert tuple(settlement.fills(bid_digest)) == (2, 1)
    assert tuple(settlement.nonceState(providers[0], bid[0].nonce)) == (True, False)
    assert not settlement.isNonceUsed(providers[0], bid[0].nonce)
    # Two bits per nonce, 128 nonces per word.
    nonce = bid[0].nonce
    assert (settlement.nonceBitmap(providers[0], nonce >> 7) >> ((nonce & 0x7F) * 2)) & 3 == 1


def test_one_order_fills_across_rounds_until_used_up(funded, settlement, buyers, providers):
    m = funded
    order = m.order(buyers[0], units=5)
    bid1, bid2 = m.bid(providers[0], capacity=3), m.bid(providers[1], capacity=8)
    m.settle([order], [bid1], [(0, 0, 3)], {H100: 2 * UBC}, round_id=1)
    assert settlement.remainingOf(order[0].digest(m.domain), buyers[0], order[0].nonce, 5) == 2
    m.settle([order], [bid2], [(0, 0, 2)], {H100: 2 * UBC}, round_id=2)
    assert settlement.remainingOf(order[0].digest(m.domain), buyers[0], order[0].nonce, 5) == 0
    with ape.reverts(settlement.NonceUsed):
        m.settle([order], [bid2], [(0, 0, 1)], {H100: 2 * UBC}, round_id=3)


def test_replay_beyond_units_is_overfill(funded, settlement, buyers, providers):
    m = funded
    order = m.order(buyers[0], units=2)
    bid = m.bid(providers[0], capacity=8)
    with ape.reverts(settlement.OrderOverfilled):
        m.settle([order], [bid], [(0, 0, 3)], {H100: 2 * UBC})
    m.settle([order], [bid], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1)
    with ape.reverts(settlement.OrderOverfilled):
        m.settle([order], [bid], [(0, 0, 2)], {H100: 2 * UBC}, round_id=2)
    other = m.order(buyers[1], units=9)
    with ape.reverts(settlement.BidOverfilled):
        m.settle([other], [bid], [(0, 0, 8)], {H100: 2 * UBC}, round_id=2)


def test_same_order_twice_in_one_batch_is_overfill(funded, settlement, buyers, providers):
    m = funded
    order = m.order(buyers[0], units=2)
    bids = [m.bid(providers[0]), m.bid(providers[1])]
    with ape.reverts(settlement.OrderOverfilled):
        m.settle([order], bids, [(0, 0, 2), (0, 1, 1)], {H100: 2 * UBC})


def test_duplicate_pair_in_round_is_rejected(funded, settlement, buyers, providers):
    m = funded
    order, bid = m.order(buyers[0], units=4), m.bid(providers[0])
    with ape.reverts(settlement.DuplicateLease):
        m.settle([order], [bid], [(0, 0, 1), (0, 0, 1)], {H100: 2 * UBC})


def test_round_cannot_be_settled_twice(funded, settlement, buyers, providers):
    m = funded
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=7)
    with ape.reverts(settlement.RoundAlreadySettled):
        m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=7, batch=1)


def test_batches_land_in_order_and_share_prices(funded, settlement, buyers, providers):
    m = funded
    first = ([m.order(buyers[0])], [m.bid(providers[0])])
    second = ([m.order(buyers[1])], [m.bid(providers[1])])
    with ape.reverts(settlement.BatchOutOfOrder):
        m.settle(*first, [(0, 0, 1)], {H100: 2 * UBC}, round_id=4, batch=1, final=False)
    m.settle(*first, [(0, 0, 1)], {H100: 2 * UBC}, round_id=4, batch=0, final=False)
    assert settlement.rounds(m.matcher, 4).finalizedAt == 0
    assert not settlement.isRoundFinal(m.matcher, 4)
    with reverts(settlement.BatchOutOfOrder, round=4, expected=1, given=2):
        m.settle(*second, [(0, 0, 1)], {H100: 2 * UBC}, round_id=4, batch=2)
    # Two prices in one market and round are refused, even across batches.
    with ape.reverts(settlement.ConflictingClearingPrice):
        m.settle(*second, [(0, 0, 1)], {H100: 3 * UBC}, round_id=4, batch=1)
    m.settle(*second, [(0, 0, 1)], {H100: 2 * UBC}, round_id=4, batch=1)
    assert settlement.rounds(m.matcher, 4).batches == 2 and settlement.rounds(m.matcher, 4).finalizedAt > 0
    assert settlement.isRoundFinal(m.matcher, 4)


def test_two_prices_in_one_batch(funded, settlement, buyers, providers):
    m = funded
    order, bid = m.order(buyers[0]), m.bid(providers[0])
    with ape.reverts(settlement.ConflictingClearingPrice):
        m.settlement.settle(
            (1, 0, True, m.now() + 10), [order[0].as_call_tuple()], [order[1]], [bid[0].as_call_tuple()], [bid[1]],
            [(0, 0, 1)], [(H100, 2 * UBC), (H100, int(2.5 * UBC))], sender=m.matcher,
        )


def test_only_bonded_matcher_settles(funded, settlement, buyers, providers, outsider):
    m = funded
    with ape.reverts(settlement.MatcherNotBonded):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)


def _bond(m, account, amount):
    m.give_ubt(account, amount)
    m.ubt.approve(m.settlement, amount, sender=account)
    m.settlement.bondMatcher(amount, account, sender=account)


def test_bond_below_minimum_cannot_settle(accounts, funded, settlement, buyers, providers, outsider, params):
    m = funded
    _bond(m, outsider, params.min_matcher_bond - 1)
    assert not settlement.isBondedMatcher(outsider)
    buyer, provider = accounts_of(m, outsider, accounts)
    batch = ([m.order(buyer, matcher=outsider.address)], [m.bid(provider, matcher=outsider.address)])
    with reverts(settlement.MatcherNotBonded, matcher=outsider):
        m.settle(*batch, [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    _bond(m, outsider, 1)
    assert settlement.isBondedMatcher(outsider)
    receipt = m.settle(*batch, [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    assert len(m.lease_ids(receipt)) == 1


def accounts_of(m, other_matcher, accounts):
    """A fresh buyer and provider (no other test role) bound to `other_matcher`, funded and staked."""
    buyer, provider = accounts[20], accounts[21]
    m.fund_buyer(buyer, 1_000 * UBC, matcher=other_matcher)
    m.stake_provider(provider, 8, matcher=other_matcher)
    return buyer, provider


def test_rounds_are_per_matcher(accounts, funded, settlement, buyers, providers, outsider, params):
    """Another matcher cannot add to, close or squat a matcher's round: its round 5 is its own."""
    m = funded
    _bond(m, outsider, params.min_matcher_bond)
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=5, final=False)
    buyer, provider = accounts_of(m, outsider, accounts)
    other = ([m.order(buyer, matcher=outsider.address)], [m.bid(provider, matcher=outsider.address)])
    # The outsider's round 5 never opened, so its batch 1 is out of order.
    with reverts(settlement.BatchOutOfOrder, round=5, expected=0, given=1):
        m.settle(*other, [(0, 0, 1)], {H100: 3 * UBC}, round_id=5, batch=1, sender=outsider)
    # It opens its own round 5 with its own price, which leaves the matcher's round alone.
    m.settle(*other, [(0, 0, 1)], {H100: 3 * UBC}, round_id=5, sender=outsider)
    assert settlement.clearingPrice(outsider, 5, H100) == 3 * UBC
    assert settlement.clearingPrice(m.matcher, 5, H100) == 2 * UBC
    assert settlement.isRoundFinal(outsider, 5) and not settlement.isRoundFinal(m.matcher, 5)
    assert settlement.rounds(m.matcher, 5).batches == 1
    m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=5, batch=1)
    assert settlement.rounds(m.matcher, 5).batches == 2 and settlement.isRoundFinal(m.matcher, 5)


def test_another_matcher_cannot_settle_bound_accounts(
    accounts, funded, settlement, buyers, providers, outsider, params
):
    m = funded
    _bond(m, outsider, params.min_matcher_bond)
    # Messages naming the test matcher cannot be settled by the outsider.
    order, bid = m.order(buyers[0]), m.bid(providers[0])
    with reverts(settlement.MessageForOtherMatcher, digest=order[0].digest(m.domain), matcher=m.matcher):
        m.settle([order], [bid], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    # Messages naming the outsider, from accounts bound to the test matcher, are refused too.
    order = m.order(buyers[0], matcher=outsider.address)
    bid = m.bid(providers[0], matcher=outsider.address)
    with reverts(settlement.AccountNotBound, account=buyers[0], matcher=outsider):
        m.settle([order], [bid], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    buyer, _ = accounts_of(m, outsider, accounts)
    with reverts(settlement.AccountNotBound, account=providers[0], matcher=outsider):
        m.settle([m.order(buyer, matcher=outsider.address)], [bid], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    # And the test matcher cannot settle the outsider's accounts, even with messages naming it.
    with reverts(settlement.AccountNotBound, account=buyer, matcher=m.matcher):
        m.settle([m.order(buyer)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    assert settlement.lastRound(outsider) == 0


def test_unbound_account_cannot_be_settled(market, settlement, buyers, providers):
    m = market
    m.stake_provider(providers[0], 8)
    m.mint_credits(buyers[0], 100 * UBC)
    settlement.deposit(100 * UBC, sender=buyers[0])
    assert settlement.boundMatcherOf(buyers[0]) == ZERO_ADDRESS
    with reverts(settlement.AccountNotBound, account=buyers[0], matcher=m.matcher):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    receipt = settlement.bindMatcher(m.matcher, sender=buyers[0])
    [log] = receipt.decode_logs(settlement.MatcherBound)
    assert (log.account, log.matcher, log.effectiveAt) == (buyers[0].address, m.matcher.address, receipt.timestamp)
    assert settlement.boundMatcherOf(buyers[0]) == m.matcher.address
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_changing_matcher_waits_for_the_notice(
    accounts, funded, settlement, buyers, providers, outsider, chain, params
):
    m = funded
    _bond(m, outsider, params.min_matcher_bond)
    receipt = settlement.bindMatcher(outsider, sender=providers[0])
    change_at = receipt.timestamp + params.notice_period
    [log] = receipt.decode_logs(settlement.MatcherBound)
    assert (log.matcher, log.effectiveAt) == (outsider.address, change_at)
    binding = settlement.bindingOf(providers[0])
    assert (binding.matcher, binding.changeAt, binding.next, binding.requestedAt) == (
        m.matcher.address, change_at, outsider.address, receipt.timestamp,
    )
    # Until the notice is over the old matcher still settles the provider's bids.
    assert settlement.boundMatcherOf(providers[0]) == m.matcher.address
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    chain.pending_timestamp = change_at
    chain.mine()
    assert settlement.boundMatcherOf(providers[0]) == outsider.address
    with reverts(settlement.AccountNotBound, account=providers[0], matcher=m.matcher):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    buyer, _ = accounts_of(m, outsider, accounts)
    m.settle(
        [m.order(buyer, matcher=outsider.address)],
        [m.bid(providers[0], matcher=outsider.address)],
        [(0, 0, 1)],
        {H100: 2 * UBC},
        sender=outsider,
    )


def test_price_above_max_price(funded, settlement, buyers, providers):
    m = funded
    with ape.reverts(settlement.ClearingPriceAboveMaxPrice):
        m.settle(
            [m.order(buyers[0], max_price=2 * UBC)], [m.bid(providers[0], price=UBC)], [(0, 0, 1)], {H100: 2 * UBC + 1}
        )


def test_bid_above_clearing_price(funded, settlement, buyers, providers):
    m = funded
    with ape.reverts(settlement.BidAboveClearingPrice):
        m.settle([m.order(buyers[0])], [m.bid(providers[0], price=2 * UBC)], [(0, 0, 1)], {H100: 2 * UBC - 1})


def test_market_mismatch_and_unpriced_market(funded, settlement, buyers, providers):
    m = funded
    with ape.reverts(settlement.MarketMismatch):
        m.settle([m.order(buyers[0], market=A100)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC, A100: 2 * UBC})
    with ape.reverts(settlement.MarketNotPriced):
        m.settle([m.order(buyers[0], market=A100)], [m.bid(providers[0], market=A100)], [(0, 0, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.ZeroClearingPrice):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 0})


def test_duration_beyond_bid_max_duration(funded, settlement, buyers, providers):
    m = funded
    with ape.reverts(settlement.DurationTooLong):
        m.settle(
            [m.order(buyers[0], duration=3 * HOUR)],
            [m.bid(providers[0], max_duration=2 * HOUR)],
            [(0, 0, 1)],
            {H100: 2 * UBC},
        )


def test_expired_deadlines(funded, settlement, buyers, providers, chain):
    m = funded
    past = chain.pending_timestamp - 1
    with ape.reverts(settlement.OrderExpired):
        m.settle([m.order(buyers[0], deadline=past)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.BidExpired):
        m.settle([m.order(buyers[0])], [m.bid(providers[0], deadline=past)], [(0, 0, 1)], {H100: 2 * UBC})


def test_cancelled_nonce(funded, settlement, buyers, providers, chain, params):
    m = funded
    order = m.order(buyers[0], nonce=513)
    with reverts(settlement.CancelNotRequested, signer=buyers[0], nonce=513):
        settlement.cancelNonces([513], sender=buyers[0])
    receipt = settlement.requestCancel([513], sender=buyers[0])
    effective_at = receipt.timestamp + params.notice_period
    [log] = receipt.decode_logs(settlement.CancelRequested)
    assert (log.signer, log.nonce, log.effectiveAt) == (buyers[0].address, 513, effective_at)
    assert settlement.cancelRequestedAt(buyers[0], 513) == receipt.timestamp
    assert settlement.isNonceCancelled(buyers[0], 513)
    assert not settlement.isNonceUsed(buyers[0], 513)
    with reverts(settlement.NoticeNotOver, readyAt=effective_at):
        settlement.cancelNonces([513], sender=buyers[0])
    # During the notice the message can still be settled (a batch in flight lands)...
    in_flight = m.order(buyers[0], nonce=514)
    settlement.requestCancel([514], sender=buyers[0])
    m.settle([in_flight], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    # ...and after it the nonce is void.
    chain.pending_timestamp = effective_at
    receipt = settlement.cancelNonces([513], sender=buyers[0])
    [log] = receipt.decode_logs(settlement.NonceCancelled)
    assert (log.signer, log.nonce) == (buyers[0].address, 513)
    assert tuple(settlement.nonceState(buyers[0], 513)) == (False, True)
    assert settlement.isNonceUsed(buyers[0], 513)
    with reverts(settlement.NonceUsed, signer=buyers[0], nonce=513):
        m.settle([order], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_wrong_signer(funded, settlement, buyers, providers):
    m = funded
    order, _ = m.order(buyers[0])
    forged = order.sign(buyers[1].private_key, m.domain)
    with ape.reverts(settlement.SignerMismatch):
        m.settle([(order, forged)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


@pytest.mark.parametrize("wrong", ["chain", "contract"])
def test_signature_for_another_chain_or_contract(funded, settlement, buyers, providers, wrong):
    m = funded
    order, _ = m.order(buyers[0])
    other = (
        Domain(chain_id=m.domain.chain_id + 1, verifying_contract=m.domain.verifying_contract)
        if wrong == "chain"
        else Domain(chain_id=m.domain.chain_id, verifying_contract=str(m.bme.address))
    )
    with ape.reverts(settlement.SignerMismatch):
        m.settle(
            [(order, order.sign(buyers[0].private_key, other))], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}
        )


def test_high_s_malleated_signature(funded, settlement, buyers, providers):
    m = funded
    order, signature = m.order(buyers[0])
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    malleated = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    # The malleated signature recovers the same signer, and OpenZeppelin's ECDSA still refuses it.
    assert (
        Account._recover_hash(
            order.digest(m.domain), vrs=(malleated[64], int.from_bytes(malleated[:32], "big"), SECP256K1_N - s)
        )
        == buyers[0].address
    )
    with ape.reverts(settlement.InvalidSignature):
        m.settle([(order, malleated)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.InvalidSignature):
        m.settle([(order, signature[:64])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_unstaked_and_understaked_provider(market, settlement, buyers, providers, params):
    m = market
    m.fund_buyer(buyers[0], 1_000 * UBC)
    m.bind(providers[0])
    with ape.reverts(settlement.InsufficientFreeStake):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    m.stake_provider(providers[0], 1)
    with ape.reverts(settlement.InsufficientFreeStake):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 2)], {H100: 2 * UBC})
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_underfunded_buyer(market, settlement, buyers, providers):
    m = market
    m.stake_provider(providers[0], 8)
    m.fund_buyer(buyers[0], 10 * UBC)
    # 2 units * 2 UBC * 3 h = 12 UBC > 10 UBC.
    with ape.reverts(settlement.InsufficientEscrow):
        m.settle([m.order(buyers[0], duration=3 * HOUR)], [m.bid(providers[0])], [(0, 0, 2)], {H100: 2 * UBC})


def test_match_index_and_count_checks(funded, settlement, buyers, providers):
    m = funded
    order, bid = m.order(buyers[0]), m.bid(providers[0])
    with ape.reverts(settlement.MatchIndexOutOfRange):
        m.settle([order], [bid], [(0, 1, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.ZeroUnits):
        m.settle([order], [bid], [(0, 0, 0)], {H100: 2 * UBC})
    with ape.reverts(settlement.SignatureCountMismatch):
        settlement.settle(
            (1, 0, True, m.now() + 10),
            [order[0].as_call_tuple()],
            [],
            [bid[0].as_call_tuple()],
            [bid[1]],
            [],
            [],
            sender=m.matcher,
        )


def test_multi_market_round_with_uniform_prices(funded, settlement, buyers, providers):
    m = funded
    orders = [m.order(buyers[0], units=3), m.order(buyers[1], market=A100, units=1, max_price=5 * UBC)]
    bids = [
        m.bid(providers[0], price=UBC),
        m.bid(providers[1], price=2 * UBC),
        m.bid(providers[2], market=A100, price=4 * UBC),
    ]
    receipt = m.settle(orders, bids, [(0, 0, 2), (0, 1, 1), (1, 2, 1)], {H100: 2 * UBC, A100: 4 * UBC})
    logs = list(receipt.decode_logs(settlement.LeaseOpened))
    assert [(log.units, log.price) for log in logs] == [(2, 2 * UBC), (1, 2 * UBC), (1, 4 * UBC)]
    assert settlement.clearingPrice(m.matcher, 1, A100) == 4 * UBC
    assert settlement.clearingPrice(m.matcher, 1, H100) == 2 * UBC


# ----- one message per (signer, nonce) -----


def test_two_messages_with_one_nonce_in_a_batch(funded, settlement, buyers, providers):
    m = funded
    first, second = m.order(buyers[0], nonce=9_001, units=1), m.order(buyers[0], nonce=9_001, units=2)
    bids = [m.bid(providers[0]), m.bid(providers[1])]
    with reverts(settlement.DuplicateNonce, signer=buyers[0], nonce=9_001):
        m.settle([first, second], bids, [(0, 0, 1), (1, 1, 2)], {H100: 2 * UBC})
    # The same message listed twice is caught the same way (it could fill twice otherwise).
    bid = m.bid(providers[0], nonce=9_002)
    with reverts(settlement.DuplicateNonce, signer=providers[0], nonce=9_002):
        m.settle([m.order(buyers[0]), m.order(buyers[1])], [bid, bid], [(0, 0, 1), (1, 1, 1)], {H100: 2 * UBC})
    # A transaction's marks do not leak into the next one.
    receipt = m.settle([first], [bid], [(0, 0, 1)], {H100: 2 * UBC})
    assert len(m.lease_ids(receipt)) == 1


def test_a_nonce_belongs_to_the_first_message_filled(funded, settlement, buyers, providers):
    m = funded
    bid = m.bid(providers[0], capacity=4, nonce=7_777)
    twin = m.bid(providers[0], capacity=4, price=UBC, nonce=7_777)
    m.settle([m.order(buyers[0], units=1)], [bid], [(0, 0, 1)], {H100: 2 * UBC})
    bid_digest, twin_digest = bid[0].digest(m.domain), twin[0].digest(m.domain)
    assert tuple(settlement.nonceState(providers[0], 7_777)) == (True, False)
    assert settlement.remainingOf(bid_digest, providers[0], 7_777, 4) == 3
    assert settlement.remainingOf(twin_digest, providers[0], 7_777, 4) == 0
    # Another message with the claimed nonce cannot fill at all.
    with reverts(settlement.NonceUsed, signer=providers[0], nonce=7_777):
        m.settle([m.order(buyers[1], units=1)], [twin], [(0, 0, 1)], {H100: 2 * UBC})
    # The claiming message fills on until it is used up; then the nonce is void.
    m.settle([m.order(buyers[1], units=3)], [bid], [(0, 0, 3)], {H100: 2 * UBC})
    assert tuple(settlement.fills(bid_digest)) == (4, settlement.lastRound(m.matcher))
    assert tuple(settlement.nonceState(providers[0], 7_777)) == (True, True)
    with reverts(settlement.NonceUsed, signer=providers[0], nonce=7_777):
        m.settle([m.order(buyers[2], units=1)], [bid], [(0, 0, 1)], {H100: 2 * UBC})


def test_a_partial_order_keeps_its_fill_record(funded, settlement, buyers, providers):
    m = funded
    order = m.order(buyers[0], units=3)
    digest = order[0].digest(m.domain)
    m.settle([order], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    assert tuple(settlement.fills(digest)) == (1, 0)  # orders record no round
    m.settle([order], [m.bid(providers[1])], [(0, 0, 2)], {H100: 2 * UBC})
    assert tuple(settlement.nonceState(buyers[0], order[0].nonce)) == (True, True)
    assert settlement.remainingOf(digest, buyers[0], order[0].nonce, 3) == 0


# ----- the shortest and the cheapest lease -----


def test_duration_below_the_minimum(funded, settlement, buyers, providers, params):
    m = funded
    short = m.order(buyers[0], duration=params.min_lease_duration - 1)
    with reverts(settlement.DurationTooShort, orderIndex=0, minimum=params.min_lease_duration):
        m.settle([short], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    receipt = m.settle(
        [m.order(buyers[0], duration=params.min_lease_duration)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}
    )
    [lease_id] = m.lease_ids(receipt)
    lease = settlement.getLease(lease_id)
    assert lease.end - lease.start == params.min_lease_duration


def test_zero_cost_lease(funded, settlement, buyers, providers, params):
    m = funded
    # 1 unit x 1 base unit per hour x 60 s rounds down to nothing.
    order = m.order(buyers[0], units=1, duration=params.min_lease_duration, max_price=1)
    bid = m.bid(providers[0], price=1)
    assert 1 * 1 * params.min_lease_duration // HOUR == 0
    with reverts(settlement.ZeroCostLease, matchIndex=0):
        m.settle([order], [bid], [(0, 0, 1)], {H100: 1})
    order = m.order(buyers[0], units=1, duration=HOUR, max_price=1)
    receipt = m.settle([order], [bid], [(0, 0, 1)], {H100: 1})
    assert len(m.lease_ids(receipt)) == 1


# ----- the batch header: deadline, increasing rounds, the round span -----


def test_batch_past_its_deadline(funded, settlement, buyers, providers, chain):
    m = funded
    batch = ([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    deadline = m.now() + 5
    chain.pending_timestamp = deadline + 1
    with reverts(settlement.BatchExpired, deadline=deadline):
        m.settle(*batch, deadline=deadline)
    assert settlement.lastRound(m.matcher) == 0
    chain.pending_timestamp = deadline + 1
    m.settle(*batch, deadline=deadline + 1)  # the deadline itself is still in time
    assert settlement.lastRound(m.matcher) == 1


def test_round_ids_only_grow(funded, settlement, buyers, providers):
    m = funded
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=5)
    assert settlement.lastRound(m.matcher) == 5 and m.next_round() == 6
    for stale in (5, 3):
        with reverts(settlement.RoundIdNotIncreasing, round=stale, lastRound=5):
            m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=stale)
    m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=9)
    assert settlement.lastRound(m.matcher) == 9
    assert settlement.rounds(m.matcher, 6).openedAt == 0  # skipped ids never open
    assert not settlement.isRoundFinal(m.matcher, 6)


def test_round_closes_after_its_span(funded, settlement, buyers, providers, chain, params):
    m = funded
    r = m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, final=False)
    opened_at = settlement.rounds(m.matcher, 1).openedAt
    assert opened_at == r.timestamp and not settlement.isRoundFinal(m.matcher, 1)
    chain.pending_timestamp = opened_at + params.max_round_span + 1
    chain.mine()
    # Past its span the round is final without a final batch, and takes no more batches.
    assert settlement.isRoundFinal(m.matcher, 1)
    with reverts(settlement.RoundClosed, round=1):
        m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1, batch=1)


def test_last_batch_within_the_span(funded, settlement, buyers, providers, chain, params):
    m = funded
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, final=False)
    opened_at = settlement.rounds(m.matcher, 1).openedAt
    chain.pending_timestamp = opened_at + params.max_round_span
    m.settle(
        [m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1, batch=1, final=False
    )
    assert settlement.rounds(m.matcher, 1).batches == 2 and not settlement.isRoundFinal(m.matcher, 1)


def test_a_later_round_closes_the_earlier_one(funded, settlement, buyers, providers):
    m = funded
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, final=False)
    assert not settlement.isRoundFinal(m.matcher, 1)
    m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=2, final=False)
    assert settlement.isRoundFinal(m.matcher, 1) and not settlement.isRoundFinal(m.matcher, 2)
    with reverts(settlement.RoundClosed, round=1):
        m.settle([m.order(buyers[2])], [m.bid(providers[2])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1, batch=1)


def test_final_round_takes_no_more_batches(funded, settlement, buyers, providers):
    m = funded
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    assert settlement.isRoundFinal(m.matcher, 1)
    with reverts(settlement.RoundAlreadySettled, round=1):
        m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=1, batch=1)
    assert not settlement.isRoundFinal(m.matcher, 2)
