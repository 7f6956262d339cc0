"""Digest authentication: the standard's and the RFC's vectors, the server's verdicts, the client side."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.gb28181.digest import (
    MAX_TRACKED_NONCE_COUNTS,
    DigestChallenge,
    DigestCredentials,
    DigestError,
    DigestServer,
    DigestVerdict,
    authorization_for,
    digest_response,
    parse_auth_params,
    response_matches,
)

# GB/T 28181-2016 Annex J.1, as the standard prints it (no spaces after the commas).
J1_AUTHORIZATION = (
    'Digest username="64010000002020000001",realm="64010000",nonce="6fe9ba44a76be22a",'
    'uri="sip:64010000002000000001@172.18.16.5:5060",response="9625d92d1bddea7a911926e0db054968",'
    "algorithm=MD5"
)


def test_the_standards_annex_j1_vector() -> None:
    credentials = DigestCredentials.parse(J1_AUTHORIZATION)
    assert credentials.qop is None and credentials.algorithm == "MD5"
    assert response_matches(credentials, method="REGISTER", password="12345678")
    assert not response_matches(credentials, method="REGISTER", password="12345679")
    assert not response_matches(credentials, method="MESSAGE", password="12345678")
    assert (
        digest_response(
            username="64010000002020000001",
            realm="64010000",
            password="12345678",
            method="REGISTER",
            uri="sip:64010000002000000001@172.18.16.5:5060",
            nonce="6fe9ba44a76be22a",
        )
        == "9625d92d1bddea7a911926e0db054968"
    )


def test_the_rfc_2617_example_with_qop_auth() -> None:
    # RFC 2617 section 3.5: Mufasa / "Circle Of Life", qop=auth, nc=00000001, cnonce 0a4f113b.
    credentials = DigestCredentials.parse(
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert response_matches(credentials, method="GET", password="Circle Of Life")
    assert not response_matches(credentials, method="GET", password="Circle of Life")


def test_the_response_is_checked_against_the_uri_the_client_gave_not_the_request_uri() -> None:
    # sipp (and many devices) put the server address in uri=, while the request URI names the server id.
    credentials = DigestCredentials.parse(J1_AUTHORIZATION)
    request_uri = "sip:64010000002000000001@64010000"
    assert credentials.uri != request_uri
    assert response_matches(credentials, method="REGISTER", password="12345678")
    # Control: the same response computed over the request URI would not match.
    over_request_uri = digest_response(
        username=credentials.username,
        realm=credentials.realm,
        password="12345678",
        method="REGISTER",
        uri=request_uri,
        nonce=credentials.nonce,
    )
    assert over_request_uri != credentials.response


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


SECRET = b"0123456789abcdef-test-secret"


def server(clock: Clock, **kwargs: object) -> DigestServer:
    return DigestServer("3402000000", SECRET, clock=clock, **kwargs)  # type: ignore[arg-type]


def answer(challenge: DigestChallenge, password: str = "12345678", **kwargs: object) -> DigestCredentials:
    return authorization_for(
        challenge,
        username="34020000001320000001",
        password=password,
        method="REGISTER",
        uri="sip:34020000002000000001@10.0.0.1:5060",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_challenge_answered_with_qop_and_without_is_accepted() -> None:
    clock = Clock()
    digest = server(clock)
    challenge = digest.challenge()
    assert challenge.realm == "3402000000" and challenge.qop == ("auth",) and challenge.opaque
    with_qop = answer(challenge)
    assert with_qop.qop == "auth" and with_qop.nc == "00000001"
    assert digest.verify(with_qop, method="REGISTER", password="12345678") is DigestVerdict.OK
    # RFC 2069 form (most GB/T 28181 devices): a challenge without qop, answered without it.
    plain = answer(DigestChallenge.parse(str(server(clock, qop_auth=False).challenge())))
    assert plain.qop is None and plain.nc is None
    assert digest.verify(plain, method="REGISTER", password="12345678") is DigestVerdict.OK


def test_wrong_password_method_realm_and_opaque_are_told_apart() -> None:
    clock = Clock()
    digest = server(clock)
    challenge = digest.challenge()
    assert digest.verify(answer(challenge, "wrong"), method="REGISTER", password="12345678") is (
        DigestVerdict.WRONG_RESPONSE
    )
    assert digest.verify(answer(challenge), method="MESSAGE", password="12345678") is (
        DigestVerdict.WRONG_RESPONSE
    )
    other_realm = DigestChallenge(realm="64010000", nonce=challenge.nonce, opaque=challenge.opaque)
    assert digest.verify(answer(other_realm), method="REGISTER", password="12345678") is (
        DigestVerdict.WRONG_REALM
    )
    bad_opaque = DigestChallenge(realm=challenge.realm, nonce=challenge.nonce, opaque="00")
    assert digest.verify(answer(bad_opaque), method="REGISTER", password="12345678") is (
        DigestVerdict.OPAQUE_MISMATCH
    )
    # Devices that drop the opaque are still accepted.
    no_opaque = DigestChallenge(realm=challenge.realm, nonce=challenge.nonce)
    assert digest.verify(answer(no_opaque), method="REGISTER", password="12345678") is DigestVerdict.OK


def test_nonces_go_stale_and_foreign_ones_are_refused() -> None:
    clock = Clock()
    digest = server(clock, nonce_lifetime_s=300.0)
    challenge = digest.challenge()
    credentials = answer(challenge, nc=1)
    clock.now += 300
    assert digest.verify(credentials, method="REGISTER", password="12345678") is DigestVerdict.OK
    clock.now += 1
    assert digest.verify(answer(challenge, nc=2), method="REGISTER", password="12345678") is (
        DigestVerdict.STALE_NONCE
    )
    assert str(digest.challenge(stale=True)).endswith(",stale=true")
    # The standard's nonce was not made by this server; nor is one with a forged MAC or a changed stamp.
    j1 = DigestCredentials.parse(J1_AUTHORIZATION.replace('realm="64010000"', 'realm="3402000000"'))
    assert digest.verify(j1, method="REGISTER", password="12345678") is DigestVerdict.FOREIGN_NONCE
    fresh = digest.challenge().nonce
    other_mac = fresh[:-1] + ("0" if fresh[-1] != "0" else "1")
    other_stamp = f"{int(fresh[:8], 16) + 1:08x}" + fresh[8:]
    for forged in (other_mac, other_stamp):
        forged_challenge = DigestChallenge(realm="3402000000", nonce=forged, opaque=challenge.opaque)
        assert digest.verify(answer(forged_challenge), method="REGISTER", password="12345678") is (
            DigestVerdict.FOREIGN_NONCE
        )
    # A different secret makes different nonces: a restart with a new secret re-challenges.
    other = DigestServer("3402000000", b"another-secret-of-16-bytes", clock=clock)
    assert other.verify(answer(digest.challenge()), method="REGISTER", password="12345678") is (
        DigestVerdict.FOREIGN_NONCE
    )


def test_a_replayed_nonce_count_is_refused_and_the_table_is_bounded() -> None:
    clock = Clock()
    digest = server(clock)
    challenge = digest.challenge()
    first = answer(challenge, nc=1, cnonce="c1")
    assert digest.verify(first, method="REGISTER", password="12345678") is DigestVerdict.OK
    assert digest.verify(first, method="REGISTER", password="12345678") is DigestVerdict.STALE_NONCE
    assert digest.verify(answer(challenge, nc=2, cnonce="c1"), method="REGISTER", password="12345678") is (
        DigestVerdict.OK
    )
    # A new cnonce starts its own count.
    assert digest.verify(answer(challenge, nc=1, cnonce="c2"), method="REGISTER", password="12345678") is (
        DigestVerdict.OK
    )
    for i in range(MAX_TRACKED_NONCE_COUNTS + 10):
        digest.verify(answer(challenge, nc=1, cnonce=f"x{i}"), method="REGISTER", password="12345678")
    assert len(digest._nonce_counts) == MAX_TRACKED_NONCE_COUNTS


def test_unsupported_algorithms_and_qops_are_refused() -> None:
    clock = Clock()
    digest = server(clock)
    ok = answer(digest.challenge())
    for changed in ({"algorithm": "MD5-sess"}, {"algorithm": "SHA-256"}, {"qop": "auth-int"}):
        altered = DigestCredentials(**{**ok.__dict__, **changed})
        assert digest.verify(altered, method="REGISTER", password="12345678") is DigestVerdict.UNSUPPORTED
    with pytest.raises(DigestError, match="not MD5"):
        authorization_for(
            DigestChallenge("r", "n", algorithm="SHA-256"),
            username="u",
            password="p",
            method="REGISTER",
            uri="sip:x",
        )


def test_headers_round_trip_and_tolerate_device_spelling() -> None:
    challenge = DigestChallenge(realm="3402000000", nonce="abc", opaque="op", qop=("auth",))
    assert str(challenge) == 'Digest realm="3402000000",nonce="abc",opaque="op",qop="auth",algorithm=MD5'
    assert DigestChallenge.parse(str(challenge)) == challenge
    credentials = answer(challenge, cnonce="cn")
    assert DigestCredentials.parse(str(credentials)) == credentials
    # Upper-case scheme and names, spaces around '=', unquoted values, missing spaces after commas.
    scheme, params = parse_auth_params('DIGEST Realm = "r" ,NONCE=n,qop=auth ,  Algorithm=md5')
    assert (scheme, params) == ("digest", {"realm": "r", "nonce": "n", "qop": "auth", "algorithm": "md5"})
    assert parse_auth_params(r'Digest realm="a \"quoted\" realm"')[1] == {"realm": 'a "quoted" realm'}
    # Missing commas between parameters (seen in device firmware).
    assert parse_auth_params('Digest realm="r"nonce="n" algorithm=MD5')[1] == {
        "realm": "r",
        "nonce": "n",
        "algorithm": "MD5",
    }


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('Basic realm="x"', "not Digest"),
        ('Digest username="u", realm="r", nonce="n", uri="u"', "without response"),
        ('Digest username="u", realm="r", nonce="n", uri="u", response="r", qop=auth', "without nc"),
        ('Digest realm="r", realm="s"', "given twice"),
        ('Digest realm="unterminated', "cannot read"),
        ("Digest " + "a=b," * 2000, "longer than"),
        ("", "not a token"),
    ],
)
def test_bad_authorization_headers_are_refused_naming_what_was_wrong(value: str, complaint: str) -> None:
    with pytest.raises(DigestError, match=complaint):
        DigestCredentials.parse(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_either_parses_or_raises_a_digest_error(value: str) -> None:
    for parse in (DigestCredentials.parse, DigestChallenge.parse):
        with contextlib.suppress(DigestError):
            parse(value)


@settings(max_examples=100, deadline=None)
@given(
    username=st.text(min_size=1, max_size=30),
    password=st.text(max_size=30),
    uri=st.text(alphabet=st.characters(blacklist_characters='"\\'), min_size=1, max_size=40),
)
def test_what_the_client_side_builds_the_server_side_accepts(username: str, password: str, uri: str) -> None:
    clock = Clock()
    digest = server(clock)
    credentials = authorization_for(
        digest.challenge(), username=username, password=password, method="REGISTER", uri=uri
    )
    reparsed = DigestCredentials.parse(str(credentials))
    assert digest.verify(reparsed, method="REGISTER", password=password) is DigestVerdict.OK
    assert (
        digest.verify(DigestCredentials.parse(str(credentials)), method="REGISTER", password=password + "x")
        is not DigestVerdict.OK
    )
