"""The per-address sign-in limit: an IPv6 client counts by its /64, so rotating addresses within it does
not buy fresh attempts (review finding 6); other networks and IPv4 addresses count apart (controls)."""

from __future__ import annotations

from edge.central.console.signin_guard import SignInGuard


def test_an_ipv6_client_rotating_addresses_in_its_64_shares_one_limit() -> None:
    guard = SignInGuard(3, clock=lambda: 100.0)
    admitted = [guard.admit(f"2001:db8:1:2::{n:x}") for n in range(1, 5)]
    assert admitted[:3] == [None, None, None] and admitted[3] is not None
    assert guard.admit("2001:db8:1:3::1") is None  # control: another /64 is another client


def test_ipv4_addresses_count_apart_and_mapped_ones_as_ipv4() -> None:
    guard = SignInGuard(1, clock=lambda: 100.0)
    assert guard.admit("192.0.2.1") is None
    assert guard.admit("::ffff:192.0.2.1") is not None  # the same client over a dual-stack socket
    assert guard.admit("192.0.2.2") is None  # control: another address
