"""The GB/T 28181 device simulator (simulators/gb28181) driven over real sockets by a minimal platform
built here from the codecs and the SIP transport: digest registration (and its refusal), re-registration,
unregistration, keepalive cadence through the clock seam, the four queries answered and parsed by
drivers/gb28181/manscdp (multi-part answers reassembled), and the SIP-side faults. The platform is the
test's own and small; the real one is edge/gb28181's."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181 import manscdp
from drivers.gb28181.digest import DigestCredentials, DigestServer, DigestVerdict
from drivers.gb28181.manscdp import (
    AssembledAnswer,
    CatalogItem,
    DeviceInfoResponse,
    DeviceStatusResponse,
    Keepalive,
    ManscdpMessage,
    MultipartAssembler,
    RecordInfoQuery,
    RecordItem,
    Root,
)
from drivers.gb28181.sip import SipRequest, SipResponse, request, response_to
from drivers.gb28181.sip_transport import Peer, SipTransport
from simulators.gb28181.device import SimulatedDevice
from simulators.gb28181.settings import DeviceSettings, Fault, SettingsError, SipTransportKind, parse_faults

from ..prerequisites import require

PLATFORM_ID = "34020000002000000001"
DEVICE_ID = "34020000001320000001"
CHANNEL_ID = "34020000001310000001"
DOMAIN = "3402000000"
PASSWORD = "weak-but-secret-1"
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


@dataclass
class MiniPlatform:
    """Just enough of a platform: a registrar with digest, keepalive tracking, queries, answers joined."""

    passwords: dict[str, str]
    qop: bool = True
    digest: DigestServer = field(init=False)
    transport: SipTransport | None = None
    registered: dict[str, Peer] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    keepalives: list[tuple[Peer, int]] = field(default_factory=list)
    verdicts: list[DigestVerdict] = field(default_factory=list)
    answers: asyncio.Queue[AssembledAnswer | ManscdpMessage] = field(default_factory=asyncio.Queue)
    in_dialog: list[tuple[str, ManscdpMessage]] = field(default_factory=list)
    media_status: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    answer_parts: list[ManscdpMessage] = field(default_factory=list)
    forget_keepalives: bool = False
    contacts: list[str] = field(default_factory=list)
    grant_expires_s: int | None = None  # what the 200 grants; None: what the device asked
    sn: int = 100

    def __post_init__(self) -> None:
        self.digest = DigestServer(DOMAIN, b"mini-platform-secret-0123456789", qop_auth=self.qop)
        self.assembler = MultipartAssembler(timeout_s=30)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.port

    async def _note(self, event: str) -> None:
        self.events.append(event)
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: object, timeout_s: float = 20) -> None:
        assert callable(predicate)

        async def waiter() -> None:
            async with self.changed:
                await self.changed.wait_for(predicate)

        await asyncio.wait_for(waiter(), timeout_s)

    async def __call__(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        if req.method == "REGISTER":
            return await self._register(req, peer)
        if req.method == "MESSAGE":
            return await self._message(req, peer)
        return response_to(req, 405, to_tag="p")

    async def _register(self, req: SipRequest, peer: Peer) -> SipResponse:
        authorization = req.headers.get("Authorization")
        if authorization is None:
            await self._note("challenged")
            return response_to(req, 401, to_tag="p",
                               headers=[("WWW-Authenticate", str(self.digest.challenge()))])
        credentials = DigestCredentials.parse(authorization)
        verdict = self.digest.verify(credentials, method="REGISTER",
                                     password=self.passwords.get(credentials.username, "\x00"))
        self.verdicts.append(verdict)
        if verdict is not DigestVerdict.OK:
            await self._note("refused")
            return response_to(req, 403, to_tag="p")
        device = req.from_.sip_uri.user or ""
        if req.expires == 0:
            self.registered.pop(device, None)
            await self._note("unregistered")
        else:
            self.registered[device] = peer
            self.contacts.append(req.headers.get("Contact") or "")
            await self._note(f"registered {peer.port}")
        granted = self.grant_expires_s or req.expires or 3600
        return response_to(req, 200, to_tag="p", headers=[("Expires", str(granted)),
                                                          ("Date", "2026-12-05T12:00:00.000")])

    async def _message(self, req: SipRequest, peer: Peer) -> SipResponse:
        message = manscdp.parse_message(req.body)
        device = req.from_.sip_uri.user or ""
        if isinstance(message.payload, Keepalive):
            if self.forget_keepalives or device not in self.registered:
                await self._note("keepalive refused")
                return response_to(req, 404, to_tag="p")
            # As the real platform (review 16): a keepalive keeps the device but never moves it; requests go
            # where it last registered.
            self.keepalives.append((peer, message.sn))
            await self._note("keepalive")
            return response_to(req, 200, to_tag="p")
        if req.to.tag is not None:  # in-dialog: MediaStatus
            self.in_dialog.append((req.call_id, message))
            self.media_status.put_nowait(req.call_id)
            return response_to(req, 200)
        if message.root is Root.RESPONSE:
            self.answer_parts.append(message)
            if message.cmd_type in ("Catalog", "RecordInfo"):
                joined = self.assembler.add(device, message, 0.0)
                if joined is not None:
                    self.answers.put_nowait(joined)
            else:
                self.answers.put_nowait(message)
        return response_to(req, 200, to_tag="p")

    async def query(self, body_for_sn: object, device: str = DEVICE_ID) -> AssembledAnswer | ManscdpMessage:
        assert self.transport is not None and callable(body_for_sn)
        self.sn += 1
        body = body_for_sn(self.sn)
        req = request("MESSAGE", f"sip:{device}@{DOMAIN}", [
            ("From", f"<sip:{PLATFORM_ID}@{DOMAIN}>;tag=q{self.sn}"), ("To", f"<sip:{device}@{DOMAIN}>"),
            ("Call-ID", f"q{self.sn}-{os.urandom(4).hex()}"), ("CSeq", "1 MESSAGE"),
            ("Content-Type", "Application/MANSCDP+xml"), ("Max-Forwards", "70")], body)
        response = await self.transport.request(req, self.registered[device])
        assert response.status == 200
        answer = await asyncio.wait_for(self.answers.get(), 20)
        assert answer.sn == self.sn
        return answer


@pytest.fixture
async def platform() -> AsyncIterator[MiniPlatform]:
    mini = MiniPlatform({DEVICE_ID: PASSWORD})
    async with SipTransport(mini, host="127.0.0.1", port=0) as transport:
        mini.transport = transport
        yield mini


def settings_for(platform: MiniPlatform, **overrides: object) -> DeviceSettings:
    values: dict[str, object] = dict(platform_host="127.0.0.1", platform_port=platform.port,
                                     platform_id=PLATFORM_ID, device_id=DEVICE_ID, password=PASSWORD,
                                     keepalive_interval_s=0.05)
    values.update(overrides)
    return DeviceSettings(**values)  # type: ignore[arg-type]


class SteppedClock:
    """The device's sleep seam: each sleep waits until the test lets it go, and says how long it asked."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[float, asyncio.Event]] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        release = asyncio.Event()
        self.requests.put_nowait((seconds, release))
        await release.wait()

    async def next_sleep(self) -> tuple[float, asyncio.Event]:
        return await asyncio.wait_for(self.requests.get(), 10)


def make_recordings(media_dir: Path, count: int, *, seconds: float = 1.0) -> list[tuple[datetime, datetime]]:
    """`count` short H.264 MP4 files with sidecar times one hour apart (device-local)."""
    require(HAVE_FFMPEG, "needs ffmpeg and ffprobe")
    media_dir.mkdir(parents=True, exist_ok=True)
    template = media_dir / "template.tmp"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-t", str(seconds), "-c:v", "libx264", "-g", "10", "-f", "mp4", str(template)],
                   check=True, timeout=60)
    base = datetime(2026, 12, 5, 9, 0, 0)
    times = []
    for index in range(count):
        start = base + timedelta(hours=index)
        end = start + timedelta(seconds=seconds)
        path = media_dir / f"REC{index:04d}.mp4"
        shutil.copyfile(template, path)
        path.with_name(path.name + ".json").write_text(
            f'{{"start": "{start.isoformat()}", "end": "{end.isoformat()}"}}')
        times.append((start, end))
    template.unlink()
    return times


async def run_device(device: SimulatedDevice) -> asyncio.Task[None]:
    task = asyncio.ensure_future(device.run())
    await device.started()
    return task


async def stop_device(device: SimulatedDevice, task: asyncio.Task[None]) -> None:
    await device.close()
    await asyncio.wait_for(task, 10)


# -- registration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("qop", [True, False], ids=["qop-auth", "rfc2069"])
@pytest.mark.parametrize("sip", [SipTransportKind.UDP, SipTransportKind.TCP])
async def test_registers_with_digest_keeps_alive_and_unregisters_on_stop(
    qop: bool, sip: SipTransportKind
) -> None:
    mini = MiniPlatform({DEVICE_ID: PASSWORD}, qop=qop)
    async with SipTransport(mini, host="127.0.0.1", port=0) as transport:
        mini.transport = transport
        device = SimulatedDevice(settings_for(mini, transport=sip))
        task = await run_device(device)
        await mini.wait_for(lambda: len(mini.keepalives) >= 2)
        peer = mini.registered[DEVICE_ID]
        assert peer.transport.value == sip.value.upper()
        if sip is SipTransportKind.UDP:  # over TCP the connection comes from an ephemeral port
            assert peer.port == device.sip_port
        await stop_device(device, task)
    assert mini.events[:2] == ["challenged", f"registered {peer.port}"]
    assert mini.events[-2:] == ["challenged", "unregistered"]
    assert DEVICE_ID not in mini.registered and device.log.unregistered
    assert set(mini.verdicts) == {DigestVerdict.OK}
    sns = [sn for _, sn in mini.keepalives]
    assert sns == sorted(sns) and len(set(sns)) == len(sns)


async def test_wrong_password_is_refused_and_retried_later(platform: MiniPlatform) -> None:
    clock = SteppedClock()
    device = SimulatedDevice(settings_for(platform, faults=parse_faults(["wrong-password"]),
                                          register_retry_s=60.0), sleep=clock.sleep)
    task = await run_device(device)
    seconds, release = await clock.next_sleep()
    assert seconds == 60.0  # the retry waits as GB/T 28181 9.1.1 asks, it does not hammer the platform
    assert platform.events == ["challenged", "refused"]
    assert platform.verdicts == [DigestVerdict.WRONG_RESPONSE] and list(device.log.refusals) == [403]
    assert DEVICE_ID not in platform.registered and not device.registered.is_set()
    release.set()
    await platform.wait_for(lambda: platform.events.count("refused") == 2)
    await stop_device(device, task)
    assert not device.log.unregistered  # never registered: nothing to unregister


async def test_right_password_control_registers(platform: MiniPlatform) -> None:
    device = SimulatedDevice(settings_for(platform, keepalive_interval_s=3600))
    task = await run_device(device)
    await asyncio.wait_for(device.registered.wait(), 10)
    assert platform.verdicts == [DigestVerdict.OK]
    await stop_device(device, task)


async def test_keepalive_cadence_and_reregistration_follow_the_clock_seam(platform: MiniPlatform) -> None:
    clock = SteppedClock()
    platform.grant_expires_s = 300  # less than asked: the platform's word counts
    device = SimulatedDevice(settings_for(platform, keepalive_interval_s=45.0, register_expires_s=600),
                             sleep=clock.sleep)
    task = await run_device(device)
    asked = sorted([(await clock.next_sleep()), (await clock.next_sleep())], key=lambda r: r[0])
    (keepalive_s, keepalive_go), (refresh_s, refresh_go) = asked
    assert keepalive_s == 45.0 and refresh_s == 240  # re-registers at 80 % of the granted 300 s
    assert platform.keepalives == []  # nothing is sent before its time has come
    for expected in (1, 2, 3):
        keepalive_go.set()
        await platform.wait_for(lambda n=expected: len(platform.keepalives) == n)
        keepalive_s, keepalive_go = await clock.next_sleep()
        assert keepalive_s == 45.0
    registrations = platform.events.count(f"registered {device.sip_port}")
    refresh_go.set()
    await platform.wait_for(
        lambda: platform.events.count(f"registered {device.sip_port}") == registrations + 1)
    await stop_device(device, task)


async def test_keepalive_refused_makes_the_device_register_again(platform: MiniPlatform) -> None:
    device = SimulatedDevice(settings_for(platform, register_expires_s=3600))
    task = await run_device(device)
    await platform.wait_for(lambda: "keepalive" in platform.events)
    platform.forget_keepalives = True
    platform.registered.clear()
    await platform.wait_for(lambda: "keepalive refused" in platform.events)
    platform.forget_keepalives = False
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    assert device.log.keepalive_statuses.count(404) >= 1
    await stop_device(device, task)


@pytest.mark.parametrize("sip", [SipTransportKind.UDP, SipTransportKind.TCP])
async def test_nat_rebind_moves_keepalives_to_a_new_port_and_the_device_registers_again_from_it(
    platform: MiniPlatform, sip: SipTransportKind
) -> None:
    """A platform follows a device only on its REGISTER (review 16) and grants a short expiry; the device
    honours what was granted, so after its NAT rebound it registers again from the new port, and queries
    reach it there."""
    platform.grant_expires_s = 1
    device = SimulatedDevice(settings_for(platform, faults=parse_faults(["nat-rebind"]), transport=sip))
    task = await run_device(device)
    first_port = device.sip_port
    await platform.wait_for(lambda: len({peer.port for peer, _ in platform.keepalives}) == 2)
    ports = [peer.port for peer, _ in platform.keepalives]
    assert ports[-1] != ports[0] and len(device.log.sip_ports) == 2
    if sip is SipTransportKind.UDP:  # over TCP the source port is the new connection's
        assert ports[0] == first_port and device.log.sip_ports == [first_port, ports[-1]]
    await platform.wait_for(lambda: platform.registered.get(DEVICE_ID) is not None
                            and platform.registered[DEVICE_ID].port == ports[-1])
    answer = await platform.query(lambda sn: manscdp.build_device_info_query(sn, DEVICE_ID))
    assert isinstance(answer, ManscdpMessage)  # the query went to the new address, and was answered
    await stop_device(device, task)


async def test_without_nat_rebind_the_port_stays(platform: MiniPlatform) -> None:
    device = SimulatedDevice(settings_for(platform))
    task = await run_device(device)
    await platform.wait_for(lambda: len(platform.keepalives) >= 3)
    assert {peer.port for peer, _ in platform.keepalives} == {device.sip_port}
    await stop_device(device, task)


# -- queries ---------------------------------------------------------------------------------------------


async def test_catalog_device_info_and_device_status_are_answered(platform: MiniPlatform) -> None:
    wall = datetime(2026, 12, 5, 4, 0, 0, tzinfo=UTC)
    device = SimulatedDevice(settings_for(platform, clock_offset_s=-90.0, accept_date=False),
                             wall_clock=lambda: wall)
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    catalog = await platform.query(lambda sn: manscdp.build_catalog_query(sn, DEVICE_ID))
    assert isinstance(catalog, AssembledAnswer) and catalog.complete and catalog.sum_num == 1
    (item,) = catalog.items
    assert isinstance(item, CatalogItem) and item.device_id == CHANNEL_ID and item.status == "ON"
    info = await platform.query(lambda sn: manscdp.build_device_info_query(sn, DEVICE_ID))
    assert isinstance(info, ManscdpMessage) and isinstance(info.payload, DeviceInfoResponse)
    assert info.payload.result == "OK" and info.payload.channel == 1
    status = await platform.query(lambda sn: manscdp.build_device_status_query(sn, DEVICE_ID))
    assert isinstance(status, ManscdpMessage) and isinstance(status.payload, DeviceStatusResponse)
    # Beijing time (UTC+8) from its own clock, 90 s slow.
    assert status.payload.device_time == datetime(2026, 12, 5, 11, 58, 30)
    await stop_device(device, task)


async def test_gb2312_names_arrive_in_gb2312_and_decode(platform: MiniPlatform) -> None:
    device = SimulatedDevice(settings_for(platform, faults=parse_faults(["gb2312-name"])))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    catalog = await platform.query(lambda sn: manscdp.build_catalog_query(sn, DEVICE_ID))
    assert isinstance(catalog, AssembledAnswer)
    assert [i.name for i in catalog.items if isinstance(i, CatalogItem)] == ["执法记录仪通道一"]
    part = platform.answer_parts[-1]
    assert part.charset == "gb18030"
    await stop_device(device, task)


def _record_query(start: datetime, end: datetime) -> object:
    return lambda sn: manscdp.build_record_info_query(sn, CHANNEL_ID, RecordInfoQuery(start, end))


async def test_record_info_lists_stored_files_in_several_messages(
    platform: MiniPlatform, tmp_path: Path
) -> None:
    times = make_recordings(tmp_path / "media", 5)
    device = SimulatedDevice(settings_for(platform, media_dir=tmp_path / "media", records_per_message=2))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    answer = await platform.query(_record_query(datetime(2026, 12, 5), datetime(2026, 12, 6)))
    assert isinstance(answer, AssembledAnswer) and answer.complete
    assert answer.sum_num == 5 and answer.parts == 3
    items = [i for i in answer.items if isinstance(i, RecordItem)]
    assert [(i.start_time, i.end_time) for i in items] == times
    assert [i.name for i in items] == [f"REC{n:04d}.mp4" for n in range(5)]
    assert all(i.file_size_bytes == (tmp_path / "media" / i.name).stat().st_size for i in items)
    # A range that holds only the third file.
    answer = await platform.query(_record_query(times[2][0], times[2][1]))
    assert isinstance(answer, AssembledAnswer)
    assert [i.name for i in answer.items if isinstance(i, RecordItem)] == ["REC0002.mp4"]
    # A range with nothing: one message, SumNum 0 (Annex N).
    answer = await platform.query(_record_query(datetime(2020, 1, 1), datetime(2020, 1, 2)))
    assert isinstance(answer, AssembledAnswer) and answer.sum_num == 0 and answer.items == ()
    await stop_device(device, task)


async def test_split_recordinfo_sends_one_item_per_message_out_of_order(
    platform: MiniPlatform, tmp_path: Path
) -> None:
    make_recordings(tmp_path / "media", 4)
    device = SimulatedDevice(settings_for(platform, media_dir=tmp_path / "media",
                                          faults=parse_faults(["split-recordinfo"])))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    answer = await platform.query(_record_query(datetime(2026, 12, 5), datetime(2026, 12, 6)))
    assert isinstance(answer, AssembledAnswer) and answer.complete and answer.parts == 4
    arrived = [p.payload.items[0].start_time for p in platform.answer_parts
               if isinstance(p.payload, manscdp.RecordInfoResponse)]
    assert len(arrived) == 4 and arrived != sorted(arrived)  # out of order on the wire
    assert [i.start_time for i in answer.items if isinstance(i, RecordItem)] == sorted(arrived)
    await stop_device(device, task)


def test_fault_options_are_validated() -> None:
    assert parse_faults(["loss=0.25", "no-121"]) == {Fault.LOSS: 0.25, Fault.NO_121: 1.0}
    assert parse_faults(["stall=2.5"]) == {Fault.STALL: 2.5}
    assert parse_faults(["audio-drop=2"]) == {Fault.AUDIO_DROP: 2.0}
    for bad in (["loss"], ["loss=2"], ["no-121=1"], ["unheard-of"], ["reorder=x"], ["stall"], ["stall=0"],
                ["stall=x"], ["stall=-1"], ["audio-drop"], ["audio-drop=0"]):
        with pytest.raises(SettingsError):
            parse_faults(bad)
    with pytest.raises(SettingsError):
        DeviceSettings(platform_host="h", platform_port=5060, platform_id="1", device_id=DEVICE_ID,
                       password="p")
    settings = DeviceSettings(platform_host="h", platform_port=5060, platform_id=PLATFORM_ID,
                              device_id=DEVICE_ID, password="do-not-print-me")
    assert "do-not-print-me" not in repr(settings)


# -- the command line ------------------------------------------------------------------------------------


async def test_cli_registers_answers_and_unregisters_on_sigterm(
    platform: MiniPlatform, tmp_path: Path
) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", "gb28181-device", "--platform", f"127.0.0.1:{platform.port}",
        "--platform-id", PLATFORM_ID, "--device-id", DEVICE_ID, "--password-file", str(password_file),
        "--keepalive-interval", "0.1", "--fault", "gb2312-name", "loss=0.1", "--fault", "no-121",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await platform.wait_for(lambda: "keepalive" in platform.events)
        catalog = await platform.query(lambda sn: manscdp.build_catalog_query(sn, DEVICE_ID))
        assert isinstance(catalog, AssembledAnswer) and catalog.items[0].name == "执法记录仪通道一"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    assert platform.events[-1] == "unregistered" and DEVICE_ID not in platform.registered
    assert PASSWORD.encode() not in stderr  # the password is never logged


@pytest.mark.parametrize(("args", "complaint"), [
    (["--fault", "loss"], "loss needs a probability"),
    (["--fault", "teleport"], "unknown fault 'teleport'"),
    (["--device-id", "123"], "device_id must be 20 digits"),
])
def test_cli_refuses_bad_options_naming_them(tmp_path: Path, args: list[str], complaint: str) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    base = ["--platform", "127.0.0.1:5060", "--platform-id", PLATFORM_ID, "--device-id", DEVICE_ID,
            "--password-file", str(password_file)]
    result = subprocess.run([sys.executable, "-m", "simulators", "gb28181-device", *base, *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and complaint in result.stderr


async def test_unreadable_query_gets_400_and_the_device_keeps_answering(platform: MiniPlatform) -> None:
    device = SimulatedDevice(settings_for(platform, keepalive_interval_s=3600))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    assert platform.transport is not None
    for body in (b"<Query><CmdType>Catalog</CmdType><SN>x</SN>", b"<!DOCTYPE x [<!ENTITY a 'b'>]><Query/>",
                 b"\xff\xfe not xml"):
        req = request("MESSAGE", f"sip:{DEVICE_ID}@{DOMAIN}", [
            ("From", f"<sip:{PLATFORM_ID}@{DOMAIN}>;tag=bad"), ("To", f"<sip:{DEVICE_ID}@{DOMAIN}>"),
            ("Call-ID", f"bad-{os.urandom(4).hex()}"), ("CSeq", "1 MESSAGE"), ("Max-Forwards", "70"),
            ("Content-Type", "Application/MANSCDP+xml")], body)
        response = await platform.transport.request(req, platform.registered[DEVICE_ID])
        assert response.status == 400
    info = await platform.query(lambda sn: manscdp.build_device_info_query(sn, DEVICE_ID))
    assert isinstance(info, ManscdpMessage) and info.cmd_type == "DeviceInfo"
    await stop_device(device, task)


async def test_date_of_the_register_200_sets_the_device_clock(platform: MiniPlatform) -> None:
    wall = datetime(2026, 12, 5, 4, 0, 0, tzinfo=UTC)  # Beijing 12:00:00; the device is 1 h fast
    device = SimulatedDevice(settings_for(platform, clock_offset_s=3600.0), wall_clock=lambda: wall)
    assert device.device_time() == datetime(2026, 12, 5, 13, 0, 0)
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    status = await platform.query(lambda sn: manscdp.build_device_status_query(sn, DEVICE_ID))
    assert isinstance(status, ManscdpMessage) and isinstance(status.payload, DeviceStatusResponse)
    # The platform's Date says 12:00:00.000 (MiniPlatform): the device took it, as real devices do.
    assert status.payload.device_time == datetime(2026, 12, 5, 12, 0, 0) and device.log.clock_set_from_date
    await stop_device(device, task)


async def test_a_private_contact_address_is_only_advertised(platform: MiniPlatform) -> None:
    """A 4G device names its carrier-private address in Via and Contact; it is reachable only at the
    source address, so a platform that answered to the Contact would never reach it."""
    device = SimulatedDevice(settings_for(platform, contact_host="10.64.12.7", keepalive_interval_s=3600))
    task = await run_device(device)
    await platform.wait_for(lambda: DEVICE_ID in platform.registered)
    assert platform.registered[DEVICE_ID].host == "127.0.0.1"
    assert platform.contacts == [f"<sip:{DEVICE_ID}@10.64.12.7:{device.sip_port}>"]
    info = await platform.query(lambda sn: manscdp.build_device_info_query(sn, DEVICE_ID))
    assert isinstance(info, ManscdpMessage)  # sent to the source address, answered
    await stop_device(device, task)
