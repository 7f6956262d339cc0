"""Review 12: replay of captured digest answers.

Why replay matters here: a platform sends its INVITEs (Download, Play) to the address a device last
registered from (research notes section 2). Whoever can replay a device's REGISTER from its own address
receives the platform's download requests for that device and can answer them with video of its own
choosing, which the platform then seals as that device's recording.
"""

from __future__ import annotations

from drivers.gb28181.digest import (
    MAX_TRACKED_NONCE_COUNTS,
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    DigestVerdict,
    authorization_for,
)

REALM = "3402000000"
SECRET = b"review12-secret-of-at-least-16-bytes"
VICTIM, VICTIM_PASSWORD = "34020000001320000001", "12345678"
OTHER, OTHER_PASSWORD = "34020000001320000002", "another-device"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def answer(challenge: DigestChallenge, username: str, password: str, **kwargs: object) -> DigestCredentials:
    return authorization_for(
        challenge,
        username=username,
        password=password,
        method="REGISTER",
        uri=f"sip:34020000002000000001@{REALM}",
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_captured_answer_without_qop_cannot_be_replayed_within_the_nonce_lifetime() -> None:
    clock = Clock()
    digest = DigestServer(REALM, SECRET, clock=clock)
    challenge = digest.challenge()

    # Control: with qop the same answer twice is refused (the nonce count did not grow).
    with_qop = answer(challenge, VICTIM, VICTIM_PASSWORD, nc=1, cnonce="c1")
    assert digest.verify(with_qop, method="REGISTER", password=VICTIM_PASSWORD) is DigestVerdict.OK
    assert digest.verify(with_qop, method="REGISTER", password=VICTIM_PASSWORD) is DigestVerdict.STALE_NONCE

    # Without qop (RFC 2069, what most GB/T 28181 devices send, and accepted even though the challenge
    # offered qop): the server has no count to check and accepts the same captured answer again and again
    # for the whole nonce lifetime (300 s by default). A one-time nonce for answers without qop would stop it.
    plain_challenge = DigestChallenge(realm=challenge.realm, nonce=challenge.nonce, opaque=challenge.opaque)
    plain = answer(plain_challenge, VICTIM, VICTIM_PASSWORD)
    assert plain.qop is None
    assert digest.verify(plain, method="REGISTER", password=VICTIM_PASSWORD) is DigestVerdict.OK
    clock.now += 120
    replayed = digest.verify(plain, method="REGISTER", password=VICTIM_PASSWORD)
    assert replayed is not DigestVerdict.OK, "a captured REGISTER answer without qop was accepted twice"


def test_another_device_cannot_evict_a_nonce_count_to_replay_a_captured_answer() -> None:
    clock = Clock()
    digest = DigestServer(REALM, SECRET, clock=clock)
    challenge = digest.challenge()
    captured = answer(challenge, VICTIM, VICTIM_PASSWORD, nc=1, cnonce="victim")
    assert digest.verify(captured, method="REGISTER", password=VICTIM_PASSWORD) is DigestVerdict.OK

    # Control: replayed at once, it is refused.
    assert digest.verify(captured, method="REGISTER", password=VICTIM_PASSWORD) is DigestVerdict.STALE_NONCE

    # Another configured device (its own, valid password) authenticates 4097 times with fresh cnonces
    # within a second: every success adds a (nonce, cnonce) entry and the oldest, the victim's, is
    # forgotten (LRU eviction, not by age). Then the captured answer is "new" again.
    for i in range(MAX_TRACKED_NONCE_COUNTS + 1):
        flood = answer(challenge, OTHER, OTHER_PASSWORD, nc=1, cnonce=f"flood{i}")
        assert digest.verify(flood, method="REGISTER", password=OTHER_PASSWORD) is DigestVerdict.OK
    clock.now += 1
    replayed = digest.verify(captured, method="REGISTER", password=VICTIM_PASSWORD)
    assert replayed is not DigestVerdict.OK, "the victim's captured answer was accepted after eviction"
