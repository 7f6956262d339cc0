"""The dummy hash an unknown account name is verified against costs what a real account's hash costs:
it carries the hasher's own parameters (it is a constant, so that no `edge` command pays an argon2 run
at import)."""

from __future__ import annotations

from argon2 import PasswordHasher, extract_parameters

from edge.central.console import credentials
from edge.central.console.credentials import hash_password, verify_password


def test_the_dummy_hash_has_the_parameters_of_a_real_accounts_hash() -> None:
    real = hash_password("a real account's password")
    assert extract_parameters(credentials._DUMMY_HASH) == extract_parameters(real)
    assert not credentials._hasher.check_needs_rehash(credentials._DUMMY_HASH)
    # Control: a hash made with weaker parameters is told apart by the same checks.
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash("a real account's password")
    assert extract_parameters(weak) != extract_parameters(real)
    assert credentials._hasher.check_needs_rehash(weak)


def test_an_unknown_account_is_refused_whatever_the_password() -> None:
    assert verify_password(None, "not any account's password: equalises the time of unknown names") == (
        False, None)
    real = hash_password("a real account's password")
    assert verify_password(real, "a real account's password") == (True, None)  # control
