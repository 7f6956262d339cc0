"""Review 10 (3b): which of two identities is the older is decided by the order the CA issued them
(identity/issued.order), never by their notBefore, which a clock running ahead or behind on the central
when one was made (or a backdated certificate) puts in the wrong order (edge.central.revocation)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from edge.cli import main
from edge.pki import certs
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import certificate_sha256, load_cert
from tests.central.test_crl_broker_identities import _listed, _serial
from tests.mqtt.test_central_broker_identity import write_central_config

SKEW = dt.timedelta(days=3)


def _issue_identity(config: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *,
                    clock_off: dt.timedelta) -> None:
    """`edge central mqtt-identity` on a central whose clock is `clock_off` from the truth."""
    real_now = certs.utc_now
    with monkeypatch.context() as patched:
        patched.setattr(certs, "utc_now", lambda: real_now() + clock_off)
        assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(out)]) == 0


def _configure(config: Path, bundle: Path) -> None:
    with config.open("a") as toml:
        toml.write(f'[mqtt]\nbroker_url = "mqtts://127.0.0.1:8883"\nca_file = "{bundle / "ca.crt"}"\n'
                   f'client_bundle_dir = "{bundle}"\n')


def test_a_replacement_made_after_an_identity_issued_on_a_fast_clock_is_not_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configured identity was made while the central's clock ran 3 days ahead; its replacement,
    made later on a right clock, has the EARLIER notBefore. Ordered by notBefore, the replacement is
    'older' than the configured one and is listed: the central is locked out of the broker once its
    configuration points at it. Control in the same run: an identity issued before the configured one
    (right clock) is listed."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    first, fast, replacement = (tmp_path / n for n in ("central-mqtt-first", "central-mqtt-fast",
                                                       "central-mqtt-replacement"))
    _issue_identity(config, first, monkeypatch, clock_off=dt.timedelta(0))
    _issue_identity(config, fast, monkeypatch, clock_off=SKEW)
    _issue_identity(config, replacement, monkeypatch, clock_off=dt.timedelta(0))
    assert (load_cert(replacement / BUNDLE_CLIENT_CERT).not_valid_before_utc
            < load_cert(fast / BUNDLE_CLIENT_CERT).not_valid_before_utc)  # the skew this test is about
    _configure(config, fast)
    listed = _listed(tmp_path, config)
    assert _serial(fast / BUNDLE_CLIENT_CERT) not in listed, "the configured identity is listed"
    assert _serial(replacement / BUNDLE_CLIENT_CERT) not in listed, (
        "the replacement made after the configured identity is listed (ordered by a skewed notBefore)")
    assert _serial(first / BUNDLE_CLIENT_CERT) in listed  # control: an older one is listed


def test_an_older_identity_issued_on_a_fast_clock_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replaced identity was made on a clock 3 days ahead, its successor (configured) on a right one:
    by notBefore the replaced one looks newer and stays trusted by the broker. By issue order it is
    listed; the configured one is not."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    old, current = tmp_path / "central-mqtt-old", tmp_path / "central-mqtt-current"
    _issue_identity(config, old, monkeypatch, clock_off=SKEW)
    _issue_identity(config, current, monkeypatch, clock_off=dt.timedelta(0))
    _configure(config, current)
    listed = _listed(tmp_path, config)
    assert _serial(old / BUNDLE_CLIENT_CERT) in listed, "the replaced identity (fast clock) is not listed"
    assert _serial(current / BUNDLE_CLIENT_CERT) not in listed


def test_a_broker_certificate_replacing_one_made_on_a_fast_clock_is_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker server certificates of one host name: the newest by issue order stands, the other is
    listed, whatever their notBefore."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    old, new = tmp_path / "broker-old", tmp_path / "broker-new"
    real_now = certs.utc_now
    with monkeypatch.context() as patched:
        patched.setattr(certs, "utc_now", lambda: real_now() + SKEW)
        assert main(["central", "broker-cert", "--config", str(config), "--name", "mqtt.example",
                     "--out", str(old)]) == 0
    assert main(["central", "broker-cert", "--config", str(config), "--name", "mqtt.example",
                 "--out", str(new)]) == 0
    listed = _listed(tmp_path, config)
    assert _serial(old / "server.crt") in listed
    assert _serial(new / "server.crt") not in listed


def test_an_identity_imported_with_keep_issued_is_older_than_every_one_issued_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade path the CRL's docstring prescribes: the configured identity, issued by a release that
    kept nothing (no copy, no place in the order), is imported after its replacement was prepared. It is
    older than the replacement (issued with its place in the order), even though the import is the later
    write, and even when it was made on a fast clock: the replacement is not listed. Until the import,
    no central identity is listed at all (the review-10 finding's case)."""
    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    legacy, replacement = tmp_path / "central-mqtt-legacy", tmp_path / "central-mqtt-replacement"
    _issue_identity(config, legacy, monkeypatch, clock_off=SKEW)
    identity = tmp_path / "central-store" / "identity"
    # What a release that kept nothing leaves: neither a copy nor a place in the order.
    (identity / "issued" / f"{certificate_sha256(load_cert(legacy / BUNDLE_CLIENT_CERT))}.crt").unlink()
    (identity / "issued.order").unlink()
    _configure(config, legacy)
    _issue_identity(config, replacement, monkeypatch, clock_off=dt.timedelta(0))
    assert _listed(tmp_path, config) == set()
    assert main(["central", "keep-issued", "--config", str(config),
                 "--cert", str(legacy / BUNDLE_CLIENT_CERT)]) == 0
    listed = _listed(tmp_path, config)
    assert _serial(replacement / BUNDLE_CLIENT_CERT) not in listed
    assert _serial(legacy / BUNDLE_CLIENT_CERT) not in listed


def test_a_torn_last_line_of_the_issue_order_does_not_swallow_the_next(tmp_path: Path) -> None:
    """A crash mid-append leaves a line without its end: the next certificate still gets a whole line
    of its own (its place is recorded) and the torn one is skipped."""
    from edge.central.config import load_central_config
    from edge.central.identity import issue_order

    config = write_central_config(tmp_path)
    assert main(["central", "init", "--config", str(config)]) == 0
    order_file = tmp_path / "central-store" / "identity" / "issued.order"
    with order_file.open("a") as order:
        order.write("0123abcd")  # torn
    bundle = tmp_path / "central-mqtt"
    assert main(["central", "mqtt-identity", "--config", str(config), "--out", str(bundle)]) == 0
    places = issue_order(load_central_config(config).layout)
    assert certificate_sha256(load_cert(bundle / BUNDLE_CLIENT_CERT)) in places
    assert not any(key.startswith("0123abcd") for key in places)
