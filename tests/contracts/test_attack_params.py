"""Retroactive, instant admin changes (issue 9, finding 9): the admin sets a 1 s heartbeat interval
(every open lease becomes reportable at once) or shortens the challenge window (pending
challenges vanish). Now the core is owned by an OpenZeppelin `TimelockController`: a change is
scheduled in public and executes only after `admin_delay`, and each lease keeps the parameters
version it opened under, so even an executed change does not touch open leases.
"""

from __future__ import annotations

import dataclasses

from ..conftest import H100, HOUR, UBC
from ..reverts import reverts
from .attack_kit import P_DEAR, assert_slashed, at, bond_matcher, head_time, passed_over

ZERO32 = b"\x00" * 32
READY = 1 << 2  # TimelockController.OperationState.Ready, as the expectedStates bitmap


def schedule_params(timelock, settlement, proposer, new_params, salt=ZERO32, delay=None):
    """Schedules `setParams(new_params)` through the timelock; returns (call data, operation id)."""
    data = settlement.setParams.encode_input(new_params.core_params())
    delay = timelock.getMinDelay() if delay is None else delay
    timelock.schedule(settlement.address, 0, data, ZERO32, salt, delay, sender=proposer)
    return data, timelock.hashOperation(settlement.address, 0, data, ZERO32, salt)


def execute(timelock, settlement, executor, data, salt=ZERO32):
    return timelock.execute(settlement.address, 0, data, ZERO32, salt, sender=executor)


def test_set_params_directly_is_refused(settlement, timelock, deployer, matcher, params):
    """Attack: the deployer (or anyone) calls `setParams` directly to apply a change at once.
    Only the timelock owns the core (`OwnableUnauthorizedAccount`)."""
    assert settlement.owner() == timelock.address
    hostile = dataclasses.replace(params, heartbeat_interval=1).core_params()
    for caller in (deployer, matcher):
        with reverts(settlement.OwnableUnauthorizedAccount, account=caller):
            settlement.setParams(hostile, sender=caller)
    assert settlement.params().heartbeatInterval == params.heartbeat_interval


def test_timelocked_change_cannot_execute_before_the_delay(chain, settlement, timelock, deployer, outsider, params):
    """Attack: schedule and execute in the same breath, or schedule with a shorter delay. The
    operation is not ready before `admin_delay` (`TimelockUnexpectedOperationState`), a shorter
    delay is refused (`TimelockInsufficientDelay`), and only the proposer may schedule."""
    hostile = dataclasses.replace(params, heartbeat_interval=1)
    with reverts(timelock.TimelockInsufficientDelay, delay=params.admin_delay - 1, minDelay=params.admin_delay):
        schedule_params(timelock, settlement, deployer, hostile, delay=params.admin_delay - 1)
    with reverts(timelock.AccessControlUnauthorizedAccount, account=outsider):
        schedule_params(timelock, settlement, outsider, hostile)

    t = head_time(chain) + 1
    at(chain, t)
    data, op = schedule_params(timelock, settlement, deployer, hostile)
    assert timelock.getTimestamp(op) == t + params.admin_delay
    at(chain, t + params.admin_delay - 1)
    with reverts(timelock.TimelockUnexpectedOperationState, operationId=op, expectedStates=READY.to_bytes(32, "big")):
        execute(timelock, settlement, deployer, data)
    assert settlement.params().heartbeatInterval == params.heartbeat_interval
    at(chain, t + params.admin_delay)  # the delay is over
    execute(timelock, settlement, deployer, data)
    assert settlement.params().heartbeatInterval == 1


def test_shorter_heartbeat_interval_does_not_make_open_leases_reportable(funded, chain, settlement, timelock, deployer,
                                                                         buyers, providers, params):
    """Attack: once the change executes, report every open lease for missing a 1 s heartbeat. The
    lease keeps the interval and grace of its version: `reportFault` reverts `HeartbeatNotMissed`
    with the old deadline; only leases opened afterwards get the new terms."""
    m = funded
    t = head_time(chain) + 1
    at(chain, t)
    data, _ = schedule_params(timelock, settlement, deployer, dataclasses.replace(params, heartbeat_interval=1,
                                                                                     heartbeat_grace=0))
    version0 = settlement.paramsVersion()

    at(chain, t + params.admin_delay - 20)
    o = m.order(buyers[0], units=1, duration=2 * HOUR, max_price=3 * UBC)
    b = m.bid(providers[0], capacity=4, price=P_DEAR)
    [lease] = m.lease_ids(m.settle([o], [b], [(0, 0, 1)], {H100: P_DEAR}))
    start = settlement.getLease(lease).start
    old_reportable = start + params.heartbeat_interval + params.heartbeat_grace + 1
    assert settlement.getLease(lease).paramsVersion == version0

    at(chain, t + params.admin_delay)
    execute(timelock, settlement, deployer, data)
    assert settlement.paramsVersion() == version0 + 1
    assert settlement.faultReportableAt(lease) == old_reportable
    at(chain, start + 40)  # far past 1 s + 0 grace, before the lease's own 60 s + 30 s
    with reverts(settlement.HeartbeatNotMissed, leaseId=lease, reportableAt=old_reportable):
        settlement.reportFault(lease, sender=buyers[0])
    settlement.heartbeat([lease], sender=providers[0])  # the provider keeps its old rhythm

    o2 = m.order(buyers[1], units=1, duration=2 * HOUR, max_price=3 * UBC)
    [lease2] = m.lease_ids(m.settle([o2], [b], [(0, 0, 1)], {H100: P_DEAR}))
    assert settlement.getLease(lease2).paramsVersion == version0 + 1
    assert settlement.faultReportableAt(lease2) == settlement.getLease(lease2).start + 1 + 0 + 1


def test_shorter_challenge_window_does_not_erase_a_pending_challenge(funded, chain, settlement, court, timelock,
                                                                     deployer, ubt, matcher, buyers, providers,
                                                                     params):
    """Attack: a matcher that passed over a receipted bid has the challenge window cut to 1 s before
    the provider gets round to challenging. The witness lease keeps its version's window, so the
    challenge still slashes within `maxRoundSpan + challengeWindow` (old value) of its start."""
    m = funded
    t = head_time(chain) + 1
    at(chain, t)
    data, _ = schedule_params(timelock, settlement, deployer, dataclasses.replace(params, challenge_window=1))

    at(chain, t + params.admin_delay - 100)
    c, tx = passed_over(m, court, chain, providers[0], providers[1], buyers[0])
    start = tx.timestamp
    closes = start + params.max_round_span + params.challenge_window
    at(chain, t + params.admin_delay)
    execute(timelock, settlement, deployer, data)
    assert settlement.params().challengeWindow == 1

    at(chain, start + params.max_round_span + 600)  # long past a 1 s window
    bond0, balance0 = settlement.matchers(matcher).bond, ubt.balanceOf(providers[0])
    witness_lease = settlement.leaseIdOf(matcher, c.witness_round, c.order.digest(m.domain), c.witness.digest(m.domain))
    assert settlement.challengeTermsOf(witness_lease)[0] == closes
    assert_slashed(settlement, ubt, matcher, providers[0], c.send(), params, bond0, balance0)

    # A lease opened under the new version does get the short window.
    bond_matcher(m, matcher, matcher.address, amount=bond0 - settlement.matchers(matcher).bond)  # top up
    c2, tx2 = passed_over(m, court, chain, providers[2], providers[3], buyers[1])
    new_closes = tx2.timestamp + params.max_round_span + 1
    chain.mine(timestamp=new_closes + 1)
    with reverts(court.ChallengeWindowClosed, round=c2.witness_round, closedAt=new_closes):
        c2.verify()


def test_bme_and_oracle_parameters_change_only_through_the_timelock(chain, bme, oracle, timelock, deployer, params):
    """Attack: the deployer (or a stolen deployer key) widens the mint spread or shortens the
    oracle's max age at once, ahead of users' trades. Now both contracts' admin is the timelock:
    a direct change reverts, and a scheduled one applies only after `admin_delay`."""
    from ..governance import execute, schedule

    for contract, call in ((bme, lambda: bme.setParams(9_000, 1, 1, 1, sender=deployer)),
                           (oracle, lambda: oracle.setMaxAge(1, sender=deployer))):
        with reverts(contract.AccessControlUnauthorizedAccount, account=deployer,
                     neededRole=contract.DEFAULT_ADMIN_ROLE()):
            call()
    data = oracle.setMaxAge.encode_input(7_200)
    salt, ready_at = schedule(timelock, chain, oracle.address, data, sender=deployer, delay=params.admin_delay)
    with reverts(timelock.TimelockUnexpectedOperationState):
        execute(timelock, oracle.address, data, salt, sender=deployer)
    assert oracle.maxAge() == params.oracle_max_age
    chain.pending_timestamp = ready_at
    execute(timelock, oracle.address, data, salt, sender=deployer)
    assert oracle.maxAge() == 7_200
