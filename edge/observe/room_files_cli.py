"""`edge room attach SESSION FILE [--kind 笔录]` and `edge room export SESSION --output FILE`: a session's
documents and disc image through the running agent's local API (edge.observe.room_api).

attach sends the file's bytes (the agent tells the type by content, PDF, JPEG or PNG, and keeps the
name only as text); export receives the disc image into a new file at ``--output`` (never one that
exists), checks it against the SHA-256 the agent sent, and prints that hash: the one the ledger's
``exported`` entry holds. Exit codes as for the other `edge room` commands (69 no agent, 77 not
admitted, 65 refused, with the agent's reason).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from edge.custody.text import json_printable, printable
from edge.durable.files import free_bytes
from edge.observe.status_cli import AgentUnavailable, NotAdmitted, api_socket
from edge.runtime.exit_codes import ExitCode

EX_DATAERR = 65
EX_CANTCREAT = 73
CHUNK_BYTES = 1 << 20
ATTACH_TIMEOUT_S = 600.0
EXPORT_TIMEOUT_S = 3600.0  # the agent copies and hashes every file, then writes the image


class Refused(Exception):
    """The agent refused the request; the message is its reason."""


class ImageMismatch(Exception):
    """The image received does not give the hash the agent sent."""


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as reader:
        while chunk := await asyncio.to_thread(reader.read, CHUNK_BYTES):
            yield chunk


async def _refusal(response: aiohttp.ClientResponse) -> Exception:
    try:
        answer = await response.json(content_type=None)
    except ValueError:
        answer = None
    reason = answer.get("error", f"HTTP {response.status}") if isinstance(answer, dict) else \
        f"HTTP {response.status}"
    return NotAdmitted(reason) if response.status == 403 else Refused(str(reason))


async def attach(socket_path: Path, session: str, file: Path, kind: str) -> Any:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    query = f"kind={quote(kind)}&name={quote(file.name)}"
    try:
        async with (
            aiohttp.ClientSession(connector=connector,
                                  timeout=aiohttp.ClientTimeout(total=ATTACH_TIMEOUT_S)) as client,
            client.post(f"http://station/api/v1/room-sessions/{quote(session, safe='')}/documents?{query}",
                        data=_file_chunks(file),
                        headers={"Content-Type": "application/octet-stream"}) as response,
        ):
            if response.status >= 400:
                raise await _refusal(response)
            return await response.json(content_type=None)
    except aiohttp.ClientConnectorError as exc:
        raise AgentUnavailable(str(exc.os_error.strerror or exc)) from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise AgentUnavailable(str(exc) or type(exc).__name__) from None


async def export(socket_path: Path, session: str, output: Path) -> dict[str, Any]:
    # The agent refuses an image that would not fit where it is to be written (on its ledger): it is told
    # the free space of the output's file system. Checked again when the image's size is known.
    directory = output.parent
    output_free = free_bytes(directory)
    connector = aiohttp.UnixConnector(path=str(socket_path))
    try:
        async with (
            aiohttp.ClientSession(connector=connector,
                                  timeout=aiohttp.ClientTimeout(total=EXPORT_TIMEOUT_S)) as client,
            client.post(f"http://station/api/v1/room-sessions/{quote(session, safe='')}/export",
                        params={"output_free_bytes": str(output_free)}) as response,
        ):
            if response.status >= 400:
                raise await _refusal(response)
            length = response.content_length
            free_now = free_bytes(directory)
            if length is not None and length > free_now:
                raise OSError(errno.ENOSPC, (
                    f"the image is {length} bytes and the output's file system has {free_now} bytes free "
                    "(less than when the export was asked for): choose another place or free space first"))
            expected = response.headers.get("X-Image-SHA256", "")
            digest = hashlib.sha256()
            size = 0
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                with os.fdopen(fd, "wb") as writer:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        digest.update(chunk)
                        size += len(chunk)
                        await asyncio.to_thread(writer.write, chunk)
                    writer.flush()
                    os.fsync(writer.fileno())
                if digest.hexdigest() != expected:
                    raise ImageMismatch(f"the image received gives {digest.hexdigest()}, the agent sent "
                                        f"{printable(expected)[:64]}: removed")
            except BaseException:
                output.unlink(missing_ok=True)
                raise
            return {"image": str(output), "sha256": expected, "size": size,
                    "volume_id": response.headers.get("X-Volume-ID", "")}
    except aiohttp.ClientConnectorError as exc:
        raise AgentUnavailable(str(exc.os_error.strerror or exc)) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AgentUnavailable(str(exc) or type(exc).__name__) from None


def cmd_room_files(args: argparse.Namespace) -> int:
    socket_path = api_socket(args)
    if isinstance(socket_path, ExitCode):
        return socket_path
    action: str = args.action
    try:
        if action == "attach":
            file = Path(args.file)
            if not file.is_file():
                print(f"edge room attach: {printable(str(file))} is not a readable file", file=sys.stderr)
                return ExitCode.USAGE
            answer = asyncio.run(attach(socket_path, args.session, file, args.kind))
            text = (f"{printable(str(answer['kind']))} attached to session {answer['room_session']} as "
                    f"item {answer['item']} ({answer['type']}, {answer['size']} bytes, SHA-256 "
                    f"{answer['sha256']})")
        else:
            answer = asyncio.run(export(socket_path, args.session, Path(args.output)))
            text = (f"disc image {printable(answer['image'])} ({answer['size']} bytes, volume "
                    f"{printable(answer['volume_id'])}), SHA-256 {answer['sha256']}: ready to burn")
    except FileExistsError:
        print(f"edge room export: {printable(args.output)} exists: name a new file", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"edge room {action}: {printable(str(exc))}", file=sys.stderr)
        return EX_CANTCREAT
    except AgentUnavailable as exc:
        print(f"the station agent is not running or did not answer on {printable(str(socket_path))} "
              f"({printable(str(exc))})", file=sys.stderr)
        return ExitCode.UNAVAILABLE
    except NotAdmitted as exc:
        print(f"not allowed: {printable(str(exc))}", file=sys.stderr)
        return ExitCode.NO_PERMISSION
    except (Refused, ImageMismatch) as exc:
        print(f"edge room {action} refused: {printable(str(exc))}", file=sys.stderr)
        return EX_DATAERR
    print(json_printable(json.dumps(answer, ensure_ascii=False)) if args.json else text)
    return ExitCode.OK


def add_room_file_parsers(actions: argparse._SubParsersAction[argparse.ArgumentParser],
                          common: Any) -> None:
    """`attach` and `export` under `edge room` (`common` adds --config, --socket, --json)."""
    attach_parser = actions.add_parser("attach", help="attach a document (笔录: PDF, JPEG, PNG) to a session")
    attach_parser.add_argument("session", help="the session id (edge room status, or the stop's answer)")
    attach_parser.add_argument("file", help="the document")
    attach_parser.add_argument("--kind", default="笔录", help="what it is (default 笔录)")
    common(attach_parser)
    attach_parser.set_defaults(func=cmd_room_files)
    export_parser = actions.add_parser("export", help="write a stopped session's disc image (ISO 9660)")
    export_parser.add_argument("session", help="the session id")
    export_parser.add_argument("--output", required=True, help="the image file to create (never replaced)")
    common(export_parser)
    export_parser.set_defaults(func=cmd_room_files)
