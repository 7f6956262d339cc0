"""The plain-language page of a disclosure package, in Chinese and English: README.html and VERIFY.txt.

Both are made from the same :func:`edge.custody.disclosure.openssl_commands`, so the commands a person
reads are the commands the tests run. VERIFY.txt holds them one per line between :data:`COMMANDS_BEGIN`
and :data:`COMMANDS_END`, exactly as typed; README.html shows each in a ``<code class="command">``.
Everything that came from a station (case number, names) is HTML-escaped in the page.
"""

from __future__ import annotations

import html

from edge.custody.disclosure import (
    CENTRAL_KEY_FILE,
    CHECKSUMS_FILE,
    CHECKSUMS_SIGNATURE_FILE,
    PackageIndex,
    openssl_commands,
)
from edge.custody.text import printable

__all__ = ["COMMANDS_BEGIN", "COMMANDS_END", "page_html", "page_text"]

COMMANDS_BEGIN = "# ---- commands / 命令 (run in the unzipped folder / 在解压后的文件夹中运行) ----"
COMMANDS_END = "# ---- end of commands / 命令结束 ----"

_INTRO_ZH = (
    "本包是案件 {case} 的证据披露包（一案一包），由执法记录中心 {central} 于 {created} 为 {reader} 生成，"
    "共 {count} 个证据文件。包内有原始文件（与采集时逐字节相同）、采集站签名的清单（manifest）、"
    "采集站台账的相关片段、中心回执和中心公钥。"
)
_INTRO_EN = (
    "This is the disclosure package of case {case}, built by the evidence central {central} at {created} "
    "for {reader}: {count} evidence file(s). It holds the original files (byte for byte as recorded), the "
    "manifests the docking station signed, the segments of the station ledger that cover them, the "
    "central's receipts and the central's public key."
)
_KEY_ZH = (
    "第一步：先确认中心公钥，再做任何检查。本包内的中心公钥 {key_file} 的标识为 {key_id}，但它是本包自带的："
    "任何人都能用自己的密钥做出一个自洽的包。请从包以外的渠道（本机构当面、公函或电话告知的指纹，或采集站"
    "登记包中的 central-signing.pub）取得本机构中心公钥的 SHA-256 指纹，与 edge verify 显示的指纹比对一致后，"
    "用 --central-key central-signing.pub 指定它（或用 --config 指定采集站配置中固定的中心公钥）。"
    "未指定公钥时 edge verify 的结论是“ORIGIN UNPROVEN（来源未证实）”，退出码 4，不是通过。"
)
_KEY_EN = (
    "Step one: pin the central's key before anything else. The central key in this package, {key_file}, "
    "has the id {key_id}, but it came with the package: anyone can build a self-consistent package with a "
    "key of their own. Obtain your agency central's key fingerprint out of band (in person, by letter or "
    "phone, or central-signing.pub from a station's enrolment bundle), compare it with the SHA-256 "
    "fingerprint edge verify prints, then pin it with --central-key central-signing.pub (or --config the "
    "station configuration that pins it). Without a pinned key edge verify says ORIGIN UNPROVEN and exits "
    "4: that is not a pass."
)
_EDGE_ZH = ("方法二：安装 evidence-edge 后运行 edge verify --central-key central-signing.pub 解压后的文件夹，"
            "它离线检查全部内容（哈希、签名、回执的包含证明、台账连续性、采集站对每条台账记录的签名检查点）。"
            "退出码：0 全部通过；1 有问题（逐项指出哪个文件、哪条台账记录或哪个检查点）；2 用法或输入错误；"
            "4 ORIGIN UNPROVEN，未指定中心公钥，来源未证实；5 NOT BOUND，包内各项一致，但某些已披露的保管记录"
            "与采集站签名的任何检查点之间都隔着旧格式（2026 年 12 月前写入）的被隐去（redacted）记录，"
            "这些记录（逐条列出）只凭中心的一面之词；6 NOT COMPLETE，不能证明某些证据的记录都在包内（见下文）。")  # noqa: E501
_EDGE_EN = ("Way two: with evidence-edge installed, run edge verify --central-key central-signing.pub on the "
            "unzipped folder. It checks everything offline (hashes, signatures, the receipts' inclusion "
            "proofs, the continuity of the ledger segments, the station's signed checkpoint at each ledger "
            "entry). Exit status: 0 all holds; 1 problems (each file, ledger entry or checkpoint named); 2 a "
            "usage or input error; 4 ORIGIN UNPROVEN, no central key was pinned; 5 NOT BOUND, the package "
            "holds together but a redacted line lies between some disclosed custody entries and every "
            "checkpoint the station signed is a redacted line of the old ledger format (written before "
            "2026-12), so those entries (each named) rest on the central's word, not the station's "
            "signature; 6 NOT COMPLETE, some items cannot be shown to have all their entries in the package "
            "(below).")
_OPENSSL_ZH = "方法三：只用 openssl（3.0 或更新）和 sha256sum。在解压后的文件夹中逐条运行下列命令；每条命令成功时退出码为 0（openssl 显示 Signature Verified Successfully，sha256sum 显示 OK 或不显示），任何一条失败即说明包被改动。"  # noqa: E501
_OPENSSL_EN = ("Way three: openssl (3.0 or later) and sha256sum alone. Run each command below in the unzipped "  # noqa: E501
               "folder; each exits 0 when its check holds (openssl prints Signature Verified Successfully, "
               "sha256sum prints OK or nothing), and any failure means the package was changed.")
_LIMITS_ZH = ("这些命令证明：每个文件都是中心签发时的样子；每个原始文件的哈希值就是采集站签名的哈希值；"
              "回执的树头和台账片段末尾检查点的签名有效。回执的包含证明（默克尔路径）、台账的哈希链，以及 "
              "checkpoints.jsonl 中采集站对每条台账记录各自签名的检查点，以及 key_rotations.jsonl "
              "中的密钥轮换（决定每个采集站密钥可签名的范围：被轮换停用的密钥此后所签一律无效），"
              "需要 edge verify 或按 RFC 9162 "
              "自行计算。台账片段中其他证据的记录、其他警员的接驳记录只显示序号、哈希、证据标签（item_tag）和"
              "内容摘要（body_sha256，含随机盐，redacted），内容不公开；edge verify 用这些部分重新计算其哈希，"  # noqa: E501
              "所以哈希链穿过它们把每条已披露的记录约束到采集站签名的检查点。每个证据的已签名清单及其披露的"
              "标注（tagged）记录必须载明本案案号，否则 edge verify 指出该证据不属于本案。")
_LIMITS_EN = ("These commands prove that every file is as the central issued it, that each original's hash "
              "is the hash its station signed, and that the receipts' tree heads and the checkpoint ending "
              "each ledger segment are validly signed. The receipts' inclusion proofs (Merkle audit paths), "
              "the ledger's hash chain and the checkpoints the station signed at each ledger entry "
              "(checkpoints.jsonl), with the station's key rotations that set which key may sign what "
              "(key_rotations.jsonl: a key rotated out signs nothing after its rotation), need edge verify, "
              "or a computation after RFC 9162 by hand. Entries of "
              "other items and of other officers' dockings show only their sequence number and hashes "
              "and the parts of their hash (\"redacted\": item_tag, and body_sha256 over the salted content), "  # noqa: E501
              "not their content; edge verify recomputes each one's hash from those parts, so the chain binds "  # noqa: E501
              "every disclosed entry through them to a checkpoint the station signed. Each item's signed "
              "manifest, with its disclosed tagged entries, must name this case, else edge verify names the "
              "item as not belonging to it.")
_NOT_COMPLETE_ZH = ("退出码 6 NOT COMPLETE（不能证明完整）：包内各项一致，"
                    "但无法证明某些证据的记录没有被隐去或截掉（逐个列出）：其记录没有“本证据上一条记录”的链接"
                    "（item_prev），或其首条记录之后有旧格式（2026 年 12 月前写入、无证据标签）的被隐去记录，"
                    "或本包未载明中心持有的台账位置、或未覆盖到该位置。这不是通过。")
_NOT_COMPLETE_EN = ("Exit status 6 NOT COMPLETE: the package holds together, but for some "
                    "items nothing shows that none of their entries was hidden or cut off (each item named): "
                    "their entries carry no link to the item's previous entry (item_prev), or a redacted line "  # noqa: E501
                    "of the old ledger format (written before 2026-12, no item tag) follows their first "
                    "entry, or the package states no ledger head or ends before it. That is not a pass.")
_COVERAGE_ZH = ("覆盖范围：本包覆盖 {heads}，即中心生成本包时所持有的台账，片段末尾是采集站在该序号签名的检查点；"  # noqa: E501
                "此后的记录不在本包覆盖之内。采集站在每条涉及某证据的台账记录中写入该证据上一条记录的哈希"
                "（item_prev），并让每条记录的哈希包含由证据编号和序号算出的证据标签（item_tag）：edge verify "  # noqa: E501
                "沿着这条链从每个证据的最后一条记录检查到其采集记录，并用本包证据的编号检查每条被隐去记录的"
                "标签，任何一条被隐去或截掉的记录都会被指出（证据和序号）。“该位置是中心当时持有的最新记录”"
                "是中心签名的声明（package.json，列在中心签名的 SHA256SUMS 中）："
                "它可归责于中心，如不属实，采集站自己的台账即可反驳。")
_COVERAGE_EN = ("Coverage: this package covers {heads}, the ledger as the central held it when it built "
                "the package, ending at the checkpoint the station signed there; entries after that head are "
                "not covered. Each station entry of an item carries the hash of the item's previous entry "
                "(item_prev), and each entry's hash commits to a tag computed from its item id and seq "
                "(item_tag): edge verify follows the item chain from each item's last entry back to its "
                "acquired entry and tests every redacted line's tag against the disclosed items' ids, naming "
                "the item and the seq of any entry hidden or cut off. \"That head was the newest entry the "
                "central held\" is the central's signed statement (package.json, listed in the SHA256SUMS the central "  # noqa: E501
                "signs): attributable to the central, and contradicted by the station's own ledger if it "
                "is false.")


def _coverage(index: PackageIndex, zh: bool) -> str:
    """The coverage paragraph, naming each station's stated head (or saying none was stated)."""
    if not index.coverage:
        return _NOT_COMPLETE_ZH if zh else _NOT_COMPLETE_EN
    joiner = "；" if zh else "; "
    heads = joiner.join(
        (f"采集站 {printable(station)} 的台账至序号 {c.head_seq}（哈希 {c.head_hash}）" if zh else
         f"the ledger of station {printable(station)} up to seq {c.head_seq} (hash {c.head_hash})")
        for station, c in sorted(index.coverage.items()))
    return (_COVERAGE_ZH if zh else _COVERAGE_EN).format(heads=heads)


def _facts(index: PackageIndex) -> dict[str, str]:
    return {"case": printable(index.case_number), "central": printable(index.central),
            "created": index.created_utc, "reader": printable(index.reader), "count": str(len(index.items)),
            "key_file": CENTRAL_KEY_FILE, "key_id": index.central_key_id}


def page_text(index: PackageIndex) -> bytes:
    """VERIFY.txt: the same explanation as the page, with the commands one per line between markers."""
    facts = _facts(index)
    lines = [
        "证据披露包 / Disclosure package", "",
        _INTRO_ZH.format(**facts), "", _INTRO_EN.format(**facts), "",
        _KEY_ZH.format(**facts), "", _KEY_EN.format(**facts), "",
        _EDGE_ZH, "    edge verify --central-key central-signing.pub PACKAGE_DIR", "", _EDGE_EN, "",
        _NOT_COMPLETE_ZH, "", _NOT_COMPLETE_EN, "",
        _coverage(index, zh=True), "", _coverage(index, zh=False), "",
        _OPENSSL_ZH, "", _OPENSSL_EN, "",
    ]
    steps = openssl_commands(index)
    for n, step in enumerate(steps, 1):
        lines.append(f"# {n}. {step.zh} / {step.en}")
    lines += ["", COMMANDS_BEGIN, *(step.command for step in steps), COMMANDS_END, "",
              _LIMITS_ZH, "", _LIMITS_EN, "",
              f"{CHECKSUMS_FILE}: sha256sum list of every file; {CHECKSUMS_SIGNATURE_FILE}: its Ed25519 "
              "signature by the central.", ""]
    return "\n".join(lines).encode("utf-8")


def page_html(index: PackageIndex) -> bytes:
    """README.html: a self-contained page (no scripts, no outside resources)."""
    facts = {name: html.escape(value) for name, value in _facts(index).items()}
    rows = []
    for step in openssl_commands(index):
        rows.append(f"<li><p lang=\"zh-CN\">{html.escape(step.zh)}</p>"
                    f"<p lang=\"en\">{html.escape(step.en)}</p>"
                    f"<pre><code class=\"command\">{html.escape(step.command)}</code></pre></li>")
    items = "".join(
        f"<tr><td><code>{html.escape(i.item)}</code></td><td>{html.escape(i.station)}</td>"
        f"<td>{i.size}</td><td><code>{i.sha256}</code></td></tr>" for i in index.items)
    body = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>证据披露包 Disclosure package</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.5}}
pre{{background:#f4f4f4;padding:.5em;white-space:pre-wrap;word-break:break-all}}
td,th{{border:1px solid #ccc;padding:.2em .4em;font-size:.9em}}table{{border-collapse:collapse}}
[lang=en]{{color:#333}}</style></head><body>
<h1>证据披露包 <span lang="en">Disclosure package</span></h1>
<p>{_INTRO_ZH.format(**facts)}</p><p lang="en">{_INTRO_EN.format(**facts)}</p>
<table><tr><th>证据 item</th><th>采集站 station</th><th>字节 bytes</th><th>SHA-256</th></tr>{items}</table>
<h2>公钥 <span lang="en">The key</span></h2>
<p>{_KEY_ZH.format(**facts)}</p><p lang="en">{_KEY_EN.format(**facts)}</p>
<h2>edge verify</h2>
<p>{html.escape(_EDGE_ZH)}</p><p lang="en">{html.escape(_EDGE_EN)}</p>
<pre><code>edge verify --central-key central-signing.pub PACKAGE_DIR</code></pre>
<p>{html.escape(_NOT_COMPLETE_ZH)}</p><p lang="en">{html.escape(_NOT_COMPLETE_EN)}</p>
<h2>覆盖范围 <span lang="en">Coverage</span></h2>
<p>{html.escape(_coverage(index, zh=True))}</p><p lang="en">{html.escape(_coverage(index, zh=False))}</p>
<h2>openssl + sha256sum</h2>
<p>{html.escape(_OPENSSL_ZH)}</p><p lang="en">{html.escape(_OPENSSL_EN)}</p>
<ol>{"".join(rows)}</ol>
<p>{html.escape(_LIMITS_ZH)}</p><p lang="en">{html.escape(_LIMITS_EN)}</p>
</body></html>
"""
    return body.encode("utf-8")
