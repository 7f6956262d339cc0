"""Review 12: bounds of the multi-part answer assembler (Annex N) against one hostile or broken source.

GB/T 28181 MESSAGEs are not authenticated: anyone who can reach the SIP port can send a RecordInfo or
Catalog "answer" with any device id in From. Whether the platform feeds only answers to SNs it asked
for is the platform's business; these tests hold the assembler to its own promise ("Bounded").
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from drivers.gb28181.manscdp import (
    ManscdpError,
    ManscdpMessage,
    MultipartAssembler,
    RecordInfoResponse,
    RecordItem,
    Root,
    parse_message,
)

CHANNEL = "34020000001320000001"
START = datetime(2026, 12, 5, 8, 0, 0)


def record(index: int) -> RecordItem:
    """A record item as a device describes one file (distinct strings, as parsed from XML)."""
    start = START + timedelta(seconds=index)
    return RecordItem(
        device_id=CHANNEL,
        name=f"rec-{index}",
        file_path=f"/mnt/sdcard/DCIM/2026/12/05/{index:08d}.mp4",
        address=f"room {index % 7}",
        start_time=start,
        end_time=start + timedelta(minutes=5),
        secrecy=0,
        type="time",
    )


def part(sn: int, sum_num: int, items: tuple[RecordItem, ...]) -> ManscdpMessage:
    payload = RecordInfoResponse(name="body-worn camera", sum_num=sum_num, items=items)
    return ManscdpMessage(
        root=Root.RESPONSE, cmd_type="RecordInfo", sn=sn, device_id=CHANNEL, payload=payload, charset="utf-8"
    )


def test_one_source_cannot_fill_every_pending_slot_and_lock_other_devices_out() -> None:
    def second_device_accepted(parts_from_first: int) -> bool:
        assembler = MultipartAssembler(timeout_s=60)
        for sn in range(parts_from_first):
            assembler.add("34020000001320000666", part(sn, 2, (record(sn),)), now_s=0.0)
        try:
            assembler.add("34020000001320000002", part(7, 2, (record(0),)), now_s=1.0)
        except ManscdpError:
            return False
        return True

    # Control: 63 answers in progress from one source leave room for another device.
    assert second_device_accepted(63)
    # 64 first parts (SumNum 2, one item each, never completed) from one source: for the next 60 s every
    # other device's RecordInfo and Catalog answers are refused ("more than 64 multi-part answers").
    assert second_device_accepted(64), "one source's 64 unfinished answers locked every other device out"


@pytest.mark.timeout(600)
def _device_info(name: str) -> bytes:
    text = (
        '<?xml version="1.0" encoding="GB2312"?>\r\n<Response>\r\n<CmdType>DeviceInfo</CmdType>\r\n'
        f"<SN>1</SN>\r\n<DeviceID>{CHANNEL}</DeviceID>\r\n<DeviceName>{name}</DeviceName>\r\n"
        "<Result>OK</Result>\r\n</Response>\r\n"
    )
    return text.encode("utf-8")  # declared GB2312, sent in UTF-8 (the case the module's docstring names)


def test_a_body_declared_gb2312_but_sent_in_utf8_is_never_silently_garbled() -> None:
    # The fallback to UTF-8 happens only when GB18030 *fails*; GB18030 decodes most UTF-8 Chinese without
    # error (any even run of bytes 0x81-0xFE is valid there), so names of an even number of UTF-8 bytes
    # come out as other characters: "张三" as "寮犱笁", "北京市公安局" as "鍖椾含甯傚叕瀹夊眬". The existing
    # test passed because "审讯室" is 9 bytes. These names end up in manifests (device and channel names).
    # Control: an odd-length name, where GB18030 fails and the fallback reads it.
    control = parse_message(_device_info("审讯室")).payload
    assert control is not None and getattr(control, "device_name", None) == "审讯室"
    for name in ("张三", "北京市公安局"):
        try:
            payload = parse_message(_device_info(name)).payload
        except ManscdpError:
            continue  # refused as ambiguous: acceptable, it is never silently wrong
        assert payload is not None and getattr(payload, "device_name", None) == name, (
            f"{name!r} was read as {getattr(payload, 'device_name', None)!r}"
        )


def _record_xml(index: int, start: str, end: str) -> str:
    return (
        f"<Item>\r\n<DeviceID>{CHANNEL}</DeviceID>\r\n<Name>rec-{index}</Name>\r\n"
        f"<FilePath>/mnt/sdcard/{index:04d}.mp4</FilePath>\r\n<Address>room</Address>\r\n"
        f"<StartTime>{start}</StartTime>\r\n<EndTime>{end}</EndTime>\r\n<Secrecy>0</Secrecy>\r\n"
        "<Type>time</Type>\r\n</Item>\r\n"
    )


def _record_info(items: list[str]) -> bytes:
    return (
        '<?xml version="1.0" encoding="GB2312"?>\r\n<Response>\r\n<CmdType>RecordInfo</CmdType>\r\n'
        f"<SN>5</SN>\r\n<DeviceID>{CHANNEL}</DeviceID>\r\n<Name>cam</Name>\r\n<SumNum>{len(items)}</SumNum>\r\n"
        f'<RecordList Num="{len(items)}">\r\n{"".join(items)}</RecordList>\r\n</Response>\r\n'
    ).encode("gb18030")


def test_one_record_with_a_bad_time_does_not_hide_the_other_records_of_its_message() -> None:
    # A recorder whose clock lost power writes 0000-00-00 times; one whose clock was set back while it
    # recorded (校时) has a file that "ends before it starts". Today one such item makes the whole message
    # a ManscdpError: the part is refused as a whole and the other records in it (up to 10 000) are never
    # listed, so never downloaded, though nothing is wrong with them.
    good = [
        _record_xml(1, "2026-12-05T08:00:00", "2026-12-05T08:05:00"),
        _record_xml(3, "2026-12-05T09:00:00", "2026-12-05T09:05:00"),
    ]
    # Control: the good records alone parse.
    control = parse_message(_record_info(good)).payload
    assert isinstance(control, RecordInfoResponse) and len(control.items) == 2

    for bad in (
        _record_xml(2, "0000-00-00T00:00:00", "0000-00-00T00:10:00"),
        _record_xml(2, "2026-12-05T08:30:00", "2026-12-05T08:29:00"),
    ):
        try:
            payload = parse_message(_record_info([good[0], bad, good[1]])).payload
        except ManscdpError as error:
            raise AssertionError(f"two good records lost with the bad one: {error}") from None
        assert isinstance(payload, RecordInfoResponse)
        assert {item.name for item in payload.items} >= {"rec-1", "rec-3"}
