"""The session statement (相关说明): a plain UTF-8 text document, for signature, that says what a room
session recorded. Pure: no I/O.

It names the case number, the room and its address, the collector, what the recording proves (证明对象),
the persons present and their roles, the start and end times, each source with its segments (count,
first and last, the list by hash) and its joined file (item, SHA-256, size, duration), every gap with its
reason, its times and where it falls in the joined file, every mark, and the session manifest it belongs
to (item and hash); then lines for the signatures of the persons present, the collector and the operator,
and for a refusal to sign. The service seals it as an item of the session (role ``session-statement``).

Everything in it comes from the session manifest (built from the ledger) and the joined results; text an
operator typed is shown through :func:`edge.custody.text.printable`, so no control or bidi character can
change how a line reads on paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edge.custody.text import printable

STATEMENT_ROLE = "session-statement"
STATEMENT_FORMAT = "evidence-edge/room-statement/1"


def _t(value: object) -> str:
    return printable("" if value is None else str(value))


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "未知"
    whole = int(seconds)
    millis = round((seconds - whole) * 1000) % 1000
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}.{millis:03d}"


def session_statement(
    manifest: Mapping[str, Any],
    joined: Sequence[Mapping[str, Any]],
    *,
    manifest_item: str | None,
    manifest_sha256: str,
    made_utc: str,
) -> str:
    """The statement of the session `manifest` (signed, as sealed) with each source's join result
    (:meth:`edge.rooms.joined.JoinResult.to_json`)."""
    case = manifest.get("case", {})
    out: list[str] = []
    add = out.append
    add("询问/讯问同步录音录像 相关说明")
    add(f"(格式 {STATEMENT_FORMAT};由采集站 {_t(manifest.get('station'))} 于 {_t(made_utc)} 依账本生成)")
    add("")
    add("一、基本情况")
    add(f"案件编号:{_t(case.get('case_number'))}")
    add(f"录制场所:{_t(manifest.get('room_name'))}({_t(manifest.get('room'))})")
    add(f"地址:{_t(manifest.get('address'))}")
    collector = _t(case.get("collector"))
    if case.get("collector_no"):
        collector += f"(警号 {_t(case.get('collector_no'))})"
    add(f"采集人:{collector}")
    add(f"证明对象:{_t(case.get('subject'))}")
    add(f"开始时间(UTC):{_t(manifest.get('started_utc'))}(操作人 {_t(manifest.get('started_by'))})")
    add(f"结束时间(UTC):{_t(manifest.get('stopped_utc'))}(操作人 {_t(manifest.get('stopped_by'))})")
    add(f"会话编号:{_t(manifest.get('room_session'))}")
    add("在场人员:")
    persons = manifest.get("persons") or []
    for person in persons:
        add(f"  {_t(person.get('name'))}  {_t(person.get('role'))}")
    if not persons:
        add("  (未登记)")
    add("")
    add("二、录制内容")
    add(f"会话清单(session manifest):项目 {_t(manifest_item) or '未能封存'},SHA-256 {manifest_sha256}")
    by_source = {str(j.get("source")): j for j in joined}
    for number, source in enumerate(manifest.get("sources", []), 1):
        source_id = str(source.get("source"))
        segments = source.get("segments", [])
        derived = source.get("derived")
        made_from = ""
        if isinstance(derived, Mapping):
            made_from = (f"(画中画合成画面,主画面 {_t(derived.get('main'))},辅助画面 "
                         f"{_t(derived.get('inset'))};由本站合成,原始信号另行录制)")
        add(f"{number}. 信号源 {_t(source_id)} {_t(source.get('name'))}{made_from}:{len(segments)} 个分段")
        if segments:
            add(f"   首段开始 {_t(segments[0].get('start_utc'))},末段结束 {_t(segments[-1].get('end_utc'))}")
        result = by_source.get(source_id, {})
        if result.get("item"):
            add(f"   合并文件:项目 {_t(result.get('item'))},{result.get('size')} 字节,"
                f"时长 {_hms(result.get('duration_s'))}(各分段合计 {_hms(result.get('recorded_s'))})")
            add(f"   合并文件 SHA-256:{_t(result.get('sha256'))}")
        else:
            add("   未生成合并文件:" + ";".join(_t(p) for p in result.get("problems", ["未执行"])))
            if segments:  # edge.rooms.export.disc_contents puts them on the disc in its stead
                add("   导出光盘时,本信号源已封存的各分段按封存顺序逐个刻录(不合并),"
                    "并附未合并原因说明(recordings 目录)")
        for index, segment in enumerate(segments, 1):
            partial = f" 不完整:{_t(segment.get('partial'))}" if segment.get("partial") else ""
            add(f"   分段{index:>4} {_t(segment.get('start_utc'))} 至 {_t(segment.get('end_utc'))} "
                f"SHA-256 {_t(segment.get('sha256'))}{partial}")
    add("")
    add("三、中断情况")
    gaps = manifest.get("gaps", [])
    if not gaps:
        add("录制全程未中断。")
    for number, gap in enumerate(gaps, 1):
        placed = next((g for g in by_source.get(str(gap.get("source")), {}).get("gaps", [])
                       if g.get("from") == gap.get("from")), None)
        where = "" if placed is None else f",位于合并文件 {_hms(placed.get('at_s'))} 处"
        until = "(持续至录制结束)" if gap.get("until_stop") else ""
        add(f"{number}. 信号源 {_t(gap.get('source'))}:自 {_t(gap.get('from'))} 至 "
            f"{_t(gap.get('to'))}{until},共 {_t(gap.get('duration_s'))} 秒{where}")
        add(f"   原因:{_t(gap.get('reason'))}")
    if gaps:
        add("合并文件不填补中断:中断前后的录像首尾相接,墙钟时间在上述位置跳变。")
    add("")
    add("四、标记(打点)")
    marks = manifest.get("marks", [])
    if not marks:
        add("无。")
    for number, mark in enumerate(marks, 1):
        add(f"{number}. {_t(mark.get('time_utc'))} {_t(mark.get('note'))}(标记人 {_t(mark.get('by'))})")
    changes = manifest.get("changes", [])
    if changes:
        add("")
        add("五、录制中变更")
        for number, change in enumerate(changes, 1):
            fields = change.get("changes") or {}
            said = ";".join(f"{_t(name)}:{_t(v.get('from'))} → {_t(v.get('to'))}"
                            for name, v in sorted(fields.items()) if isinstance(v, Mapping))
            add(f"{number}. {_t(change.get('time_utc'))} {said}(操作人 {_t(change.get('by'))})")
    add("")
    add("以上情况属实。各文件的 SHA-256 可用任何标准工具(sha256sum、certutil -hashfile)核对。")
    add("")
    add("签名")
    for person in persons:
        add(f"{_t(person.get('role'))} {_t(person.get('name'))}:________________  日期:__________")
    add(f"采集人 {_t(case.get('collector'))}:________________  日期:__________")
    add("录制操作人:________________  日期:__________")
    add("拒绝签名的,注明情况:____________________________________________")
    return "\n".join(out) + "\n"
