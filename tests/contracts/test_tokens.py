"""UnderbidToken (UBT) and UnderbidCredit (UBC): supply, permit, minter binding, non-transferability."""


import pytest
from ape.utils import ZERO_ADDRESS
from eth_account import Account
from eth_account.messages import encode_typed_data

from ..conftest import UBC, UBT
from ..reverts import reverts

# --------------------------------------------------------------------------------------------
# UBT
# --------------------------------------------------------------------------------------------


def permit_data(chain, token, owner, spender, value, nonce, deadline, name="Underbid Token"):
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {"name": name, "version": "1", "chainId": chain.chain_id, "verifyingContract": str(token.address)},
        "message": {
            "owner": str(owner.address),
            "spender": str(spender.address),
            "value": value,
            "nonce": nonce,
            "deadline": deadline,
        },
    }


def sign_permit(chain, token, owner, spender, value, deadline, *, signer=None, nonce=None, name="Underbid Token"):
    """(v, r, s) of an EIP-2612 permit signed with `signer`'s key (the owner's by default)."""
    nonce = token.nonces(owner) if nonce is None else nonce
    data = permit_data(chain, token, owner, spender, value, nonce, deadline, name)
    signed = Account.sign_typed_data((signer or owner).private_key, full_message=data)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@pytest.fixture
def fresh_ubt(project, deployer, buyers):
    """An unbound UBT whose genesis holder is not its deployer."""
    return project.UnderbidToken.deploy(buyers[2], 1_000 * UBT, sender=deployer)


def test_ubt_genesis_supply_metadata_and_minter(ubt, bme, deployer, params):
    assert ubt.name() == "Underbid Token" and ubt.symbol() == "UBT"
    assert ubt.decimals() == 18
    assert ubt.totalSupply() == params.genesis_supply
    # The deployer funded the devnet matcher's bond out of the genesis supply.
    assert ubt.balanceOf(deployer) == params.genesis_supply - params.min_matcher_bond
    assert ubt.minter() == bme.address


def test_ubt_genesis_goes_to_the_named_holder(fresh_ubt, deployer, buyers):
    assert fresh_ubt.totalSupply() == 1_000 * UBT
    assert fresh_ubt.balanceOf(buyers[2]) == 1_000 * UBT
    assert fresh_ubt.balanceOf(deployer) == 0
    assert fresh_ubt.minter() == ZERO_ADDRESS


def test_ubt_domain_separator_matches_eip712(chain, ubt, buyers, outsider):
    domain = ubt.eip712Domain()
    assert domain.name == "Underbid Token" and domain.version == "1"
    assert domain.chainId == chain.chain_id and domain.verifyingContract == ubt.address
    data = permit_data(chain, ubt, buyers[0], outsider, 1, 0, 1)
    assert ubt.DOMAIN_SEPARATOR() == encode_typed_data(full_message=data).header


def test_ubt_permit_sets_allowance_and_is_single_use(chain, market, ubt, buyers, outsider):
    owner = buyers[0]
    market.give_ubt(owner, 50 * UBT)
    deadline = chain.pending_timestamp + 600
    assert ubt.nonces(owner) == 0 and ubt.allowance(owner, outsider) == 0
    v, r, s = sign_permit(chain, ubt, owner, outsider, 30 * UBT, deadline)

    # Anyone may relay the permit: here the spender pays the gas.
    receipt = ubt.permit(owner, outsider, 30 * UBT, deadline, v, r, s, sender=outsider)
    assert ubt.allowance(owner, outsider) == 30 * UBT
    assert ubt.nonces(owner) == 1
    [approval] = receipt.decode_logs(ubt.Approval)
    assert approval.owner == owner.address and approval.spender == outsider.address and approval.value == 30 * UBT

    ubt.transferFrom(owner, outsider, 20 * UBT, sender=outsider)
    assert ubt.balanceOf(outsider) == 20 * UBT and ubt.allowance(owner, outsider) == 10 * UBT

    # Replaying the same signature recovers some other address now that the nonce moved.
    with reverts(ubt.ERC2612InvalidSigner, owner=owner):
        ubt.permit(owner, outsider, 30 * UBT, deadline, v, r, s, sender=outsider)
    assert ubt.allowance(owner, outsider) == 10 * UBT


def test_ubt_permit_rejects_wrong_signer_value_domain_and_expiry(chain, ubt, buyers, outsider):
    owner, other = buyers[0], buyers[1]
    deadline = chain.pending_timestamp + 600

    v, r, s = sign_permit(chain, ubt, owner, outsider, UBT, deadline, signer=other)
    with reverts(ubt.ERC2612InvalidSigner, signer=other, owner=owner):
        ubt.permit(owner, outsider, UBT, deadline, v, r, s, sender=outsider)

    v, r, s = sign_permit(chain, ubt, owner, outsider, UBT, deadline)
    with reverts(ubt.ERC2612InvalidSigner, owner=owner):
        ubt.permit(owner, outsider, 2 * UBT, deadline, v, r, s, sender=outsider)  # value changed

    v, r, s = sign_permit(chain, ubt, owner, outsider, UBT, deadline, name="Underbid")  # the settlement's domain name
    with reverts(ubt.ERC2612InvalidSigner, owner=owner):
        ubt.permit(owner, outsider, UBT, deadline, v, r, s, sender=outsider)

    now = chain.blocks.head.timestamp + 10
    v, r, s = sign_permit(chain, ubt, owner, outsider, UBT, now - 1)
    chain.pending_timestamp = now
    with reverts(ubt.ERC2612ExpiredSignature, deadline=now - 1):
        ubt.permit(owner, outsider, UBT, now - 1, v, r, s, sender=outsider)

    # The deadline itself is still valid.
    v, r, s = sign_permit(chain, ubt, owner, outsider, UBT, now)
    chain.pending_timestamp = now
    ubt.permit(owner, outsider, UBT, now, v, r, s, sender=outsider)
    assert ubt.allowance(owner, outsider) == UBT and ubt.nonces(owner) == 1


def test_ubt_permit_replaces_approve_for_minting_credits(chain, market, ubt, credit, bme, buyers, params):
    buyer = buyers[0]
    market.give_ubt(buyer, 10 * UBT)
    deadline = chain.pending_timestamp + 600
    v, r, s = sign_permit(chain, ubt, buyer, bme, 10 * UBT, deadline)
    ubt.permit(buyer, bme, 10 * UBT, deadline, v, r, s, sender=buyer)
    bme.mintCredits(10 * UBT, 0, sender=buyer)
    assert ubt.balanceOf(buyer) == 0 and ubt.allowance(buyer, bme) == 0
    assert credit.balanceOf(buyer) == 10 * UBT * params.ubt_price * (10_000 - params.mint_spread_bps) // (
        10**20 * 10_000
    )


def test_ubt_only_the_bound_minter_mints(ubt, deployer, outsider, bme):
    supply = ubt.totalSupply()
    with reverts(ubt.UnauthorizedCaller, caller=deployer):
        ubt.mint(deployer, 1, sender=deployer)
    with reverts(ubt.UnauthorizedCaller, caller=outsider):
        ubt.mint(outsider, 1, sender=outsider)
    assert ubt.totalSupply() == supply
    assert ubt.minter() == bme.address


def test_ubt_bind_minter_once_by_deployer(fresh_ubt, deployer, buyers, providers, outsider):
    token, minter = fresh_ubt, providers[0]
    with reverts(token.UnauthorizedCaller, caller=minter):
        token.mint(buyers[0], 1, sender=minter)  # unbound: nobody mints
    with reverts(token.UnauthorizedCaller, caller=outsider):
        token.bindMinter(outsider, sender=outsider)
    with reverts(token.UnauthorizedCaller, caller=buyers[2]):
        token.bindMinter(buyers[2], sender=buyers[2])  # the genesis holder is not the deployer
    with reverts(token.InvalidParameter, name="minter"):
        token.bindMinter(ZERO_ADDRESS, sender=deployer)

    receipt = token.bindMinter(minter, sender=deployer)
    assert token.minter() == minter.address
    [event] = receipt.decode_logs(token.MinterBound)
    assert event.minter == minter.address

    token.mint(buyers[0], 7 * UBT, sender=minter)
    assert token.balanceOf(buyers[0]) == 7 * UBT
    assert token.totalSupply() == 1_007 * UBT
    with reverts(token.UnauthorizedCaller, caller=deployer):
        token.mint(deployer, 1, sender=deployer)

    with reverts(token.AlreadyBound):
        token.bindMinter(providers[1], sender=deployer)
    with reverts(token.UnauthorizedCaller, caller=outsider):
        token.bindMinter(outsider, sender=outsider)
    assert token.minter() == minter.address


def test_ubt_bind_minter_on_deployment_is_final(ubt, bme, deployer, outsider):
    with reverts(ubt.AlreadyBound):
        ubt.bindMinter(outsider, sender=deployer)
    with reverts(ubt.UnauthorizedCaller, caller=outsider):
        ubt.bindMinter(outsider, sender=outsider)
    assert ubt.minter() == bme.address


def test_ubt_burn_and_burn_from(market, ubt, buyers, outsider):
    holder = buyers[0]
    market.give_ubt(holder, 10 * UBT)
    supply = ubt.totalSupply()

    ubt.burn(4 * UBT, sender=holder)
    assert ubt.balanceOf(holder) == 6 * UBT and ubt.totalSupply() == supply - 4 * UBT

    with reverts(ubt.ERC20InsufficientBalance, sender=holder, balance=6 * UBT, needed=7 * UBT):
        ubt.burn(7 * UBT, sender=holder)
    with reverts(ubt.ERC20InsufficientAllowance, spender=outsider, allowance=0, needed=1):
        ubt.burnFrom(holder, 1, sender=outsider)

    ubt.approve(outsider, 3 * UBT, sender=holder)
    ubt.burnFrom(holder, 2 * UBT, sender=outsider)
    assert ubt.balanceOf(holder) == 4 * UBT and ubt.allowance(holder, outsider) == UBT
    assert ubt.totalSupply() == supply - 6 * UBT
    assert ubt.balanceOf(outsider) == 0


# --------------------------------------------------------------------------------------------
# UBC
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_credit(project, deployer, providers):
    """A UBC whose escrow is a plain account (providers[1]), its BME not bound yet."""
    return project.UnderbidCredit.deploy(providers[1], sender=deployer)


@pytest.fixture
def eoa_bound_credit(fresh_credit, deployer, providers):
    """A UBC bound to two plain accounts acting as the BME (providers[0]) and the escrow (providers[1])."""
    fresh_credit.bindProtocol(providers[0], sender=deployer)
    return fresh_credit


def test_ubc_metadata_and_binding(credit, bme, settlement, buyers):
    assert credit.name() == "Underbid Credit" and credit.symbol() == "UBC"
    assert credit.decimals() == 6
    assert credit.bme() == bme.address and credit.escrow() == settlement.address
    assert credit.escrow() == settlement.address and credit.bme() == bme.address


def test_ubc_user_to_user_transfer_reverts(market, credit, buyers, outsider):
    a, b = buyers[0], buyers[1]
    market.mint_credits(a, 20 * UBC)
    balance = credit.balanceOf(a)
    assert balance >= 20 * UBC

    with reverts(credit.CreditNonTransferable, **{"from": a, "to": b}):
        credit.transfer(b, UBC, sender=a)
    with reverts(credit.CreditNonTransferable, **{"from": a, "to": b}):
        credit.transfer(b, 0, sender=a)  # even a zero transfer: no user-to-user path at all

    # An allowance does not open a user-to-user path either.
    credit.approve(b, 10 * UBC, sender=a)
    assert credit.allowance(a, b) == 10 * UBC
    with reverts(credit.CreditNonTransferable, **{"from": a, "to": b}):
        credit.transferFrom(a, b, UBC, sender=b)
    with reverts(credit.CreditNonTransferable, **{"from": a, "to": outsider}):
        credit.transferFrom(a, outsider, UBC, sender=b)

    assert credit.balanceOf(a) == balance
    assert credit.balanceOf(b) == 0 and credit.balanceOf(outsider) == 0
    assert credit.allowance(a, b) == 10 * UBC


def test_ubc_deposit_and_withdraw_move_credits_through_escrow_without_approval(
    market, credit, settlement, buyers, chain, params
):
    buyer = buyers[0]
    market.mint_credits(buyer, 100 * UBC)
    held = credit.balanceOf(buyer)
    escrow_before = credit.balanceOf(settlement)
    supply = credit.totalSupply()
    assert credit.allowance(buyer, settlement) == 0

    receipt = settlement.deposit(60 * UBC, sender=buyer)
    assert credit.balanceOf(buyer) == held - 60 * UBC
    assert credit.balanceOf(settlement) == escrow_before + 60 * UBC
    assert settlement.escrowOf(buyer).free == 60 * UBC
    assert credit.allowance(buyer, settlement) == 0  # no allowance was needed or consumed
    [transfer] = receipt.decode_logs(credit.Transfer)
    assert (transfer["from"], transfer.to, transfer.value) == (buyer.address, settlement.address, 60 * UBC)

    settlement.requestWithdrawal(25 * UBC, sender=buyer)
    chain.pending_timestamp = chain.pending_timestamp + params.notice_period
    receipt = settlement.withdraw(sender=buyer)
    [transfer] = receipt.decode_logs(credit.Transfer)
    assert (transfer["from"], transfer.to, transfer.value) == (settlement.address, buyer.address, 25 * UBC)
    assert credit.balanceOf(buyer) == held - 35 * UBC
    assert credit.balanceOf(settlement) == escrow_before + 35 * UBC
    assert settlement.escrowOf(buyer).free == 35 * UBC
    assert credit.totalSupply() == supply


def test_ubc_allowance_bypass_is_for_the_escrow_only(market, credit, settlement, buyers, outsider):
    buyer = buyers[0]
    market.mint_credits(buyer, 20 * UBC)
    # A third party cannot push a buyer's credits into the escrow without an allowance.
    with reverts(credit.ERC20InsufficientAllowance, spender=outsider, allowance=0, needed=UBC):
        credit.transferFrom(buyer, settlement, UBC, sender=outsider)


def test_ubc_escrow_pulls_and_pays_but_never_moves_user_to_user(eoa_bound_credit, providers, buyers):
    token, bme, escrow = eoa_bound_credit, providers[0], providers[1]
    a, b = buyers[0], buyers[1]
    token.mint(a, 50 * UBC, sender=bme)

    # The escrow pulls without any approval.
    assert token.allowance(a, escrow) == 0
    token.transferFrom(a, escrow, 30 * UBC, sender=escrow)
    assert token.balanceOf(a) == 20 * UBC and token.balanceOf(escrow) == 30 * UBC

    # The escrow pays out to any user.
    token.transfer(b, 10 * UBC, sender=escrow)
    assert token.balanceOf(b) == 10 * UBC and token.balanceOf(escrow) == 20 * UBC

    # A user may not push credits to the escrow: only the escrow's own pull records a deposit.
    with reverts(token.CreditNonTransferable, **{"from": a, "to": escrow}):
        token.transfer(escrow, 5 * UBC, sender=a)
    assert token.balanceOf(a) == 20 * UBC and token.balanceOf(escrow) == 20 * UBC

    # Even the escrow cannot move credits between two users.
    with reverts(token.CreditNonTransferable, **{"from": a, "to": b}):
        token.transferFrom(a, b, UBC, sender=escrow)

    # Any other spender cannot move credits at all, even towards the escrow.
    token.approve(b, UBC, sender=a)
    with reverts(token.CreditNonTransferable, **{"from": a, "to": escrow}):
        token.transferFrom(a, escrow, UBC, sender=b)
    assert token.totalSupply() == 50 * UBC


def test_ubc_only_bme_mints_and_burns(market, credit, bme, deployer, settlement, buyers, outsider):
    buyer = buyers[0]
    market.mint_credits(buyer, 20 * UBC)
    supply, held = credit.totalSupply(), credit.balanceOf(buyer)
    for caller in (deployer, outsider, buyer):
        with reverts(credit.UnauthorizedCaller, caller=caller):
            credit.mint(caller, UBC, sender=caller)
        with reverts(credit.UnauthorizedCaller, caller=caller):
            credit.burn(buyer, UBC, sender=caller)
    # The escrow is a protocol contract, but not the minter: it cannot mint either.
    assert credit.bme() == bme.address != settlement.address
    assert credit.totalSupply() == supply and credit.balanceOf(buyer) == held


def test_ubc_bound_bme_mints_and_burns(eoa_bound_credit, providers, buyers, deployer):
    token, bme_account, escrow = eoa_bound_credit, providers[0], providers[1]
    token.mint(buyers[0], 12 * UBC, sender=bme_account)
    assert token.balanceOf(buyers[0]) == 12 * UBC and token.totalSupply() == 12 * UBC
    token.burn(buyers[0], 5 * UBC, sender=bme_account)
    assert token.balanceOf(buyers[0]) == 7 * UBC and token.totalSupply() == 7 * UBC
    with reverts(token.ERC20InsufficientBalance, sender=buyers[0], balance=7 * UBC, needed=8 * UBC):
        token.burn(buyers[0], 8 * UBC, sender=bme_account)
    with reverts(token.UnauthorizedCaller, caller=escrow):
        token.mint(escrow, 1, sender=escrow)
    with reverts(token.UnauthorizedCaller, caller=deployer):
        token.burn(buyers[0], 1, sender=deployer)


def test_ubc_bind_protocol_once_by_deployer(project, fresh_credit, deployer, providers, outsider, buyers):
    token = fresh_credit
    assert token.bme() == ZERO_ADDRESS and token.escrow() == providers[1].address
    with reverts(token.InvalidParameter, name="escrow"):
        project.UnderbidCredit.deploy(ZERO_ADDRESS, sender=deployer)
    with reverts(token.UnauthorizedCaller, caller=providers[0]):
        token.mint(buyers[0], 1, sender=providers[0])  # unbound: nobody mints
    with reverts(token.UnauthorizedCaller, caller=outsider):
        token.bindProtocol(outsider, sender=outsider)
    with reverts(token.InvalidParameter, name="bme"):
        token.bindProtocol(ZERO_ADDRESS, sender=deployer)

    receipt = token.bindProtocol(providers[0], sender=deployer)
    [event] = receipt.decode_logs(token.ProtocolBound)
    assert event.bme == providers[0].address and event.escrow == providers[1].address
    assert token.bme() == providers[0].address and token.escrow() == providers[1].address

    with reverts(token.AlreadyBound):
        token.bindProtocol(outsider, sender=deployer)
    with reverts(token.UnauthorizedCaller, caller=outsider):
        token.bindProtocol(outsider, sender=outsider)
    assert token.bme() == providers[0].address and token.escrow() == providers[1].address


def test_settlement_refuses_a_credit_bound_to_another_escrow(project, deployer, ubt, params, providers):
    """A credit token whose fixed escrow is not the settlement being deployed (a wrong prediction,
    or a token made for another deployment) would refuse every transfer the settlement makes:
    the constructor refuses it instead."""
    credit = project.UnderbidCredit.deploy(providers[1], sender=deployer)
    with reverts(credit.InvalidParameter, name="credit"):
        project.UnderbidSettlement.deploy(
            deployer, ubt, credit, params.core_limits(), params.core_params(), sender=deployer
        )


def test_ubc_bind_protocol_on_deployment_is_final(credit, bme, settlement, deployer, outsider):
    with reverts(credit.AlreadyBound):
        credit.bindProtocol(outsider, sender=deployer)
    with reverts(credit.UnauthorizedCaller, caller=outsider):
        credit.bindProtocol(outsider, sender=outsider)
    assert credit.bme() == bme.address and credit.escrow() == settlement.address


def test_ubc_cannot_be_pushed_into_protocol_contracts(market, credit, settlement, bme, buyers):
    """Credits pushed straight into the escrow or the BME would be recorded by no account
    (stranded, breaking credit conservation), so only the escrow itself may move credits."""
    market.mint_credits(buyers[0], 20 * UBC)
    for target in (settlement, bme):
        with reverts(credit.CreditNonTransferable, **{"from": buyers[0].address, "to": target.address}):
            credit.transfer(target, UBC, sender=buyers[0])
    assert credit.balanceOf(settlement) == 0
