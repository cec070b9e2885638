"""UnderbidSettlement.settle: the happy path, fills across rounds, batches, and every attack."""

import ape
import pytest
from eth_account import Account

from underbid.eip712 import Domain

from ..conftest import A100, H100, HOUR, UBC

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
    assert settlement.clearingPrice(1, H100) == int(2.5 * UBC)
    round_info = settlement.rounds(1)
    assert round_info.matcher == m.matcher.address and round_info.settledAt > 0
    order_digest = order[0].digest(m.domain)
    assert lease_id == settlement.leaseIdOf(1, order_digest, bid[0].digest(m.domain))
    # The order was filled completely: its nonce is consumed, no partial-fill slot is written.
    assert settlement.isNonceUsed(buyers[0], order[0].nonce)
    assert not settlement.isNonceCancelled(buyers[0], order[0].nonce)
    assert settlement.partialFills(order_digest) == 0
    # The bid was filled partly: 2 of 4 units.
    assert settlement.partialFills(bid[0].digest(m.domain)) == 2
    assert not settlement.isNonceUsed(providers[0], bid[0].nonce)


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
    assert settlement.rounds(4).settledAt == 0
    # Two prices in one market and round are refused, even across batches.
    with ape.reverts(settlement.ConflictingClearingPrice):
        m.settle(*second, [(0, 0, 1)], {H100: 3 * UBC}, round_id=4, batch=1)
    m.settle(*second, [(0, 0, 1)], {H100: 2 * UBC}, round_id=4, batch=1)
    assert settlement.rounds(4).batches == 2 and settlement.rounds(4).settledAt > 0


def test_two_prices_in_one_batch(funded, settlement, buyers, providers):
    m = funded
    order, bid = m.order(buyers[0]), m.bid(providers[0])
    with ape.reverts(settlement.ConflictingClearingPrice):
        m.settlement.settle(
            (1, 0, True), [order[0].as_call_tuple()], [order[1]], [bid[0].as_call_tuple()], [bid[1]],
            [(0, 0, 1)], [(H100, 2 * UBC), (H100, int(2.5 * UBC))], sender=m.matcher,
        )


def test_only_bonded_matcher_settles(funded, settlement, buyers, providers, outsider):
    m = funded
    with ape.reverts(settlement.MatcherNotBonded):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)


def _bond(m, account, amount):
    m.give_ubt(account, amount)
    m.ubt.approve(m.settlement, amount, sender=account)
    m.settlement.bondMatcher(amount, sender=account)


def test_bond_below_minimum_cannot_settle(funded, settlement, buyers, providers, outsider, params):
    m = funded
    _bond(m, outsider, params.min_matcher_bond - 1)
    assert not settlement.isBondedMatcher(outsider)
    with ape.reverts(settlement.MatcherNotBonded):
        m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)
    _bond(m, outsider, 1)
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, sender=outsider)


def test_another_matcher_cannot_take_over_a_round(funded, settlement, buyers, providers, outsider, params):
    m = funded
    _bond(m, outsider, params.min_matcher_bond)
    m.settle([m.order(buyers[0])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=5, final=False)
    with ape.reverts(settlement.RoundOwnedByOtherMatcher):
        m.settle([m.order(buyers[1])], [m.bid(providers[1])], [(0, 0, 1)], {H100: 2 * UBC}, round_id=5, batch=1, sender=outsider)


def test_price_above_max_price(funded, settlement, buyers, providers):
    m = funded
    with ape.reverts(settlement.ClearingPriceAboveMaxPrice):
        m.settle([m.order(buyers[0], max_price=2 * UBC)], [m.bid(providers[0], price=UBC)], [(0, 0, 1)], {H100: 2 * UBC + 1})


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
        m.settle([m.order(buyers[0], duration=3 * HOUR)], [m.bid(providers[0], max_duration=2 * HOUR)], [(0, 0, 1)], {H100: 2 * UBC})


def test_expired_deadlines(funded, settlement, buyers, providers, chain):
    m = funded
    past = chain.pending_timestamp - 1
    with ape.reverts(settlement.OrderExpired):
        m.settle([m.order(buyers[0], deadline=past)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.BidExpired):
        m.settle([m.order(buyers[0])], [m.bid(providers[0], deadline=past)], [(0, 0, 1)], {H100: 2 * UBC})


def test_cancelled_nonce(funded, settlement, buyers, providers):
    m = funded
    order = m.order(buyers[0], nonce=513)
    receipt = settlement.cancelNonces(513 >> 8, 1 << (513 & 0xFF), sender=buyers[0])
    assert receipt.events[0].mask == 1 << 1
    assert settlement.isNonceCancelled(buyers[0], 513)
    with ape.reverts(settlement.NonceUsed):
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
        m.settle([(order, order.sign(buyers[0].private_key, other))], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_high_s_malleated_signature(funded, settlement, buyers, providers):
    m = funded
    order, signature = m.order(buyers[0])
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    malleated = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # 27 <-> 28
    # The malleated signature recovers the same signer, and OpenZeppelin's ECDSA still refuses it.
    assert Account._recover_hash(order.digest(m.domain), vrs=(malleated[64], int.from_bytes(malleated[:32], "big"), SECP256K1_N - s)) == buyers[0].address
    with ape.reverts(settlement.InvalidSignature):
        m.settle([(order, malleated)], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})
    with ape.reverts(settlement.InvalidSignature):
        m.settle([(order, signature[:64])], [m.bid(providers[0])], [(0, 0, 1)], {H100: 2 * UBC})


def test_unstaked_and_understaked_provider(market, settlement, buyers, providers, params):
    m = market
    m.fund_buyer(buyers[0], 1_000 * UBC)
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
        settlement.settle((1, 0, True), [order[0].as_call_tuple()], [], [bid[0].as_call_tuple()], [bid[1]], [], [], sender=m.matcher)


def test_multi_market_round_with_uniform_prices(funded, settlement, buyers, providers):
    m = funded
    orders = [m.order(buyers[0], units=3), m.order(buyers[1], market=A100, units=1, max_price=5 * UBC)]
    bids = [m.bid(providers[0], price=UBC), m.bid(providers[1], price=2 * UBC), m.bid(providers[2], market=A100, price=4 * UBC)]
    receipt = m.settle(orders, bids, [(0, 0, 2), (0, 1, 1), (1, 2, 1)], {H100: 2 * UBC, A100: 4 * UBC})
    logs = list(receipt.decode_logs(settlement.LeaseOpened))
    assert [(log.units, log.price) for log in logs] == [(2, 2 * UBC), (1, 2 * UBC), (1, 4 * UBC)]
    assert settlement.clearingPrice(1, A100) == 4 * UBC
