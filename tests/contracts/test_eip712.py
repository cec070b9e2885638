"""The Python package's single EIP-712 definition agrees with the contract and with eth-account."""

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from underbid.protocol.eip712 import Bid, Order, Receipt, recover_signer


def test_type_hashes_match_contract(settlement):
    order_hash, bid_hash, receipt_hash = settlement.typeHashes()
    assert bytes(order_hash) == Order.type_hash()
    assert bytes(bid_hash) == Bid.type_hash()
    assert bytes(receipt_hash) == Receipt.type_hash()


def test_receipt_digest_matches_contract_and_eth_account(settlement, domain, matcher):
    receipt = Receipt(matcher=str(matcher.address), bid_hash="0x" + "ab" * 32, round=2**40 + 3, issued_at=1_700_000_000)
    expected = encode_typed_data(full_message=receipt.typed_data(domain))
    assert receipt.digest(domain) == keccak(b"\x19" + expected.version + expected.header + expected.body)
    assert bytes(settlement.hashReceipt(receipt.as_call_tuple())) == receipt.digest(domain)
    signature = receipt.sign(matcher.private_key, domain)
    assert recover_signer(receipt.digest(domain), signature) == matcher.address


def test_domain_separator_matches_contract(settlement, domain):
    assert bytes(settlement.domainSeparator()) == domain.separator


def test_order_digest_matches_contract_and_eth_account(market, settlement, domain, buyers):
    order, _ = market.order(buyers[0], units=7, duration=12345, max_price=2**63, nonce=2**200 + 5)
    expected = encode_typed_data(full_message=order.typed_data(domain))
    eth_account_digest = keccak(b"\x19" + expected.version + expected.header + expected.body)
    assert order.digest(domain) == eth_account_digest
    assert bytes(settlement.hashOrder(order.as_call_tuple())) == order.digest(domain)


def test_bid_digest_matches_contract_and_eth_account(market, settlement, domain, providers):
    bid, _ = market.bid(providers[0], capacity=2**32 - 1, price=1, max_duration=7, nonce=0)
    expected = encode_typed_data(full_message=bid.typed_data(domain))
    eth_account_digest = keccak(b"\x19" + expected.version + expected.header + expected.body)
    assert bid.digest(domain) == eth_account_digest
    assert bytes(settlement.hashBid(bid.as_call_tuple())) == bid.digest(domain)


def test_recover_signer_matches_eth_account(market, domain, buyers):
    order, signature = market.order(buyers[1])
    assert recover_signer(order.digest(domain), signature) == buyers[1].address
    signable = encode_typed_data(full_message=order.typed_data(domain))
    assert Account.recover_message(signable, signature=signature) == buyers[1].address


def test_fast_signing_equals_eth_account_signing(domain, matcher):
    import coincurve

    receipt = Receipt(matcher=str(matcher.address), bid_hash="0x" + "cd" * 32, round=9, issued_at=1_700_000_123)
    fast = receipt.sign_fast(coincurve.PrivateKey(bytes.fromhex(matcher.private_key.removeprefix("0x"))), domain)
    assert fast == receipt.sign(matcher.private_key, domain)


def test_digest_of_values_equals_the_models_digest(domain, matcher):
    values = {
        "matcher": str(matcher.address),
        "bid_hash": "0x" + "ef" * 32,
        "round": 2**33 + 1,
        "issued_at": 1_700_000_456,
    }
    assert Receipt.digest_of(domain, values) == Receipt(**values).digest(domain)


def test_messages_sign_the_matcher(market, settlement, domain, buyers, providers, outsider):
    """The matcher is part of what is signed: naming another matcher changes every digest."""
    order, _ = market.order(buyers[0], nonce=77)
    other_order = order.model_copy(update={"matcher": str(outsider.address)})
    assert bytes(settlement.hashOrder(other_order.as_call_tuple())) == other_order.digest(domain)
    assert other_order.digest(domain) != order.digest(domain)
    bid, _ = market.bid(providers[0], nonce=78)
    other_bid = bid.model_copy(update={"matcher": str(outsider.address)})
    assert bytes(settlement.hashBid(other_bid.as_call_tuple())) == other_bid.digest(domain)
    assert other_bid.digest(domain) != bid.digest(domain)
    receipt = Receipt(
        matcher=str(market.matcher.address), bid_hash="0x" + bid.digest(domain).hex(), round=1, issued_at=5
    )
    other_receipt = receipt.model_copy(update={"matcher": str(outsider.address)})
    assert bytes(settlement.hashReceipt(other_receipt.as_call_tuple())) == other_receipt.digest(domain)
    assert other_receipt.digest(domain) != receipt.digest(domain)


def test_type_strings_name_the_matcher_second():
    assert Order.type_string().startswith("Order(address buyer,address matcher,")
    assert Bid.type_string().startswith("Bid(address provider,address matcher,")
    assert Receipt.type_string() == "Receipt(address matcher,bytes32 bidHash,uint64 round,uint64 issuedAt)"
