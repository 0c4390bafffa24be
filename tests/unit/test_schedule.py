"""The lifecycle table, the callback's answers, Policy validation and plan()."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stek.errors import ConfigError
from stek.keys import generate_key
from stek.schedule import (
    LIFECYCLE,
    MAX_KEYS,
    Answer,
    Policy,
    State,
    StekWarning,
    decrypt_answer,
    encrypting_key,
    next_change,
    plan,
    state_of,
)


def key(a: int, r: int, e: int):
    return generate_key(size=80, activates_at=a, retires_at=r, expires_at=e)


K = key(100, 200, 300)


@pytest.mark.parametrize(
    ("now", "state"),
    [(0, State.PENDING), (99, State.PENDING), (100, State.ACTIVE), (199, State.ACTIVE),
     (200, State.DECRYPT_ONLY), (299, State.DECRYPT_ONLY), (300, State.EXPIRED),
     (10**9, State.EXPIRED)],
)
def test_state_boundaries(now: int, state: State) -> None:
    assert state_of(K, now) is state


@pytest.mark.parametrize(
    ("now", "tls12", "tls13"),
    [
        (50, Answer.OK, Answer.RENEW),  # pending: accepted as if active
        (150, Answer.OK, Answer.RENEW),  # active: TLS 1.3 always re-issues (nginx #1892)
        (250, Answer.RENEW, Answer.RENEW),  # decrypt-only: resume and re-issue
        (300, Answer.NO_TICKET, Answer.NO_TICKET),  # expired: full handshake
    ],
)
def test_decrypt_answers_follow_the_man_page(now: int, tls12: Answer, tls13: Answer) -> None:
    assert decrypt_answer(K, now, tls13=False) == tls12
    assert decrypt_answer(K, now, tls13=True) == tls13


def test_unknown_key_gets_a_full_handshake() -> None:
    assert decrypt_answer(None, 150, tls13=False) == Answer.NO_TICKET
    assert decrypt_answer(None, 150, tls13=True) == Answer.NO_TICKET


def test_only_active_keys_encrypt() -> None:
    assert [s for s, row in LIFECYCLE.items() if row.encrypts] == [State.ACTIVE]


def test_newest_active_key_encrypts() -> None:
    old, new = key(0, 500, 600), key(100, 400, 600)
    assert encrypting_key([old, new], 150) is new
    assert encrypting_key([old, new], 450) is old
    assert encrypting_key([old, new], 50) is old


def test_no_active_key_means_no_ticket() -> None:
    assert encrypting_key([key(100, 200, 300)], 250) is None
    assert encrypting_key([], 0) is None


def test_answer_values_are_the_callback_contract() -> None:
    assert [int(a) for a in (Answer.ERROR, Answer.NO_TICKET, Answer.OK, Answer.RENEW)] == \
        [-1, 0, 1, 2]


# -- Policy -------------------------------------------------------------------------

def test_policy_defaults_give_a_12h_window() -> None:
    p = Policy()
    assert (p.rotate_every, p.accept_for, p.publish_ahead, p.key_size) == (3600, 39600, 600, 80)
    assert p.window == 12 * 3600
    assert p.warnings == ()


@pytest.mark.parametrize("field", ["rotate_every", "accept_for", "publish_ahead"])
@pytest.mark.parametrize("value", [0, -1])
def test_policy_durations_must_be_positive(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=field):
        Policy(**{field: value})


def test_policy_window_capped_at_7_days() -> None:
    Policy(rotate_every=86400, accept_for=6 * 86400)
    with pytest.raises(ConfigError, match="7d"):
        Policy(rotate_every=86400, accept_for=6 * 86400 + 1)


def test_policy_warns_above_48h() -> None:
    p = Policy(rotate_every=6 * 3600, accept_for=48 * 3600)
    assert any("48h" in w for w in p.warnings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p.warn()
    assert caught and issubclass(caught[0].category, StekWarning)


def test_policy_warns_for_48_byte_keys() -> None:
    assert any("128 bits" in w for w in Policy(key_size=48).warnings)


def test_policy_bounds_number_of_keys() -> None:
    with pytest.raises(ConfigError, match="keys at once"):
        Policy(rotate_every=60, accept_for=6 * 3600)


def test_policy_rejects_odd_key_size() -> None:
    with pytest.raises(ConfigError, match="80 or 48"):
        Policy(key_size=32)


# -- plan() -------------------------------------------------------------------------

def test_plan_on_empty_ring_adds_a_key_active_now_until_the_slot_boundary() -> None:
    p = Policy()
    change = plan([], p, 10_000)
    assert len(change.add) == 1
    k = change.add[0]
    assert (k.activates_at, k.retires_at, k.expires_at) == (10_000, 10_800, 10_800 + 39600)


def test_plan_pre_publishes_the_next_key_within_publish_ahead() -> None:
    p = Policy()
    first = plan([], p, 10_000).add
    assert plan(first, p, 10_800 - 601).empty
    nxt = plan(first, p, 10_800 - 600).add
    assert len(nxt) == 1
    assert (nxt[0].activates_at, nxt[0].retires_at) == (10_800, 14_400)


def test_plan_drops_expired_keys() -> None:
    p = Policy(rotate_every=10, accept_for=10, publish_ahead=2)
    old = key(0, 10, 20)
    change = plan([old], p, 20)
    assert change.drop == (old.name,)


def test_plan_is_idempotent() -> None:
    p = Policy()
    keys = list(plan([], p, 5000).add)
    assert plan(keys, p, 5000).empty


def test_next_change_is_when_plan_first_changes() -> None:
    p = Policy()
    keys = list(plan([], p, 10_000).add)
    due = next_change(keys, p, 10_000)
    assert due == 10_800 - 600
    assert plan(keys, p, due - 1).empty
    assert not plan(keys, p, due).empty


@settings(max_examples=60, deadline=None)
@given(
    rotate=st.integers(1, 7200),
    accept=st.integers(1, 40_000),
    ahead=st.integers(1, 3600),
    start=st.integers(0, 10**9),
    steps=st.lists(st.integers(0, 5000), min_size=1, max_size=30),
)
def test_plan_invariants_over_time(rotate: int, accept: int, ahead: int, start: int,
                                   steps: list[int]) -> None:
    """Applied at any instants, the ring always has an active key covering
    [now, now + publish_ahead], no expired key, and never exceeds the bound."""
    try:
        p = Policy(rotate_every=rotate, accept_for=accept, publish_ahead=ahead)
    except ConfigError:
        return
    keys: list = []
    now = start
    for step in steps:
        now += step
        change = plan(keys, p, now)
        dropped = set(change.drop)
        keys = [k for k in keys if k.name not in dropped] + list(change.add)
        assert all(k.expires_at > now for k in keys)
        for t in (now, now + ahead):
            assert encrypting_key(keys, t) is not None
        assert len(keys) <= min(p.max_keys, MAX_KEYS)
        assert len({k.name for k in keys}) == len(keys)
        assert plan(keys, p, now).empty


# -- decrypted tickets ---------------------------------------------------------------

def test_decrypted_ticket_mapping_follows_the_man_page() -> None:
    from stek.schedule import TicketReturn as R
    from stek.schedule import TicketStatus as S
    from stek.schedule import decrypted_ticket_answer as answer

    assert answer(S.SUCCESS, 0, 10, 100) == R.USE
    assert answer(S.SUCCESS_RENEW, 0, 10, 100) == R.USE_RENEW
    assert answer(S.NO_DECRYPT, 0, 10, 100) == R.IGNORE_RENEW
    assert answer(S.EMPTY, 0, 10, 100) == R.IGNORE_RENEW
    assert answer(S.NONE, 0, 10, 100) == R.IGNORE_RENEW
    assert answer(S.FATAL_ERR_MALLOC, 0, 10, 100) == R.ABORT
    assert answer(99, 0, 10, 100) == R.IGNORE_RENEW


def test_sessions_older_than_max_age_get_a_full_handshake() -> None:
    from stek.schedule import TicketReturn as R
    from stek.schedule import TicketStatus as S
    from stek.schedule import decrypted_ticket_answer as answer

    assert answer(S.SUCCESS, 1000, 1099, 100) == R.USE
    assert answer(S.SUCCESS, 1000, 1100, 100) == R.IGNORE_RENEW
    assert answer(S.SUCCESS_RENEW, 1000, 5000, 100) == R.IGNORE_RENEW
