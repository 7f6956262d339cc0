"""Whatever an administrator does to answer a compromised account ends its console sessions at once
(they outlive a restart of the central): reset-password, enrol-totp, remove-totp, grant --revoke, and
`account sign-out`, which only does that. Reproduction from the review of the console hardening (R9)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.central.test_console_at_rest import PASSWORD, Browser, CentralProcess
from tests.central.test_console_at_rest import process as process  # fixture


def _edge(process: CentralProcess, *args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "central", *args, "--config",
                           str(process.config_path)], input=stdin.encode(), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def _sessions_of(process: CentralProcess, reader: str) -> int:
    db = sqlite3.connect(f"file:{process.config.layout.index_db}?mode=ro", uri=True)
    try:
        (count,) = db.execute("SELECT count(*) FROM console_sessions WHERE reader = ?", (reader,)).fetchone()
        return int(count)
    finally:
        db.close()


ANSWERS = {
    "reset-password": (("account", "reset-password", "li.legal", "--password-stdin"),
                       PASSWORD[::-1] + " new\n"),
    "enrol-totp": (("account", "enrol-totp", "li.legal"), ""),
    "remove-totp": (("account", "remove-totp", "li.legal"), ""),
    "grant --revoke": (("grant", "li.legal", "--revoke", "--reason", "compromised"), ""),
    "sign-out": (("account", "sign-out", "li.legal"), ""),
    "disable": (("account", "disable", "li.legal", "--reason", "compromised"), ""),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_answering_a_compromised_account_ends_its_sessions(
    process: CentralProcess, answer: str
) -> None:
    await process.start()
    try:
        thief, bystander = Browser(process), Browser(process)
        await thief.sign_in("li.legal")
        await bystander.sign_in("wang.legal")
        assert _sessions_of(process, "li.legal") == 1  # control: the stolen session is stored
        args, stdin = ANSWERS[answer]
        said = _edge(process, *args, stdin=stdin)
        assert "1 console session(s) ended" in said
        assert _sessions_of(process, "li.legal") == 0
        assert (await thief.call("GET", "/console/api/session"))[0] == 401
        assert (await bystander.call("GET", "/console/api/session"))[0] == 200  # only that account's
    finally:
        process.stop()
