"""`edge uplink ...`: the operator's commands for the station uplink.

`edge uplink retry ITEM... --config FILE` and `edge uplink retry --all-rejected --config FILE` send items
the central refused back to the upload queue (`edge.uplink.requeue`), each with a `requeued` ledger entry
naming the operator and the refusal it overrides. A named item held because the uplink found its stored
copy changed (not sent until re-acquired) is released the same way, its entry naming the one that held it.
The command writes the station store, so, like
`edge tag`, it needs the store to itself: stop the agent first (`systemctl stop edge-station`), requeue,
start it again; the agent sends the requeued items at once.

Exit status: 0 done (also when `--all-rejected` finds nothing); 2 the request is wrong (an unknown item,
one that is not rejected, a directory that is no station store: nothing is changed); 75 the agent or
another command holds the store; 78 the configuration or the store is unusable
(`edge.ingest.store_commands`, as for every command that opens the store).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.custody.text import printable

__all__ = ["add_uplink_parser", "cmd_uplink_retry"]

EXIT_OK = 0
EXIT_REFUSED = 2


def _error(message: object) -> int:
    print(f"error: {printable(str(message))}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_uplink_retry(args: argparse.Namespace) -> int:
    from edge.ingest.store_commands import load_station_config, open_station_store
    from edge.runtime.exit_codes import ExitCode
    from edge.uplink.requeue import RequeueError, local_operator, requeue_rejected

    if bool(args.items) == bool(args.all_rejected):
        return _error("name the items to retry, or give --all-rejected (not both)")
    config = load_station_config(Path(args.config))
    if isinstance(config, ExitCode):
        return int(config)
    # The agent (or another command) holding the store is named in the message, with status 75.
    store = open_station_store(config.station.store_dir, config.station.id, purpose="edge uplink retry")
    if isinstance(store, ExitCode):
        return int(store)
    try:
        items = None if args.all_rejected else args.items
        done = requeue_rejected(store, items, operator=local_operator(), reason=args.reason or "",
                                release_held=True)
    except RequeueError as exc:
        return _error(exc)
    finally:
        store.close()
    if not done:
        print("no rejected items: nothing to retry")
        return EXIT_OK
    for requeued in done:
        if requeued.held_seq is not None:
            print(f"released {requeued.item}: ledger seq {requeued.seq}, held since its stored copy was "
                  f"found changed at ledger seq {requeued.held_seq} (checked again as it is sent)")
            continue
        refusal = (
            "no refusal on the ledger"
            if requeued.refusal_seq is None
            else f"refusal {requeued.refusal_code} at ledger seq {requeued.refusal_seq}"
            + (" (signed by the central)" if requeued.signed else " (unsigned)")
        )
        # The refusal code came from the network (an unsigned one from anyone on the path): escaped.
        print(printable(f"requeued {requeued.item}: ledger seq {requeued.seq}, overriding {refusal}"))
    print(f"{len(done)} item(s) back in the upload queue; the agent sends them when it runs")
    return EXIT_OK


def add_uplink_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    uplink = sub.add_parser("uplink", help="the station uplink: requeue items the central refused")
    commands = uplink.add_subparsers(dest="uplink_command", metavar="COMMAND", required=True)
    retry = commands.add_parser(
        "retry",
        help="send rejected (or held) items back to the upload queue (a `requeued` ledger entry each)",
        description="Send items the central refused back to the upload queue, each with a `requeued` "
        "ledger entry naming you (your Unix account) and the refusal it overrides. A named item held "
        "because its stored copy was found changed is released (sent again, checked as it goes). The "
        "command needs the store to itself: stop the agent first, start it again after.",
    )
    retry.add_argument("items", nargs="*", metavar="ITEM", help="item UUID(s)")
    retry.add_argument("--all-rejected", action="store_true", help="every item the central refused")
    retry.add_argument("--config", required=True, help="station TOML file (its store)")
    retry.add_argument("--reason", help="why (kept in the ledger entry; at most 200 characters)")
    retry.set_defaults(func=cmd_uplink_retry)
