"""`edge demo --transport mqtt` end to end: recorder → station → Mosquitto (the shipped agency configuration
and ACL, certificates from the demo central's CA) → the central's MQTT receiver → receipt → erase. Every
item gets a verified receipt, and its content really went over MQTT: the central's MQTT ingest store
assembled every file and registration took each from there, its tus server completed no upload, the
station's spool names MQTT transfers only, and the broker saw the station and the central under their
certificates' names. With --broker the demo uses a broker it did not start."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.central.config import CentralLayout
from edge.central.embedded import EmbeddedCentral, issue_mqtt_identities
from edge.cli import main
from edge.demo import STATION_ID, DemoOptions, run_demo
from edge.mqtt.local_broker import BrokerTls, LocalBroker
from tests.mqtt.broker import require_mosquitto

CENTRAL_ID = "DEMO-CENTRAL"


class CentralRecords(logging.Handler):
    """The central's own INFO log records (what its tus server, MQTT store and registrar did), by logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.getMessage()))

    def of(self, logger: str) -> list[str]:
        return [message for name, message in self.lines if name == logger]


def run(options: DemoOptions) -> tuple[int, dict[str, Any], str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = asyncio.run(run_demo(options))
    text = out.getvalue()
    return code, json.loads(text.strip().splitlines()[-1]), text


Journey = tuple[Path, dict[str, Any], str, CentralRecords]


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Journey:
    require_mosquitto()
    workdir = tmp_path_factory.mktemp("mqtt-journey")
    records = CentralRecords()
    central_log = logging.getLogger("edge.central")
    level = central_log.level
    central_log.addHandler(records)
    central_log.setLevel(logging.INFO)
    try:
        options = DemoOptions(recorders=2, files=2, file_mb=0.5, workdir=workdir, json_output=True,
                              transport="mqtt")
        code, summary, text = run(options)
    finally:
        central_log.removeHandler(records)
        central_log.setLevel(level)
    assert code == 0, text[-3000:]
    return workdir, summary, text, records


def spool_references(store: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT upload_url FROM uploads ORDER BY item")]
    finally:
        conn.close()


def test_every_item_has_a_verified_receipt(journey: Journey) -> None:
    _, summary, _, _ = journey
    assert summary["transport"] == "mqtt" and summary["broker_url"].startswith("mqtts://127.0.0.1:")
    assert summary["items"] == 4
    assert summary["uploaded"] == summary["receipts"] == summary["wiped"] == 4
    assert summary["left_on_recorders"] == 0
    assert summary["store_verified"] is True and summary["central_verified"] is True
    assert summary["errors"] == []


def test_the_content_went_over_mqtt_and_never_over_tus(journey: Journey) -> None:
    workdir, _, _, records = journey
    references = spool_references(workdir / "station-store")
    assert len(references) == 4 and all(r.startswith("mqtt:") for r in references), references
    file_ids = sorted(r.removeprefix("mqtt:") for r in references)
    # The central's side: its MQTT store assembled and verified each file the spool names ...
    assembled = sorted(
        m.split(" file ", 1)[1].split(" complete ", 1)[0]
        for m in records.of("edge.central.mqtt_ingest_store") if " complete as " in m
    )
    assert assembled == file_ids
    # ... registration took each item's content from there (the upload key names the transfer) ...
    accepted = sorted(m.rsplit(" upload ", 1)[1] for m in records.of("edge.central.registration")
                      if " accepted: " in m)
    assert accepted == [f"mqtt:{STATION_ID}/{f}" for f in file_ids]
    # ... and its tus server completed no upload (control: the same records name every MQTT file above).
    assert [m for m in records.of("edge.central.tus") if " complete: " in m] == []
    layout = CentralLayout(workdir / "central-store")
    assert [p for p in layout.uploads_dir.rglob("*") if p.is_file()] == []


def test_the_demo_broker_runs_the_shipped_configuration_and_logs_no_secret_client_id(
    journey: Journey,
) -> None:
    # The demo's broker is the shipped configuration (connection_messages false): its log never holds the
    # station's or the central's client id, whose secret would let anyone reading it take the session.
    workdir, _, text, _ = journey
    log = (workdir / "broker" / "mosquitto.log").read_text()
    secrets = [(workdir / "station-store" / "mqtt-client.secret").read_text().strip(),
               (workdir / "central-store" / "identity" / "mqtt-client.secret").read_text().strip()]
    assert all(len(secret) >= 16 for secret in secrets)
    assert "mosquitto version" in log and not any(secret in log for secret in secrets)
    assert "mosquitto on mqtts://127.0.0.1:" in text


def test_the_demo_uses_a_broker_named_by_url(tmp_path: Path) -> None:
    """--broker: a broker the demo did not start, set up as an administrator would with the demo central's
    CA (the certificates `edge central broker-cert` and `mqtt-identity` make, here their functions)."""
    require_mosquitto()
    workdir = tmp_path / "demo"
    config = EmbeddedCentral.make_config(workdir / "central-store")
    EmbeddedCentral.initialise(config, workdir, STATION_ID, workdir / "station-store")
    issue_mqtt_identities(
        config, workdir / "central-mqtt-identity", workdir / "broker-tls", ["localhost", "127.0.0.1"]
    )
    tls_dir = workdir / "broker-tls"
    tls = BrokerTls(tls_dir / "ca.crt", tls_dir / "server.crt", tls_dir / "server.key", tls_dir / "ca.crl")

    async def scenario() -> tuple[int, dict[str, Any], str]:
        broker = LocalBroker(tmp_path / "own-broker", tls, central_id=CENTRAL_ID)
        # This broker is the administrator's own: it logs connections (with the user name each certificate
        # gave), which the shipped configuration does not, to show whom the broker took each client for.
        broker.conf_file.write_text(broker.conf_file.read_text().replace(
            "\nconnection_messages false\n", "\nconnection_messages true\n"))
        async with broker:
            options = DemoOptions(recorders=1, files=2, file_mb=0.25, workdir=workdir, json_output=True,
                                  transport="mqtt", broker_url=broker.url)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, run, options)

    code, summary, text = asyncio.run(scenario())
    assert code == 0, text[-3000:]
    assert summary["receipts"] == summary["items"] == 2 and summary["errors"] == []
    assert not (workdir / "broker").exists()  # the demo started no broker of its own
    # use_identity_as_username: the user name (u'...') is the CN of the certificate presented.
    log = (tmp_path / "own-broker" / "mosquitto.log").read_text()
    assert f"u'{STATION_ID}'" in log and f"u'{CENTRAL_ID}'" in log


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["demo", "--broker", "mqtts://127.0.0.1:8883"], "--broker needs --transport mqtt"),
        (["demo", "--transport", "mqtt", "--no-central"], "cannot go with --no-central"),
    ],
)
def test_demo_options_that_do_not_go_together_are_refused(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert complaint in capsys.readouterr().err


def test_a_broker_url_that_is_not_mqtts_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--transport", "mqtt", "--broker", "mqtt://127.0.0.1:1883"])
    assert exited.value.code == 2
    assert "expected mqtts://host[:port], found 'mqtt://127.0.0.1:1883'" in capsys.readouterr().err
