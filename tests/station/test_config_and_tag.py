"""Configuration validation and `edge tag`: the user-facing edges of the station."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.base import ConfigError, SecretRef
from edge.config.station import load_config, parse_config
from edge.ingest.store import StationStore
from edge.ingest.tagging import current_case
from edge.sources.usb.offload import VolumeOffload
from edge.verify.station import verify_store

from .conftest import session_info

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "station.toml"
MINIMAL = '[station]\nid = "S1"\nstore_dir = "store"\n[usb]\nmount_root = "media"\n'


def test_example_config_is_valid_and_relative_paths_follow_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out
    config_file = tmp_path / "conf" / "station.toml"
    config_file.parent.mkdir()
    config_file.write_text(MINIMAL)
    config = load_config(config_file)
    assert config.station.store_dir == tmp_path / "conf" / "store"
    assert config.usb.mount_root == tmp_path / "conf" / "media"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "[offload]\nconcurency = 2\n", "line 7: offload.concurency: unknown key"),
        (MINIMAL.replace('id = "S1"', 'id = "../etc"'), "station.id"),
        (MINIMAL + "[offload]\nconcurrency = 0\n", "offload.concurrency"),
        (MINIMAL + "[offload]\nchunk_bytes = 5000\n", "multiple of 4096"),
        (
            MINIMAL + '[[bays]]\nnumber = 1\nusb_port = "1-1"\n[[bays]]\nnumber = 1\nusb_port = "1-2"\n',
            "bay numbers must be unique",
        ),
        ('[station]\nid = "S1"\n', "station.store_dir: required key is missing"),
        (MINIMAL + '[usb]\nbackend = "simulator"\n', "not valid TOML"),
        ("station = [", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key_and_the_problem(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "station.toml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("station.toml")


def test_literal_passwords_are_refused_and_never_echoed() -> None:
    text = MINIMAL + '[recorders]\ndefault_password = "hunter2-secret"\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "secret reference" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_secret_references_resolve_from_env_file_and_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("246810\n")
    assert SecretRef(f"file:{secret}").resolve() == "246810"
    assert SecretRef("env:PW").resolve({"PW": "111111"}) == "111111"
    (tmp_path / "recorder-password").write_text("333333")
    assert (
        SecretRef("credential:recorder-password").resolve({"CREDENTIALS_DIRECTORY": str(tmp_path)})
        == "333333"
    )
    with pytest.raises(ConfigError, match="not set"):
        SecretRef("env:MISSING").resolve({})
    assert "246810" not in repr(SecretRef(f"file:{secret}"))


@pytest.mark.timeout(30)
def test_a_secret_reference_to_a_fifo_or_a_directory_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pw-fifo"
    os.mkfifo(fifo, 0o600)  # reading it would wait for a writer forever
    with pytest.raises(ConfigError, match=r"secret reference file:.*pw-fifo: cannot read: .*found a FIFO"):
        SecretRef(f"file:{fifo}").resolve()
    with pytest.raises(ConfigError, match="found a directory"):
        SecretRef(f"file:{tmp_path}").resolve()
    (tmp_path / "big").write_bytes(b"1" * (1 << 20))
    with pytest.raises(ConfigError, match="at most"):
        SecretRef(f"file:{tmp_path / 'big'}").resolve()


def test_check_config_exit_status_and_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + '[wipe]\npolicy = "sometimes"\n')
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "wipe.policy" in err and str(bad) in err
    assert "\\x0a" not in err and len(err.splitlines()) > 1, "one problem per line, not escaped newlines"
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 78


def test_officer_defaults_override_station_defaults(config_factory: Callable[..., object]) -> None:
    config = parse_config(
        MINIMAL + '[case_defaults]\nlocation = "A"\nsubject = "S"\n[officers.110001]\nlocation = "B"\n'
    )
    assert config.case_defaults_for("110001").location == "B"
    assert config.case_defaults_for("110001").subject == "S"
    assert config.case_defaults_for("999999").location == "A"


async def test_tag_appends_signed_entries_and_the_fold_is_current(
    store: StationStore,
    volume: Path,
    config_factory: Callable[..., object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = await VolumeOffload(store, config_factory(), session_info(), volume).run()  # type: ignore[arg-type]
    item = result.items[0]
    manifest_before = store.conn.execute("SELECT manifest FROM items WHERE item=?", (item,)).fetchone()[0]
    root = str(store.layout.root)
    # `edge tag` writes the store, so it needs the store's lock: this process lets go of it first.
    assert main(["tag", item, "--store", root, "--case", "X"]) == 75
    assert "is in use by pid" in capsys.readouterr().err
    store.close()
    assert (
        main(
            [
                "tag",
                item,
                "--store",
                root,
                "--case",
                "杭综执罚〔2026〕118号",
                "--subject",
                "无证经营",
                "--by",
                "auditor",
            ]
        )
        == 0
    )
    assert main(["tag", item, "--store", root, "--important", "--location", "文三路 12 号"]) == 0
    store = StationStore(store.layout.root, "TEST-STATION")
    case = current_case(store, item)
    assert case["case_number"] == "杭综执罚〔2026〕118号" and case["subject"] == "无证经营"
    assert case["important"] is True and case["location"] == "文三路 12 号"
    tagged = [e for e in store.ledger.entries(item=item) if e.type == "tagged"]
    assert len(tagged) == 2 and tagged[0].data["by"] == "auditor"
    assert tagged[1].data["previous"]["important"] is False
    # The sealed manifest is never edited: metadata changes live only in the ledger.
    assert (
        store.conn.execute("SELECT manifest FROM items WHERE item=?", (item,)).fetchone()[0]
        == manifest_before
    )
    assert verify_store(store.layout.root).ok
    store.close()
    capsys.readouterr()
    assert main(["tag", "no-such-item", "--store", root, "--case", "X"]) == 2
    assert "no sealed item" in capsys.readouterr().err
    assert main(["tag", item, "--store", root, "--case", "bad\x07bell"]) == 2
    assert main(["tag", item, "--store", root]) == 2
    json.dumps(case, ensure_ascii=False)


CENTRAL_EXAMPLE = EXAMPLE.with_name("central.toml")


def test_check_config_recognises_a_central_file_and_validates_it_as_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It used to report seven errors about [station] and [usb] missing and [central] unknown.
    assert main(["check-config", str(CENTRAL_EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"{CENTRAL_EXAMPLE}: OK (central central-hq, store /var/lib/evidence-central, HTTPS with mutual TLS "
        "on 0.0.0.0:8443)\n"
    )
    assert err == ""


def test_check_config_of_a_broken_central_file_names_its_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "central.toml"
    bad.write_text('[central]\nid = "c"\nstore_dir = "relative"\n[server]\nprot = 1\n')
    assert main(["check-config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "central.store_dir" in err and "line 5: server.prot: unknown key" in err
    assert "station" not in err  # judged as the central file it is, not as a broken station file


def test_each_command_names_the_one_that_takes_the_other_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["central", "check-config", "--config", str(EXAMPLE)]) == 78
    err = capsys.readouterr().err
    assert err == (
        f"error: {EXAMPLE}: this file configures a docking station or room PC ([station]), not the central "
        f"receiver; check it with `edge check-config {EXAMPLE}` and run it with "
        f"`edge run --config {EXAMPLE}`\n"
    )
    with pytest.raises(ConfigError, match=r"configures the central receiver \(\[central\]\), not a docking"):
        load_config(CENTRAL_EXAMPLE)


def test_check_config_of_a_file_that_is_neither_says_what_was_expected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text, found in (
        ('[stations]\nid = "S1"\n', "neither"),
        ("", "neither"),
        ('[station]\nid = "S"\n[central]\nid = "C"\n', "both"),
    ):
        odd = tmp_path / "odd.toml"
        odd.write_text(text)
        assert main(["check-config", str(odd)]) == 78
        err = capsys.readouterr().err
        assert (
            "expected one of the top-level tables [station] for a docking station or room PC (checked by "
            f"`edge check-config {odd}`); or [central] for the central receiver (checked by `edge central "
            f"check-config --config {odd}`); found {found}"
        ) in err


def test_check_config_warns_when_the_wipe_policy_waits_for_a_central_that_is_not_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid (exit 0) but recorders would never be erased: say so. Controls: after-verify without a
    central, and the default policy with a central, give no warning."""
    no_uplink = tmp_path / "no-uplink.toml"
    no_uplink.write_text(MINIMAL)  # default policy: after-witness
    assert main(["check-config", str(no_uplink)]) == 0
    err = capsys.readouterr().err
    assert "'after-witness'" in err and "never be erased" in err
    no_uplink.write_text(MINIMAL + '[wipe]\npolicy = "after-verify"\n')
    assert main(["check-config", str(no_uplink)]) == 0
    assert capsys.readouterr().err == ""
    no_uplink.write_text(
        MINIMAL + '[uplink]\ncentral_url = "https://central.example:8443"\nidentity_dir = "identity"\n'
    )
    assert main(["check-config", str(no_uplink)]) == 0
    assert capsys.readouterr().err == "", "the default policy with a central: nothing to warn about"
