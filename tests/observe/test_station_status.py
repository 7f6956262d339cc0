"""The status board and local API of a real agent: simulated recorders dock through the real mount path,
the dock screen's event stream (SSE over loopback TCP) shows each bay move and its progress grow, an
error class shows up, and /metrics (over the Unix socket, parsed with prometheus_client's own parser)
agrees with the ledger."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from simulators.recorder.faultfs import VolumeFaults
from tests.observe.test_demo_terminal import run_in_pty
from tests.station.harness import Station, simulated_station, spec


async def sse_events(url: str) -> AsyncIterator[tuple[str, Any]]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        kind = ""
        async for raw in response.content:
            line = raw.decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                yield kind, json.loads(line[len("data: "):])


def unix_client(socket_path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path)))


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_event_stream_shows_bays_move_progress_grow_and_an_error_class(
    tmp_path: Path, api_dir: Path
) -> None:
    # Bay 1: copied slowly enough (2 MB/s) that progress is seen growing within files. Bay 2: pulled out
    # after 100 kB, mid-copy.
    steady = spec(0, files=3, file_mb=1.0, rate_limit_bytes_per_s=2_000_000)
    pulled = spec(1, faults=VolumeFaults(unplug_after_bytes=100_000))
    api = {"socket_path": str(api_dir / "station.sock"), "tcp_port": 0}
    async with simulated_station(tmp_path, [steady, pulled], api=api) as station:
        assert station.agent.api is not None and station.agent.api.tcp_url is not None
        url = station.agent.api.tcp_url
        seen: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
        first: dict[str, Any] | None = None

        async def follow() -> None:
            nonlocal first
            async for kind, data in sse_events(url + "/api/v1/events"):
                if kind == "snapshot" and first is None:
                    first = data
                    for bay in data["bays"]:
                        if bay["bay"] in seen:
                            seen[bay["bay"]].append(bay)
                    await station.dock_recorder(steady.device_serial, 1)
                    await station.dock_recorder(pulled.device_serial, 2)
                elif kind == "bay" and data["bay"] in seen:
                    seen[data["bay"]].append(data)
                if seen["1"] and seen["1"][-1]["state"] == "done" and seen["2"] and (
                    seen["2"][-1]["state"] == "error"
                ):
                    return

        await asyncio.wait_for(follow(), 60)
        await station.wait_results(2)

        assert first is not None and first["station"]["id"] == "TEST-STATION"
        states = [b["state"] for b in seen["1"]]
        # Each state in order (repeats collapsed): empty, then the docking, then done.
        order = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
        assert order == ["empty", "authenticating", "copying", "verifying", "done"], order
        copying = [b for b in seen["1"] if b["state"] == "copying"]
        done_bytes = [b["bytes_done"] for b in copying]
        assert done_bytes == sorted(done_bytes) and len(set(done_bytes)) >= 3, done_bytes
        assert any(0 < b["bytes_done"] < b["bytes_total"] and b["speed_bps"] for b in copying), copying
        final = seen["1"][-1]
        assert final["files_done"] == final["files_total"] == 3
        assert final["officer"] == {"name": "张伟", "badge": "110001"}
        assert final["device"]["serial"] == steady.device_serial and final["device"]["model"] == "EEZ01"
        assert seen["2"][-1]["error_class"] == "pulled_early"

        # /metrics over the Unix socket, against the ledger.
        async with unix_client(api_dir / "station.sock") as client:
            async with client.get("http://station/metrics") as response:
                assert response.status == 200
                samples = metric_samples(await response.text())
            async with client.get("http://station/api/v1/status") as response:
                status = await response.json()
        acquired = station.ledger("acquired")
        sealed = station.ledger("sealed")
        assert samples[("edge_station_copy_seconds_count", ())] == len(acquired) >= 3
        assert samples[("edge_station_verify_seconds_count", ())] == len(sealed) >= 3
        assert samples[("edge_station_copied_bytes_total", ())] == sum(e["size"] for e in acquired)
        assert samples[("edge_station_dockings_total", (("outcome", "done"),))] == 1
        assert samples[("edge_station_dockings_total", (("outcome", "pulled_early"),))] == 1
        errors_by_stage: dict[str, int] = {}
        for entry in station.ledger("error"):
            errors_by_stage[entry["stage"]] = errors_by_stage.get(entry["stage"], 0) + 1
        assert errors_by_stage, "pulling a recorder out mid-copy is on the ledger"
        for stage, count in errors_by_stage.items():
            assert samples[("edge_station_errors_total", (("stage", stage),))] == count
        assert status["station"]["counts"]["errors"] == errors_by_stage
        assert samples[("edge_station_bays", (("state", "done"),))] == 1
        assert samples[("edge_station_bays", (("state", "error"),))] == 1
        assert status["station"]["key_id"] == station.agent.store.key.key_id  # type: ignore[union-attr]
        tasks = {t["name"]: t["state"] for t in status["station"]["tasks"]}
        assert tasks["usb-poll"] == tasks["volumes"] == tasks["status"] == "running"


async def test_an_undocked_recorder_leaves_its_bay_empty(tmp_path: Path, api_dir: Path) -> None:
    s = spec(0, files=1)
    api = {"socket_path": str(api_dir / "station.sock")}
    async with simulated_station(tmp_path, [s], api=api) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        assert station.agent.status.bay("1")["state"] == "done"  # type: ignore[index]
        await station.undock(s.device_serial, 1)
        await _eventually_state(station, "1", "empty")


async def _eventually_state(station: Station, bay: str, state: str) -> None:
    async with asyncio.timeout(20):
        while (station.agent.status.bay(bay) or {}).get("state") != state:
            await asyncio.sleep(0.02)


async def test_items_their_ledger_trail_and_tagging_over_the_socket(tmp_path: Path, api_dir: Path) -> None:
    import os

    from tests.observe.test_api_auth import NOBODY, as_user
    from tests.prerequisites import require

    require(os.geteuid() == 0, "tagging as another user needs root")
    api_dir.chmod(0o755)
    s = spec(0, files=2)
    api = {"socket_path": str(api_dir / "station.sock"), "operators_group": "nogroup",
           "accounts": {"4242": "duty.desk"}}
    async with simulated_station(tmp_path, [s], api=api) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        async with unix_client(api_dir / "station.sock") as client:
            async with client.get("http://station/api/v1/items?limit=10") as response:
                items = await response.json()
            assert len(items) == 2 and {i["device_serial"] for i in items} == {s.device_serial}
            item = items[0]["item"]
            async with client.get(f"http://station/api/v1/items/{item}") as response:
                detail = await response.json()
            trail = [e["type"] for e in detail["trail"]]
            assert trail[:1] == ["acquired"] and "sealed" in trail, trail
            assert detail["manifest"]["sha256"] == detail["sha256"] == items[0]["sha256"]

            # Root tags over the socket: the very entry `edge tag` writes, naming root.
            async with client.post(f"http://station/api/v1/items/{item}/tags",
                                   json={"case_number": "XH-2026-0042", "important": True}) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
            # Hostile or wrong input: refused with a reason; nothing written.
            refusals = (
                ({"case_number": "x" * 500}, "at most"),
                ({"owner": "me"}, "unknown case field"),
                ([1], "JSON object"),
            )
            for body, reason in refusals:
                async with client.post(f"http://station/api/v1/items/{item}/tags", json=body) as response:
                    assert response.status == 400 and reason in (await response.json())["error"]
            async with client.post(f"http://station/api/v1/items/{uuid4()}/tags",
                                   json={"case_number": "X"}) as response:
                assert response.status == 404
            async with client.get("http://station/api/v1/items/..%2f..%2fetc") as response:
                assert response.status in (400, 404)
        tagged = [{k: v for k, v in d.items() if k not in ("item_prev", "entry_salt")}
                  for d in station.ledger("tagged")]
        assert tagged == [{"changes": {"case_number": "XH-2026-0042", "important": True},
                           "previous": {"case_number": "", "important": False}, "by": "root"}]
        assert answer["by"] == "root" and answer["changes"] == tagged[0]["changes"]

        # An operator (nogroup) tags as itself; a uid with a configured account is recorded by that name.
        call = [("POST", f"/api/v1/items/{item}/tags", json.dumps({"location": "文三路"}))]
        assert await asyncio.to_thread(as_user, api_dir / "station.sock", call, user=NOBODY, group=NOBODY,
                                       extra_groups=[]) == [200]
        assert await asyncio.to_thread(as_user, api_dir / "station.sock", call, user=4242, group=NOBODY,
                                       extra_groups=[]) == [200]
        assert [e["by"] for e in station.ledger("tagged")] == ["root", "nobody", "duty.desk"]
        async with unix_client(api_dir / "station.sock") as client, client.get(
            f"http://station/api/v1/items/{item}"
        ) as response:
            case = (await response.json())["case"]
        assert (case["case_number"], case["important"], case["location"]) == ("XH-2026-0042", True, "文三路")
    from edge.verify.station import verify_store

    assert verify_store(tmp_path / "store").ok


def edge_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "status", *args], capture_output=True, text=True, timeout=60
    )


async def test_edge_status_prints_the_board_and_says_when_the_agent_is_not_running(
    tmp_path: Path, api_dir: Path
) -> None:
    s = spec(0, files=1)
    sock = str(api_dir / "station.sock")
    async with simulated_station(tmp_path, [s], api={"socket_path": sock}) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        await _eventually_state(station, "1", "done")
        done = await asyncio.to_thread(edge_status, "--socket", sock, "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert set(status) == {"station", "bays", "fleet"}
        assert set(status["station"]) >= {
            "id", "unit", "version", "started_at", "clock", "key_id", "disk", "ledger", "central", "spool",
            "tasks", "counts",
        }
        bay = next(b for b in status["bays"] if b["bay"] == "1")
        assert set(bay) == {
            "bay", "state", "error_class", "officer", "device", "files_done", "files_total", "bytes_done",
            "bytes_total", "speed_bps", "eta_s", "bouncing", "usb_serial_warning", "since", "updated_at",
        }
        assert (bay["state"], bay["files_done"], bay["device"]["serial"]) == ("done", 1, s.device_serial)
        assert status["station"]["ledger"]["head_seq"] > 0
        # For a person, not a terminal here: plain lines.
        shown = await asyncio.to_thread(edge_status, "--socket", sock)
        assert shown.returncode == 0, shown.stderr
        line = f"bay 1: done: take the recorder, recorder {s.device_serial}, 张伟 110001, files 1/1"
        assert line in shown.stdout
        assert "station: TEST-STATION" in shown.stdout
        # On a terminal: tables.
        code, text = await asyncio.to_thread(
            run_in_pty, [sys.executable, "-m", "edge.cli", "status", "--socket", sock]
        )
        assert code == 0, text
        assert "┏" in text and "Station" in text and "done: take the recorder" in text
    gone = await asyncio.to_thread(edge_status, "--socket", sock)
    assert gone.returncode == 69 and "the station agent is not running" in gone.stderr
    assert gone.stdout == ""
