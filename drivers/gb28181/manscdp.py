"""MANSCDP: the XML that GB/T 28181 devices and platforms exchange in SIP MESSAGE bodies. A pure codec.

`parse_message(body)` turns one received body into a `ManscdpMessage` (root, CmdType, SN, DeviceID and a
typed payload for the commands the platform uses: Catalog, DeviceInfo, DeviceStatus, RecordInfo, Keepalive,
MediaStatus) or raises `ManscdpError` naming what was wrong. `build_*` produce exact bytes for the platform's
queries and, for the device simulator, the devices' answers and notifications. `MultipartAssembler` joins an
answer that a device split over several MESSAGEs (GB/T 28181-2016 Annex N: same SN, `SumNum` in each part).

What devices really send, and how it is handled (see shared/reference/gb28181.md §5, §12):

* The charset is the one the XML declaration names: GB2312 (the standard's "宜") is decoded as GB18030, its
  superset, because devices put GBK-only characters in names; UTF-8 as declared; no declaration: UTF-8, or the
  caller's per-device override. A body declared GB but made of multi-byte UTF-8 that reads as Chinese text is
  UTF-8 (many devices declare GB2312 and send UTF-8; GB18030 would garble it without an error); the codec
  used is recorded in `ManscdpMessage.charset`. Python's expat refuses multi-byte declared encodings on
  bytes, so the body is decoded here and the text parsed.
* One unreadable item of a Catalog or RecordInfo part (a record dated 0000-00-00 or ending before it starts,
  a catalog item without DeviceID) is left out and described in `ManscdpMessage.item_problems`; the other
  items of the part are kept.
* Values carry stray spaces even in the standard's own examples (`<CmdType>RecordInfo </CmdType>`): every text
  and attribute value is stripped.
* Hikvision sends a bare `&`: any `&` that does not start one of XML's five predefined entities or a character
  reference is taken literally. No other entity is ever expanded.
* A DOCTYPE (the door to entity bombs and external entities) is refused before parsing, and the parser itself
  (defusedxml) forbids DTDs, entity declarations and external references as a second wall.
* Sizes are bounded: the body, the number of elements, the nesting depth and the items per message.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

# A Catalog or RecordInfo answer over UDP is a few KiB; over TCP Annex N allows 10000 records per message,
# about 5 MiB at worst. Anything larger is refused rather than held.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ITEMS_PER_MESSAGE = 10_000  # Annex N: "每条响应消息携带记录上限为10000条"
# Items of one multi-part answer (Annex N's limit is per message, not per answer).
MAX_ITEMS_PER_ANSWER = 40_000
MAX_ELEMENTS = 40 * MAX_ITEMS_PER_MESSAGE
MAX_DEPTH = 16
MAX_SN_DIGITS = 18
MAX_ID_CHARS = 64  # a 20-digit code normally; some devices send longer vendor ids
# Problems of single items (a record with a bad time, a catalog item without DeviceID) described per
# message; beyond this many only their number is kept.
MAX_REPORTED_ITEM_PROBLEMS = 100


class ManscdpError(ValueError):
    """A MANSCDP body that cannot be read as the standard describes; the message says what was wrong."""


class Root(StrEnum):
    """The root element: what kind of MANSCDP message this is."""

    QUERY = "Query"
    CONTROL = "Control"
    NOTIFY = "Notify"
    RESPONSE = "Response"


class CmdType(StrEnum):
    """The commands the platform sends or reads (other CmdTypes parse with no typed payload)."""

    CATALOG = "Catalog"
    DEVICE_INFO = "DeviceInfo"
    DEVICE_STATUS = "DeviceStatus"
    RECORD_INFO = "RecordInfo"
    KEEPALIVE = "Keepalive"
    MEDIA_STATUS = "MediaStatus"


class Charset(StrEnum):
    """The charset a built body is encoded in (and declared as)."""

    GB2312 = "GB2312"
    GB18030 = "GB18030"
    UTF8 = "UTF-8"


# MediaStatus NotifyType 121: "历史媒体文件发送结束" (A.2.5 c), the end of a Download or Playback.
NOTIFY_TYPE_FILE_END = "121"
# Device-local time as the standard writes it (§9.10: Beijing time, no zone).
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


# -- typed payloads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogQuery:
    """A Catalog query (J.9): no parameters beyond the message header."""


@dataclass(frozen=True)
class DeviceInfoQuery:
    """A DeviceInfo query (J.10)."""


@dataclass(frozen=True)
class DeviceStatusQuery:
    """A DeviceStatus query (J.11)."""


@dataclass(frozen=True)
class RecordInfoQuery:
    """A RecordInfo query (A.2.4 d, J.13.1): the recordings of one channel in a device-local time range."""

    start_time: datetime
    end_time: datetime
    type: str = "all"
    secrecy: int = 0
    file_path: str | None = None
    address: str | None = None
    recorder_id: str | None = None
    indistinct_query: str | None = None


@dataclass(frozen=True)
class CatalogItem:
    """One channel (or sub-device) of a Catalog answer; `extra` keeps every other field as sent."""

    device_id: str
    name: str = ""
    manufacturer: str = ""
    model: str = ""
    owner: str = ""
    civil_code: str = ""
    address: str = ""
    parental: int | None = None
    parent_id: str = ""
    secrecy: int | None = None
    ip_address: str = ""
    port: int | None = None
    status: str = ""
    longitude: str = ""
    latitude: str = ""
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CatalogResponse:
    """One part of a Catalog answer: `sum_num` is the total over all parts."""

    sum_num: int
    items: tuple[CatalogItem, ...]


@dataclass(frozen=True)
class DeviceInfoResponse:
    """A DeviceInfo answer (J.10.5)."""

    result: str
    device_name: str = ""
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    channel: int | None = None


@dataclass(frozen=True)
class DeviceStatusResponse:
    """A DeviceStatus answer (J.11.5). `device_time` is the device's clock (local time, no zone) as it
    answered: the platform subtracts its own local time at receipt to measure the device's clock offset;
    `device_time_text` keeps it as sent."""

    result: str
    online: str = ""
    status: str = ""
    encode: str = ""
    record: str = ""
    device_time: datetime | None = None
    device_time_text: str = ""


@dataclass(frozen=True)
class RecordItem:
    """One recording of a RecordInfo answer (A.2.1 itemFileType). Times are device-local, no zone."""

    device_id: str
    name: str
    file_path: str
    address: str
    start_time: datetime
    end_time: datetime
    secrecy: int
    type: str
    recorder_id: str = ""
    file_size_bytes: int | None = None


@dataclass(frozen=True)
class RecordInfoResponse:
    """One part of a RecordInfo answer: `sum_num` is the total over all parts."""

    name: str
    sum_num: int
    items: tuple[RecordItem, ...]


@dataclass(frozen=True)
class Keepalive:
    """A Keepalive notify (J.12); `faulty_device_ids` from `<Info><DeviceID>` when the device reports them."""

    status: str
    faulty_device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class MediaStatus:
    """A MediaStatus notify (J.14.17); `notify_type` "121" is the end of a history file."""

    notify_type: str

    @property
    def is_file_end(self) -> bool:
        return self.notify_type == NOTIFY_TYPE_FILE_END


@dataclass(frozen=True)
class ItemProblem:
    """One item of a Catalog or RecordInfo part that was left out, and why. `index` counts from 0 in its
    part's list; `item_digest` identifies the item's exact XML (a retransmitted part repeats it)."""

    index: int
    problem: str
    item_digest: str


Payload = (
    CatalogQuery | DeviceInfoQuery | DeviceStatusQuery | RecordInfoQuery | CatalogResponse
    | DeviceInfoResponse | DeviceStatusResponse | RecordInfoResponse | Keepalive | MediaStatus
)


@dataclass(frozen=True)
class ManscdpMessage:
    """One parsed MANSCDP body.

    `fields` holds every top-level element that has text (stripped), in document order, so that commands
    without a typed payload (Alarm, MobilePosition, ConfigDownload ...) can still be read. `payload` is None
    for those. `charset` is the codec the body was decoded with (which may differ from the declared one:
    see `decode_body`). Items of a Catalog or RecordInfo part that cannot be read are left out of the
    payload and described in `item_problems` (at most `MAX_REPORTED_ITEM_PROBLEMS`); `items_left_out`
    counts them all."""

    root: Root
    cmd_type: str
    sn: int
    device_id: str
    payload: Payload | None
    charset: str
    fields: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    item_problems: tuple[ItemProblem, ...] = ()
    items_left_out: int = 0

    def field(self, name: str) -> str | None:
        return next((value for key, value in self.fields if key == name), None)


# -- decoding ----------------------------------------------------------------------------------------------

_DECLARATION_RE = re.compile(rb"\A\s*<\?xml\b(?P<attrs>[^?>]{0,200})\?>")
_ENCODING_RE = re.compile(rb"""encoding\s*=\s*["']\s*(?P<name>[A-Za-z0-9._-]{1,40})\s*["']""")
_DECLARATION_TEXT_RE = re.compile(r"\A\s*<\?xml\b[^?>]{0,200}\?>")
# GB2312 and GBK text is decoded as GB18030, the superset: devices put GBK-only (rare) characters in names.
_CODECS = {
    "gb2312": "gb18030", "gb_2312": "gb18030", "gb-2312": "gb18030", "gbk": "gb18030", "cp936": "gb18030",
    "gb18030": "gb18030", "gb-18030": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030",
    "utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "utf-8", "ascii": "utf-8",
}
_BARE_AMPERSAND_RE = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});)")
_DOCTYPE_RE = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_TIME_RE = re.compile(r"\A(\d{4})-(\d{1,2})-(\d{1,2})[T ](\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.\d{1,6})?\Z")
_INT_RE = re.compile(r"\A[+-]?\d{1,18}\Z")


def codec_for(charset: str) -> str:
    """The Python codec that decodes a body declared (or configured) as `charset`."""
    codec = _CODECS.get(charset.strip().lower())
    if codec is None:
        raise ManscdpError(f"unsupported charset {charset[:40]!r} (expected GB2312, GBK, GB18030 or UTF-8)")
    return codec


# What Chinese text is made of besides ASCII: CJK radicals to ideographs (with CJK punctuation, kana and
# Hangul in between), compatibility ideographs, fullwidth forms, general punctuation (dashes, quotes, …),
# and the supplementary ideograph planes.
_CJK_TEXT_RE = re.compile(
    "[\u0000-\u007f\u2010-\u2027\u2e80-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    "\U00020000-\U0003ffff]*"
)


def _is_utf8_chinese(body: bytes) -> bool:
    """Whether `body` holds multi-byte UTF-8 that reads as Chinese text: then it is UTF-8 whatever it
    declares. GB18030 decodes most UTF-8 Chinese without error (any even run of bytes 0x81-0xFE is valid
    there), so failing GB18030 is no test: "张三" in UTF-8 reads as "寮犱笁" in GB18030.

    The reverse mistake (GB text that happens to be valid UTF-8) is why validity alone is not enough: a
    random GB2312 level-1 character is valid UTF-8 18 % of the time (two such characters 3 %), but almost
    always as a two-byte sequence (GB lead bytes 0xC2-0xDF), i.e. a Latin, Greek, Cyrillic or Arabic
    letter. Requiring every non-ASCII character to be Chinese text (`_CJK_TEXT_RE`) leaves only GB
    strings whose bytes line up as three-byte sequences of ideographs: measured over 200 000 random
    strings of 1 to 6 characters, none for level-1 characters and at most 3 in 10 000 for 2-character
    strings drawn from level 2, and every further non-ASCII character in the body must line up too.
    GBK-only characters mostly have trail bytes below 0x80 or a lead byte that UTF-8 refuses, so they stay
    GB18030. A device whose GB text is misread anyway can be given a per-device charset override."""
    if body.isascii():
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _CJK_TEXT_RE.fullmatch(text) is not None


def decode_body(body: bytes, *, charset_override: str | None = None) -> tuple[str, str]:
    """The body's text and the codec used: the declared charset unless the caller overrides it for a device
    known to declare one thing and send another; a body declared GB2312/GBK/GB18030 that is multi-byte
    UTF-8 reading as Chinese text is decoded as UTF-8 (`_is_utf8_chinese` says why that is safe); a body
    that fails its codec is tried with the other one (a device that declares GB2312 and sends UTF-8, or
    the reverse)."""
    if body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows-built devices)
        body = body[3:]
        charset_override = charset_override or "UTF-8"
    declaration = _DECLARATION_RE.match(body)
    declared = None
    if declaration is not None:
        encoding = _ENCODING_RE.search(declaration.group("attrs"))
        declared = encoding.group("name").decode("ascii") if encoding else None
    codec = codec_for(charset_override or declared or "utf-8")
    if codec == "gb18030" and charset_override is None and _is_utf8_chinese(body):
        return body.decode("utf-8"), "utf-8"
    for candidate in (codec, "gb18030" if codec == "utf-8" else "utf-8"):
        try:
            return body.decode(candidate), candidate
        except UnicodeDecodeError:
            continue
    raise ManscdpError(f"body is neither {codec} nor its fallback")  # gb18030 fails only on truncated bytes


class _BoundedTreeBuilder(TreeBuilder):
    """A tree builder that stops a body with too many or too deeply nested elements while it is parsed."""

    def __init__(self, max_elements: int) -> None:
        super().__init__()
        self._max_elements = max_elements
        self._elements = 0
        self._depth = 0

    def start(self, tag: Any, attrs: Any) -> Element:
        self._elements += 1
        self._depth += 1
        if self._elements > self._max_elements:
            raise ManscdpError(f"more than {self._max_elements} elements")
        if self._depth > MAX_DEPTH:
            raise ManscdpError(f"elements nested deeper than {MAX_DEPTH}")
        return super().start(tag, attrs)

    def end(self, tag: Any) -> Element:
        self._depth -= 1
        return super().end(tag)


def parse_xml(body: bytes, *, charset_override: str | None = None,
              max_body_bytes: int = MAX_BODY_BYTES, max_elements: int = MAX_ELEMENTS) -> tuple[Element, str]:
    """The root element of a MANSCDP body (texts and attributes not yet stripped) and the codec used."""
    if len(body) > max_body_bytes:
        raise ManscdpError(f"body of {len(body)} bytes exceeds {max_body_bytes}")
    text, codec = decode_body(body, charset_override=charset_override)
    if _DOCTYPE_RE.search(text):
        raise ManscdpError("a DOCTYPE or entity declaration is refused (no DTD, no entities)")
    # The declaration names the charset the bytes had; the parser gets text, so it goes.
    text = _DECLARATION_TEXT_RE.sub("", text, count=1)
    text = _BARE_AMPERSAND_RE.sub("&amp;", text)
    parser = DefusedXMLParser(target=_BoundedTreeBuilder(max_elements), forbid_dtd=True,
                              forbid_entities=True, forbid_external=True)
    try:
        parser.feed(text)
        root = parser.close()
    except ManscdpError:
        raise
    except DefusedXmlException as e:
        raise ManscdpError(f"refused XML construct: {type(e).__name__}") from None
    except (ParseError, ValueError, RecursionError) as e:
        raise ManscdpError(f"not well-formed XML: {str(e)[:120]}") from None
    if not isinstance(root, Element):
        raise ManscdpError("no root element")
    return root, codec


def _text(element: Element | None) -> str:
    return (element.text or "").strip() if element is not None else ""


def _child_text(parent: Element, tag: str) -> str:
    return _text(parent.find(tag))


def _int(text: str, what: str, *, minimum: int = 0) -> int:
    if not _INT_RE.match(text):
        raise ManscdpError(f"{what} is not an integer: {text[:40]!r}")
    value = int(text)
    if value < minimum:
        raise ManscdpError(f"{what} {value} is below {minimum}")
    return value


def _optional_int(text: str, what: str) -> int | None:
    return _int(text, what) if text else None


def parse_time(text: str, what: str = "time") -> datetime:
    """A device-local time as MANSCDP writes it: `2010-11-11T19:46:17` (a space instead of `T` and
    fractional seconds are tolerated; the fraction is dropped)."""
    match = _TIME_RE.match(text.strip())
    if match is None:
        raise ManscdpError(f"{what} is not yyyy-MM-ddTHH:mm:ss: {text[:40]!r}")
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise ManscdpError(f"{what} is not a real date and time: {text[:40]!r}") from None


def format_time(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)


def _list_items(parent: Element, list_tag: str, max_items: int) -> list[Element]:
    holder = parent.find(list_tag)
    if holder is None:
        return []
    items = holder.findall("Item")
    if len(items) > max_items:
        raise ManscdpError(f"{list_tag} holds {len(items)} items, more than {max_items}")
    return items


_CATALOG_FIELDS = {
    "DeviceID": "device_id", "Name": "name", "Manufacturer": "manufacturer", "Model": "model",
    "Owner": "owner", "CivilCode": "civil_code", "Address": "address", "ParentID": "parent_id",
    "IPAddress": "ip_address", "Status": "status", "Longitude": "longitude", "Latitude": "latitude",
}


def _catalog_item(item: Element, index: int) -> CatalogItem:
    values: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    for child in item:
        tag, text = str(child.tag), _text(child)
        if tag in _CATALOG_FIELDS:
            values[_CATALOG_FIELDS[tag]] = text
        elif tag == "Parental":
            values["parental"] = _optional_int(text, f"catalog item {index} Parental")
        elif tag == "Secrecy":
            values["secrecy"] = _optional_int(text, f"catalog item {index} Secrecy")
        elif tag == "Port":
            values["port"] = _optional_int(text, f"catalog item {index} Port")
        elif len(child) == 0:
            extra.append((tag, text))
    if not values.get("device_id"):
        raise ManscdpError(f"catalog item {index} has no DeviceID")
    return CatalogItem(**values, extra=tuple(extra))


def _record_item(item: Element, index: int) -> RecordItem:
    what = f"record item {index}"
    device_id = _child_text(item, "DeviceID")
    start, end = _child_text(item, "StartTime"), _child_text(item, "EndTime")
    if not start or not end:
        raise ManscdpError(f"{what} lacks StartTime or EndTime")
    start_time, end_time = parse_time(start, f"{what} StartTime"), parse_time(end, f"{what} EndTime")
    if end_time < start_time:
        raise ManscdpError(f"{what} ends ({end}) before it starts ({start})")
    secrecy = _child_text(item, "Secrecy")
    return RecordItem(
        device_id=device_id,
        name=_child_text(item, "Name"),
        file_path=_child_text(item, "FilePath"),
        address=_child_text(item, "Address"),
        start_time=start_time,
        end_time=end_time,
        secrecy=_int(secrecy, f"{what} Secrecy") if secrecy else 0,
        type=_child_text(item, "Type"),
        recorder_id=_child_text(item, "RecorderID"),
        file_size_bytes=_optional_int(_child_text(item, "FileSize"), f"{what} FileSize"),
    )


class _ItemProblems:
    """Collects the items of one part that were left out (bounded detail, full count)."""

    def __init__(self) -> None:
        self.reported: list[ItemProblem] = []
        self.count = 0

    def parse(self, items: list[Element], parse_one: Any) -> list[Any]:
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(parse_one(item, index))
            except ManscdpError as exc:
                self.count += 1
                if len(self.reported) < MAX_REPORTED_ITEM_PROBLEMS:
                    xml = tostring(item, encoding="unicode").encode("utf-8")
                    digest = hashlib.sha256(xml).hexdigest()[:32]
                    self.reported.append(ItemProblem(index=index, problem=str(exc)[:200], item_digest=digest))
        return parsed


def _sum_num(root: Element, items: int) -> int:
    text = _child_text(root, "SumNum")
    sum_num = _int(text, "SumNum") if text else items
    if items > sum_num:
        raise ManscdpError(f"a part carries {items} items but SumNum says {sum_num}")
    return sum_num


def _payload(root_kind: Root, cmd_type: str, root: Element, max_items: int,
             problems: _ItemProblems) -> Payload | None:
    if root_kind is Root.QUERY:
        if cmd_type == CmdType.CATALOG:
            return CatalogQuery()
        if cmd_type == CmdType.DEVICE_INFO:
            return DeviceInfoQuery()
        if cmd_type == CmdType.DEVICE_STATUS:
            return DeviceStatusQuery()
        if cmd_type == CmdType.RECORD_INFO:
            start, end = _child_text(root, "StartTime"), _child_text(root, "EndTime")
            secrecy = _child_text(root, "Secrecy")
            return RecordInfoQuery(
                start_time=parse_time(start, "StartTime"),
                end_time=parse_time(end, "EndTime"),
                type=_child_text(root, "Type") or "all",
                secrecy=_int(secrecy, "Secrecy") if secrecy else 0,
                file_path=_child_text(root, "FilePath") or None,
                address=_child_text(root, "Address") or None,
                recorder_id=_child_text(root, "RecorderID") or None,
                indistinct_query=_child_text(root, "IndistinctQuery") or None,
            )
        return None
    if root_kind is Root.RESPONSE:
        if cmd_type == CmdType.CATALOG:
            # One unreadable item (no DeviceID, say) is left out and reported; the others stay.
            listed = _list_items(root, "DeviceList", max_items)
            catalog = problems.parse(listed, _catalog_item)
            return CatalogResponse(sum_num=_sum_num(root, len(listed)), items=tuple(catalog))
        if cmd_type == CmdType.RECORD_INFO:
            # A record with a bad time (0000-00-00 from a clock that lost power, an end before its start
            # after the clock was set back) is left out and reported; the others are still listed.
            listed = _list_items(root, "RecordList", max_items)
            records = problems.parse(listed, _record_item)
            return RecordInfoResponse(name=_child_text(root, "Name"), sum_num=_sum_num(root, len(listed)),
                                      items=tuple(records))
        if cmd_type == CmdType.DEVICE_INFO:
            return DeviceInfoResponse(
                result=_child_text(root, "Result"),
                device_name=_child_text(root, "DeviceName"),
                manufacturer=_child_text(root, "Manufacturer"),
                model=_child_text(root, "Model"),
                firmware=_child_text(root, "Firmware"),
                channel=_optional_int(_child_text(root, "Channel"), "Channel"),
            )
        if cmd_type == CmdType.DEVICE_STATUS:
            device_time = _child_text(root, "DeviceTime")
            return DeviceStatusResponse(
                result=_child_text(root, "Result"),
                online=_child_text(root, "Online"),
                status=_child_text(root, "Status"),
                encode=_child_text(root, "Encode"),
                record=_child_text(root, "Record"),
                device_time=parse_time(device_time, "DeviceTime") if device_time else None,
                device_time_text=device_time,
            )
        return None
    if root_kind is Root.NOTIFY:
        if cmd_type == CmdType.KEEPALIVE:
            info = root.find("Info")
            faulty = tuple(_text(e) for e in info.findall("DeviceID")) if info is not None else ()
            return Keepalive(status=_child_text(root, "Status"), faulty_device_ids=faulty[:max_items])
        if cmd_type == CmdType.MEDIA_STATUS:
            notify_type = _child_text(root, "NotifyType")
            if not notify_type:
                raise ManscdpError("MediaStatus without NotifyType")
            return MediaStatus(notify_type=notify_type)
    return None


def parse_message(body: bytes, *, charset_override: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                  max_items: int = MAX_ITEMS_PER_MESSAGE) -> ManscdpMessage:
    """One MANSCDP body as a typed message, or `ManscdpError` saying what was wrong."""
    root, codec = parse_xml(body, charset_override=charset_override, max_body_bytes=max_body_bytes,
                            max_elements=40 * max_items + 100)
    tag = str(root.tag).strip()
    try:
        root_kind = Root(tag)
    except ValueError:
        raise ManscdpError(f"root element {tag[:40]!r} is not Query, Control, Notify or Response") from None
    cmd_type = _child_text(root, "CmdType")
    if not cmd_type:
        raise ManscdpError(f"{tag} without CmdType")
    sn_text = _child_text(root, "SN")
    if not sn_text:
        raise ManscdpError(f"{tag} {cmd_type[:40]} without SN")
    if len(sn_text) > MAX_SN_DIGITS:
        raise ManscdpError(f"SN of {len(sn_text)} digits")
    sn = _int(sn_text, "SN")
    device_id = _child_text(root, "DeviceID")
    if not device_id:
        raise ManscdpError(f"{tag} {cmd_type[:40]} without DeviceID")
    if len(device_id) > MAX_ID_CHARS:
        raise ManscdpError(f"DeviceID of {len(device_id)} characters")
    fields = tuple((str(child.tag), _text(child)) for child in root if len(child) == 0)
    problems = _ItemProblems()
    payload = _payload(root_kind, cmd_type, root, max_items, problems)
    return ManscdpMessage(root=root_kind, cmd_type=cmd_type, sn=sn, device_id=device_id, payload=payload,
                          charset=codec, fields=fields, item_problems=tuple(problems.reported),
                          items_left_out=problems.count)


# -- building ----------------------------------------------------------------------------------------------

# An element to write: (tag, text) or (tag, children, attributes).
Node = tuple[str, str] | tuple[str, Sequence["Node"], Mapping[str, str]]
_XML_CHAR_RE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape(text: str) -> str:
    if _XML_CHAR_RE.search(text):
        raise ManscdpError(f"text {text[:40]!r} holds a character XML cannot carry")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _render(node: Node, out: list[str]) -> None:
    if len(node) == 2:
        tag, text = node
        out.append(f"<{tag}>{_escape(text)}</{tag}>\r\n")
        return
    tag, children, attributes = node
    attrs = "".join(f' {name}="{_escape(value)}"' for name, value in attributes.items())
    out.append(f"<{tag}{attrs}>\r\n")
    for child in children:
        _render(child, out)
    out.append(f"</{tag}>\r\n")


def build_body(root: Root, cmd_type: str, sn: int, device_id: str, children: Sequence[Node] = (),
               *, charset: Charset = Charset.GB2312) -> bytes:
    """The exact bytes of a MANSCDP body: declaration, root, CmdType, SN, DeviceID, then `children`, CRLF
    after each element (as the standard's examples and common platforms write it)."""
    if sn < 0:
        raise ManscdpError(f"SN {sn} is negative")
    out = [f'<?xml version="1.0" encoding="{charset.value}"?>\r\n']
    _render((root.value, [("CmdType", cmd_type), ("SN", str(sn)), ("DeviceID", device_id), *children], {}),
            out)
    text = "".join(out)
    try:
        return text.encode(charset.value.lower())
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end]
        raise ManscdpError(f"{bad!r} cannot be written in {charset.value}") from None


def build_catalog_query(sn: int, device_id: str, *, charset: Charset = Charset.GB2312) -> bytes:
    return build_body(Root.QUERY, CmdType.CATALOG, sn, device_id, charset=charset)


def build_device_info_query(sn: int, device_id: str, *, charset: Charset = Charset.GB2312) -> bytes:
    return build_body(Root.QUERY, CmdType.DEVICE_INFO, sn, device_id, charset=charset)


def build_device_status_query(sn: int, device_id: str, *, charset: Charset = Charset.GB2312) -> bytes:
    return build_body(Root.QUERY, CmdType.DEVICE_STATUS, sn, device_id, charset=charset)


def build_record_info_query(sn: int, channel_id: str, query: RecordInfoQuery, *,
                            charset: Charset = Charset.GB2312) -> bytes:
    """A RecordInfo query for one channel (J.13.1); optional fields are written only when set."""
    if query.end_time < query.start_time:
        raise ManscdpError("RecordInfo query ends before it starts")
    children: list[Node] = [("StartTime", format_time(query.start_time)),
                            ("EndTime", format_time(query.end_time))]
    for tag, value in (("FilePath", query.file_path), ("Address", query.address)):
        if value is not None:
            children.append((tag, value))
    children.append(("Secrecy", str(query.secrecy)))
    children.append(("Type", query.type))
    for tag, value in (("RecorderID", query.recorder_id), ("IndistinctQuery", query.indistinct_query)):
        if value is not None:
            children.append((tag, value))
    return build_body(Root.QUERY, CmdType.RECORD_INFO, sn, channel_id, children, charset=charset)


def build_keepalive(sn: int, device_id: str, *, status: str = "OK",
                    charset: Charset = Charset.GB2312) -> bytes:
    return build_body(Root.NOTIFY, CmdType.KEEPALIVE, sn, device_id, [("Status", status)], charset=charset)


def build_media_status(sn: int, device_id: str, *, notify_type: str = NOTIFY_TYPE_FILE_END,
                       charset: Charset = Charset.GB2312) -> bytes:
    return build_body(Root.NOTIFY, CmdType.MEDIA_STATUS, sn, device_id, [("NotifyType", notify_type)],
                      charset=charset)


def build_device_info_response(sn: int, device_id: str, info: DeviceInfoResponse, *,
                               charset: Charset = Charset.GB2312) -> bytes:
    children: list[Node] = [("DeviceName", info.device_name), ("Result", info.result),
                            ("Manufacturer", info.manufacturer), ("Model", info.model),
                            ("Firmware", info.firmware)]
    if info.channel is not None:
        children.append(("Channel", str(info.channel)))
    return build_body(Root.RESPONSE, CmdType.DEVICE_INFO, sn, device_id, children, charset=charset)


def build_device_status_response(sn: int, device_id: str, status: DeviceStatusResponse, *,
                                 charset: Charset = Charset.GB2312) -> bytes:
    children: list[Node] = [("Result", status.result), ("Online", status.online), ("Status", status.status),
                            ("Encode", status.encode), ("Record", status.record)]
    if status.device_time is not None:
        children.append(("DeviceTime", format_time(status.device_time)))
    return build_body(Root.RESPONSE, CmdType.DEVICE_STATUS, sn, device_id, children, charset=charset)


def _catalog_node(item: CatalogItem) -> Node:
    children: list[Node] = [(tag, getattr(item, name)) for tag, name in _CATALOG_FIELDS.items()]
    for tag, value in (("Parental", item.parental), ("Secrecy", item.secrecy), ("Port", item.port)):
        if value is not None:
            children.append((tag, str(value)))
    children.extend(item.extra)
    return ("Item", children, {})


def _record_node(item: RecordItem) -> Node:
    children: list[Node] = [
        ("DeviceID", item.device_id), ("Name", item.name), ("FilePath", item.file_path),
        ("Address", item.address), ("StartTime", format_time(item.start_time)),
        ("EndTime", format_time(item.end_time)), ("Secrecy", str(item.secrecy)), ("Type", item.type),
    ]
    if item.recorder_id:
        children.append(("RecorderID", item.recorder_id))
    if item.file_size_bytes is not None:
        children.append(("FileSize", str(item.file_size_bytes)))
    return ("Item", children, {})


def _chunks(items: Sequence[Any], per_message: int) -> list[Sequence[Any]]:
    if per_message < 1:
        raise ManscdpError("per_message must be at least 1")
    return [items[i:i + per_message] for i in range(0, len(items), per_message)] or [()]


def build_catalog_responses(sn: int, device_id: str, items: Sequence[CatalogItem], *, per_message: int = 10,
                            charset: Charset = Charset.GB2312) -> list[bytes]:
    """A Catalog answer as the device sends it: one body per `per_message` items, each with the total
    `SumNum` (Annex N); no items gives one body with SumNum 0 and no list."""
    bodies = []
    for chunk in _chunks(items, per_message):
        children: list[Node] = [("SumNum", str(len(items)))]
        if chunk:
            children.append(("DeviceList", [_catalog_node(i) for i in chunk], {"Num": str(len(chunk))}))
        bodies.append(build_body(Root.RESPONSE, CmdType.CATALOG, sn, device_id, children, charset=charset))
    return bodies


def build_record_info_responses(sn: int, channel_id: str, name: str, items: Sequence[RecordItem], *,
                                per_message: int = 10, charset: Charset = Charset.GB2312) -> list[bytes]:
    """A RecordInfo answer split as devices split it (Annex N): same SN, total SumNum in every part."""
    bodies = []
    for chunk in _chunks(items, per_message):
        children: list[Node] = [("Name", name), ("SumNum", str(len(items)))]
        if chunk:
            children.append(("RecordList", [_record_node(i) for i in chunk], {"Num": str(len(chunk))}))
        bodies.append(build_body(Root.RESPONSE, CmdType.RECORD_INFO, sn, channel_id, children,
                                 charset=charset))
    return bodies


# -- multi-part answers ------------------------------------------------------------------------------------

Item = CatalogItem | RecordItem


@dataclass(frozen=True)
class AssembledAnswer:
    """A Catalog or RecordInfo answer joined from its parts. `complete` is False when it was given up after
    the timeout (or evicted) before `sum_num` distinct items came: the items are what did come.
    Record items are ordered by start time, catalog items by DeviceID, whatever order the parts came in."""

    source: str
    sn: int
    cmd_type: str
    device_id: str
    name: str
    sum_num: int
    items: tuple[Item, ...]
    complete: bool
    parts: int
    duplicates: int
    # Items the parts carried that could not be read (see `ManscdpMessage.item_problems`): they count
    # towards `sum_num`, so an answer with a bad record still completes.
    item_problems: tuple[ItemProblem, ...] = ()
    items_left_out: int = 0


@dataclass
class _Pending:
    started_s: float
    device_id: str
    cmd_type: str
    name: str = ""
    sum_num: int = 0
    parts: int = 0
    duplicates: int = 0
    items: dict[Item, None] = field(default_factory=dict)
    cost_bytes: int = 0  # estimated memory of `items` and `left_out` (`_item_cost_bytes`)
    left_out: dict[str, ItemProblem] = field(default_factory=dict)  # by item digest: repeats absorbed


# What one item costs beyond its strings (the instance, its __dict__, two datetimes, its slot in the
# answer's dict): rounded up so that the estimate stays above what tracemalloc measures (a parsed record
# item: about 770 bytes estimated in all, 540 to 570 measured).
_ITEM_OVERHEAD_BYTES = 400
_ITEM_PROBLEM_COST_BYTES = 600


def _item_cost_bytes(item: Item) -> int:
    """An upper estimate of the memory `item` holds (its strings counted by their real size)."""
    cost = _ITEM_OVERHEAD_BYTES
    for value in vars(item).values():
        if isinstance(value, str):
            cost += sys.getsizeof(value)
    if isinstance(item, CatalogItem):
        for name, value in item.extra:
            cost += sys.getsizeof(name) + sys.getsizeof(value) + 64  # the pair's tuple and its slot
    return cost


def _sort_key(item: Item) -> tuple[Any, ...]:
    if isinstance(item, RecordItem):
        return (item.start_time, item.end_time, item.device_id, item.file_path, item.name)
    return (item.device_id, item.name)


class MultipartAssembler:
    """Joins multi-part Catalog and RecordInfo answers by (source, CmdType, SN) until `SumNum` distinct
    items have come (Annex N); items a part carried but that could not be read (`item_problems`) count
    towards it too. A repeated part or item (a UDP retransmission) is absorbed and counted; parts may come
    in any order. An answer not complete `timeout_s` after its first part is handed out incomplete by
    `expire(now_s)`. The clock is passed in (monotonic seconds), so tests need no sleeps.

    Bounded, in answers and in memory (item costs are upper estimates, `_item_cost_bytes`):

    * answers in progress: `max_pending` in all and `max_pending_per_source` from one source, so that one
      device (or one hostile sender) cannot take every slot; beyond them a new answer is refused
      (`ManscdpError`);
    * one answer holds at most `max_items` items and `max_answer_bytes`; one source's answers together
      `max_source_bytes`, all answers `max_total_bytes`. An answer that would pass any of these is handed
      out incomplete at once (its items so far), never dropped silently.

    The defaults keep the worst case within 256 MiB: one source holds at most 64 MiB whatever its number
    of answers, all sources together `max_total_bytes`, and the estimates are above the real figures
    (about 770 estimated for 540 real bytes per record item). One answer may take half of its source's
    share: 32 MiB, about 40 000 record items as devices write them (a busy recorder's month: review 14
    found a 4 MiB cap cut a 6 000-record answer short); a longer answer comes out incomplete and flagged,
    and the platform's download scheduler then asks again over halves of the time range. One source can
    take at most a quarter of the answers in progress.

    `source` is whoever sent the MESSAGE (the device's SIP id): the body's DeviceID may be a channel."""

    def __init__(self, *, timeout_s: float, max_pending: int = 256, max_pending_per_source: int = 64,
                 max_items: int = MAX_ITEMS_PER_ANSWER, max_answer_bytes: int = 32 * 1024 * 1024,
                 max_source_bytes: int = 64 * 1024 * 1024, max_total_bytes: int = 256 * 1024 * 1024) -> None:
        bounds = (max_pending, max_pending_per_source, max_items, max_answer_bytes, max_source_bytes,
                  max_total_bytes)
        if timeout_s <= 0 or min(bounds) < 1:
            raise ValueError("timeout_s and every bound of the assembler must be positive")
        self._timeout_s = timeout_s
        self._max_pending = max_pending
        self._max_pending_per_source = max_pending_per_source
        self._max_items = max_items
        self._max_answer_bytes = max_answer_bytes
        self._max_source_bytes = max_source_bytes
        self._max_total_bytes = max_total_bytes
        self._pending: dict[tuple[str, str, int], _Pending] = {}
        self._pending_per_source: dict[str, int] = {}
        self._bytes_per_source: dict[str, int] = {}
        self._total_bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        """The estimated memory held by the answers in progress."""
        return self._total_bytes

    def add(self, source: str, message: ManscdpMessage, now_s: float) -> AssembledAnswer | None:
        """Take one part; the joined answer once it is complete (or handed out incomplete at a bound),
        else None. Raises `ManscdpError` for a message that is not a multi-part answer, or when too many
        answers are already in progress (in all, or from this source)."""
        payload = message.payload
        if not isinstance(payload, CatalogResponse | RecordInfoResponse):
            raise ManscdpError(f"{message.root} {message.cmd_type} is not a multi-part answer")
        key = (source, message.cmd_type, message.sn)
        pending = self._pending.get(key)
        if pending is None:
            from_source = self._pending_per_source.get(source, 0)
            if from_source >= self._max_pending_per_source:
                raise ManscdpError(f"{from_source} multi-part answers from this source in progress")
            if len(self._pending) >= self._max_pending:
                raise ManscdpError(f"more than {self._max_pending} multi-part answers in progress")
            pending = self._pending[key] = _Pending(started_s=now_s, device_id=message.device_id,
                                                    cmd_type=message.cmd_type)
            self._pending_per_source[source] = from_source + 1
        pending.parts += 1
        pending.sum_num = max(pending.sum_num, payload.sum_num)
        if isinstance(payload, RecordInfoResponse) and payload.name:
            pending.name = payload.name
        for problem in message.item_problems:
            if problem.item_digest in pending.left_out:
                pending.duplicates += 1
            elif not self._take(source, pending, _ITEM_PROBLEM_COST_BYTES, items=len(pending.items)):
                return self._hand_out(key, complete=False)
            else:
                pending.left_out[problem.item_digest] = problem
        for item in payload.items:
            if item in pending.items:
                pending.duplicates += 1
            elif not self._take(source, pending, _item_cost_bytes(item), items=len(pending.items) + 1):
                return self._hand_out(key, complete=False)
            else:
                pending.items[item] = None
        if len(pending.items) + len(pending.left_out) >= pending.sum_num:
            return self._hand_out(key, complete=True)
        return None

    def _take(self, source: str, pending: _Pending, cost: int, *, items: int) -> bool:
        """Account `cost` bytes to `pending` if every bound allows it."""
        source_bytes = self._bytes_per_source.get(source, 0)
        if (
            items > self._max_items
            or pending.cost_bytes + cost > self._max_answer_bytes
            or source_bytes + cost > self._max_source_bytes
            or self._total_bytes + cost > self._max_total_bytes
        ):
            return False
        pending.cost_bytes += cost
        self._bytes_per_source[source] = source_bytes + cost
        self._total_bytes += cost
        return True

    def expire(self, now_s: float) -> list[AssembledAnswer]:
        """Answers still incomplete `timeout_s` after their first part, removed and handed out incomplete."""
        late = [key for key, p in self._pending.items() if now_s - p.started_s >= self._timeout_s]
        return [self._hand_out(key, complete=False) for key in late]

    def _hand_out(self, key: tuple[str, str, int], *, complete: bool) -> AssembledAnswer:
        pending = self._pending.pop(key)
        source, cmd_type, sn = key
        left = self._pending_per_source[source] - 1
        source_bytes = self._bytes_per_source.get(source, 0) - pending.cost_bytes
        if left:
            self._pending_per_source[source] = left
        else:
            del self._pending_per_source[source]
        if source_bytes > 0:
            self._bytes_per_source[source] = source_bytes
        else:
            self._bytes_per_source.pop(source, None)
        self._total_bytes -= pending.cost_bytes
        problems = tuple(pending.left_out.values())
        return AssembledAnswer(source=source, sn=sn, cmd_type=cmd_type, device_id=pending.device_id,
                               name=pending.name, sum_num=pending.sum_num,
                               items=tuple(sorted(pending.items, key=_sort_key)), complete=complete,
                               parts=pending.parts, duplicates=pending.duplicates,
                               item_problems=problems[:MAX_REPORTED_ITEM_PROBLEMS],
                               items_left_out=len(problems))


def items_of(answer: AssembledAnswer, kind: type[Item]) -> list[Any]:
    """The answer's items of one kind (typed access for callers that know what they asked for)."""
    return [item for item in answer.items if isinstance(item, kind)]


__all__ = [
    "AssembledAnswer", "CatalogItem", "CatalogQuery", "CatalogResponse", "Charset", "CmdType",
    "DeviceInfoQuery", "DeviceInfoResponse", "DeviceStatusQuery", "DeviceStatusResponse", "ItemProblem",
    "Keepalive",
    "ManscdpError", "ManscdpMessage", "MediaStatus", "MultipartAssembler", "RecordInfoQuery",
    "RecordInfoResponse", "RecordItem", "Root", "build_body", "build_catalog_query",
    "build_catalog_responses",
    "build_device_info_query", "build_device_info_response", "build_device_status_query",
    "build_device_status_response", "build_keepalive", "build_media_status", "build_record_info_query",
    "build_record_info_responses", "codec_for", "decode_body", "format_time", "items_of", "parse_message",
    "parse_time", "parse_xml",
]

