"""The disclosure package (一案一包) of a case, downloaded over mutual TLS from a central a real station
filled, checked with `edge verify` and with the openssl/sha256sum commands its own page documents, run
literally."""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import subprocess
import zipfile
from pathlib import Path

import aiohttp

from edge.central.disclosure.page import COMMANDS_BEGIN, COMMANDS_END
from edge.central.identity import load_signing_key
from edge.custody.canonical import parse_json
from edge.custody.disclosure import CHECKSUMS_FILE, INDEX_FILE, PAGE_FILE, TEXT_FILE
from edge.custody.keys import StationKey
from tests.audit.conftest import CASE, OTHER_CASE, AuditCentral
from tests.tamper.stores import run_edge


async def download(session: aiohttp.ClientSession, url: str, case: str, target: Path) -> int:
    """Stream the package to ``target``; the HTTP status."""
    async with session.get(f"{url}/v1/disclosure/package", params={"case": case}) as response:
        if response.status != 200:
            return response.status
        assert response.headers["Content-Type"] == "application/zip"
        with open(target, "wb") as out:
            async for chunk in response.content.iter_chunked(1 << 16):
                out.write(chunk)
        return response.status


async def unzipped_package(central: AuditCentral, tmp_path: Path, case: str = CASE) -> Path:
    archive = tmp_path / "package.zip"
    async with central.reader("auditor-1") as session:
        assert await download(session, central.url, case, archive) == 200
    folder = tmp_path / "package"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return folder


def documented_commands(folder: Path) -> list[str]:
    """The commands of VERIFY.txt, exactly as a person would copy them."""
    lines = (folder / TEXT_FILE).read_text(encoding="utf-8").splitlines()
    return lines[lines.index(COMMANDS_BEGIN) + 1:lines.index(COMMANDS_END)]


class _Commands(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside = tag == "code" and ("class", "command") in attrs
        if self.inside:
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.found[-1] += data


def run_commands(folder: Path, commands: list[str]) -> list[tuple[str, int, str]]:
    results = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=60)
        results.append((command, done.returncode, done.stdout + done.stderr))
    return results


async def test_package_holds_the_case_and_verifies_with_edge_verify(audit_central: AuditCentral,
                                                                     tmp_path: Path) -> None:
    folder = await unzipped_package(audit_central, tmp_path)
    index = parse_json((folder / INDEX_FILE).read_bytes())
    assert isinstance(index, dict)
    case_items = {r.item for r in audit_central.items(CASE)}
    # Officer A's five files, and officer B's item tagged into the case after it was uploaded.
    assert len(case_items) == 6 and audit_central.evidence.tagged_item in case_items
    assert {i["item"] for i in index["items"]} == case_items
    assert index["case_number"] == CASE and index["reader"] == "auditor-1"
    for record in audit_central.items(CASE):
        content = folder / "items" / record.item
        stored = next(p for p in content.iterdir() if p.name.startswith(record.item))
        assert stored.read_bytes() == audit_central.object_path(record.sha256).read_bytes()
    # The other case's items are not in the package, and their ledger entries show no content.
    other = {r.item for r in audit_central.items(OTHER_CASE)}
    assert other and not other & {p.name for p in (folder / "items").iterdir()}
    ledger_text = (folder / "ledger" / "TEST-STATION" / "entries.jsonl").read_text()
    assert not any(item in ledger_text for item in other)
    assert '"redacted":true' in ledger_text
    # Without a pinned key every check holds and the verdict is still not OK: the package's own key.
    verdict = run_edge("verify", str(folder))
    assert verdict.code == 4, verdict
    assert "ORIGIN UNPROVEN: disclosure package" in verdict.stdout and "6 items" in verdict.stdout
    assert "redacted" in verdict.stdout  # the note says what could only be linked
    # The agency's key pinned: every disclosed entry is bound by the station's checkpoint at its seq.
    real = tmp_path / "central.pub"
    real.write_bytes(load_signing_key(audit_central.config).public_pem())
    pinned = run_edge("verify", "--central-key", str(real), str(folder))
    assert pinned.code == 0 and "OK: disclosure package" in pinned.stdout, pinned
    # A central key pinned from elsewhere that is not the package's: refused.
    foreign = tmp_path / "other.pem"
    foreign.write_bytes(StationKey.generate().public_pem())
    assert run_edge("verify", "--central-key", str(foreign), str(folder)).code == 1


async def test_the_documented_openssl_commands_pass_and_fail_after_a_flipped_byte(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    folder = await unzipped_package(audit_central, tmp_path)
    commands = documented_commands(folder)
    page = _Commands()
    page.feed((folder / PAGE_FILE).read_text(encoding="utf-8"))
    assert page.found == commands  # the page and the text show the same commands
    assert any(c.startswith("openssl pkeyutl -verify") for c in commands)
    assert any(c.startswith("sha256sum") for c in commands)
    assert all(code == 0 for _, code, _ in run_commands(folder, commands)), run_commands(folder, commands)
    # One byte of one original flipped: the list of files and the item's own signed hash both catch it.
    record = audit_central.items(CASE)[0]
    original = next((folder / "items" / record.item).glob(f"{record.item}.*"))
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0x01
    original.write_bytes(bytes(data))
    failed = [(c, out) for c, code, out in run_commands(folder, commands) if code != 0]
    assert any(CHECKSUMS_FILE in c for c, _ in failed)
    assert any(f"items/{record.item}/content.sha256" in c for c, _ in failed)
    assert len(failed) == 2, failed
    verdict = run_edge("verify", str(folder))
    assert verdict.code == 1 and verdict.names(original.relative_to(folder).as_posix()), verdict


async def test_edge_verify_names_a_removed_file_a_foreign_file_and_a_changed_ledger(
    audit_central: AuditCentral, tmp_path: Path
) -> None:
    folder = await unzipped_package(audit_central, tmp_path)
    assert run_edge("verify", str(folder)).code == 4  # control: holds (origin unproven: no pinned key)
    record = audit_central.items(CASE)[1]
    receipt = folder / "items" / record.item / "receipt.json"
    saved = receipt.read_bytes()
    receipt.unlink()
    verdict = run_edge("verify", str(folder))
    assert verdict.code == 1 and verdict.names(f"items/{record.item}/receipt.json"), verdict
    receipt.write_bytes(saved)
    assert run_edge("verify", str(folder)).code == 4
    (folder / "items" / record.item / "note.txt").write_text("added later\n")
    verdict = run_edge("verify", str(folder))
    assert verdict.code == 1 and verdict.names(f"items/{record.item}/note.txt"), verdict
    (folder / "items" / record.item / "note.txt").unlink()
    # A ledger entry rewritten, and SHA256SUMS rewritten to match: the central's signature no longer holds,
    # and the chain names the entry.
    ledger = folder / "ledger" / "TEST-STATION" / "entries.jsonl"
    lines = ledger.read_bytes().splitlines(keepends=True)
    target = next(n for n, line in enumerate(lines) if b'"type":"verified"' in line)
    lines[target] = lines[target].replace(b'"type":"verified"', b'"type":"verifyed"')
    ledger.write_bytes(b"".join(lines))
    sums = (folder / CHECKSUMS_FILE).read_text().splitlines()
    fixed = [f"{hashlib.sha256(ledger.read_bytes()).hexdigest()}  ledger/TEST-STATION/entries.jsonl"
             if line.endswith("ledger/TEST-STATION/entries.jsonl") else line for line in sums]
    (folder / CHECKSUMS_FILE).write_text("\n".join(fixed) + "\n")
    verdict = run_edge("verify", str(folder))
    seq = parse_json(lines[target].replace(b"verifyed", b"verified"))["seq"]
    assert verdict.code == 1 and verdict.names(CHECKSUMS_FILE) and verdict.names(f"ledger seq {seq}"), verdict


async def test_building_the_package_is_a_logged_read_of_each_item(audit_central: AuditCentral,
                                                                  tmp_path: Path) -> None:
    await unzipped_package(audit_central, tmp_path)
    rows = audit_central.index.access_log()
    package = [r for r in rows if r["what"] == "disclosure-package"]
    assert [(r["reader"], r["query"]) for r in package] == [("auditor-1", f"case={CASE}")]
    per_item = {r["item"] for r in rows if r["what"] == "disclosure" and r["reader"] == "auditor-1"}
    assert per_item == {r.item for r in audit_central.items(CASE)}
    assert all(r["time"] for r in rows)


async def test_unknown_case_and_unauthenticated_callers_are_refused(audit_central: AuditCentral,
                                                                     tmp_path: Path) -> None:
    async with audit_central.reader("auditor-2") as session:
        assert await download(session, audit_central.url, "NO-SUCH-CASE", tmp_path / "x.zip") == 404
        async with session.get(f"{audit_central.url}/v1/disclosure/package") as response:
            assert response.status == 400
    # A client without a reader certificate (a station's, or none) never reaches the package.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as anonymous:
        try:
            async with anonymous.get(f"{audit_central.url}/v1/disclosure/package",
                                     params={"case": CASE}) as response:
                status = response.status
        except aiohttp.ClientError:
            status = 0  # the TLS handshake itself refused the client
    assert status in (0, 401, 403)
    assert not (tmp_path / "x.zip").exists()


async def test_a_damaged_stored_object_stops_the_package(audit_central: AuditCentral, tmp_path: Path) -> None:
    victim = audit_central.items(CASE)[0]
    path = audit_central.object_path(victim.sha256)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    archive = tmp_path / "damaged.zip"
    async with audit_central.reader("auditor-3") as session:
        # The central cuts the connection: the client knows the answer is incomplete.
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await download(session, audit_central.url, CASE, archive)
    # Whatever arrived is no package: the central never signs a list of files over a damaged original.
    try:
        with zipfile.ZipFile(archive) as opened:
            names = opened.namelist()
    except zipfile.BadZipFile:
        names = []
    assert CHECKSUMS_FILE not in names
