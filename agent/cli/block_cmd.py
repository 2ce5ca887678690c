"""``igris block add|remove|list``: the fleet blocklist, from an operator's root.

``add`` and ``remove`` sign an entry with the operator's identity, publish it
live on ``block`` and fold it into the retained snapshot on
``block/snapshot`` (read, verified, merged, republished) so devices that
join later learn it too. ``list`` shows what the device in ``--root``
enforces, straight from its database.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import datetime, timezone
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.operator_session import OperatorSession, database_path, operator_session
from agent.cli.output import add_json_flag, columns, emit
from agent.compat import canonical_json, wall_ms
from agent.db import Database
from agent.errors import EnvelopeRejected, StorageError
from agent.security_mesh.blocklist import (
    BLOCK,
    UNBLOCK,
    BlockEntry,
    load_entries,
    make_entry,
    merge_snapshot,
    snapshot_body,
    unpack_snapshot,
)

_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
TARGET_HELP = "device id, or key:<key id> (the sign_key_id 'igris keys show' prints)"


def duration_ms(text: str) -> int:
    """``30s``, ``30m``, ``1h``, ``2d`` → milliseconds (an argparse type)."""
    match = re.fullmatch(r"([1-9][0-9]*)([smhd])", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a whole number and s, m, h or d (e.g. 1h, 2d)"
        )
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def register(sub: argparse._SubParsersAction) -> None:
    block = sub.add_parser("block", help="the fleet blocklist (operators)",
                           description="the fleet blocklist (operators)")
    block_sub = block.add_subparsers(dest="block_command", required=True, metavar="COMMAND")

    add = block_sub.add_parser(
        "add", help="block a device or key fleet-wide",
        description="sign a block entry as the operator in --root and publish it to the fleet",
    )
    add.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    add.add_argument("--reason", required=True, help="why (kept in every device's ledger)")
    add.add_argument("--expires-in", type=duration_ms, metavar="DURATION",
                     help="lift the block by itself after e.g. 30m, 1h, 2d (default: never)")
    _publish_options(add)
    add.set_defaults(func=block_add)

    remove = block_sub.add_parser(
        "remove", help="lift a block fleet-wide",
        description="sign an unblock entry as the operator in --root and publish it",
    )
    remove.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    remove.add_argument("--reason", default="", help="why (kept in every device's ledger)")
    _publish_options(remove)
    remove.set_defaults(func=block_remove)

    show = block_sub.add_parser(
        "list", help="the blocklist this device enforces",
        description="the blocklist the device in --root enforces (read from its database)",
    )
    add_root_option(show)
    add_json_flag(show)
    show.set_defaults(func=block_list)


def _publish_options(parser: argparse.ArgumentParser) -> None:
    add_root_option(parser)
    parser.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT "
                                         "(default: [mqtt] broker of the root's config)")
    add_json_flag(parser)


def block_add(args: argparse.Namespace) -> int:
    return _publish(args, BLOCK, args.expires_in)


def block_remove(args: argparse.Namespace) -> int:
    return _publish(args, UNBLOCK, None)


def _publish(args: argparse.Namespace, action: str, expires_in: int | None) -> int:
    result = asyncio.run(_send(args, action, expires_in))
    emit(result, as_json=args.json)
    return 0


async def _send(args: argparse.Namespace, action: str, expires_in: int | None) -> dict[str, Any]:
    async with operator_session(resolve_root(args), broker=args.broker) as session:
        current = await _current_snapshot(session)
        for known in current:
            # Our entry must order after every entry we have seen, even when
            # this machine's clock lags the one that wrote them.
            session.channel.hlc.observe(known.ts)
        now = wall_ms()
        entry = make_entry(session.channel, action, args.target, args.reason,
                           now + expires_in if expires_in else None)
        merged = merge_snapshot(current, entry, now_ms=now)
        body = snapshot_body(merged, session.identity.certificate,
                             max_bytes=session.channel.max_bytes)
        await session.transport.publish(
            session.topics.block(), canonical_json(entry.envelope), qos=1)
        await session.channel.publish(session.topics.block_snapshot(), "block", body,
                                      qos=1, retain=True)
    return {
        "action": action, "target": entry.target, "reason": entry.reason,
        "expires_ms": entry.expires_ms, "author": entry.author, "id": entry.id,
        "snapshot_entries": len(body["entries"]),
    }


async def _current_snapshot(session: OperatorSession) -> list[BlockEntry]:
    """The verified entries of the retained snapshot (none if absent or not trusted)."""
    message = await session.fetch_retained(session.topics.block_snapshot())
    if message is None:
        return []
    env = session.channel.admit(message)
    if env is None:
        _warn("the retained blocklist snapshot does not verify here; starting a new one")
        return []
    try:
        entries, refused = unpack_snapshot(session.channel, env, message.topic)
    except EnvelopeRejected as exc:
        _warn(f"the retained blocklist snapshot is refused ({exc}); starting a new one")
        return []
    if refused:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()))
        _warn(f"left out of the snapshot, as they do not verify here: {counts}")
    return entries


def _warn(text: str) -> None:
    print(f"igris: warning: {text}", file=sys.stderr)


def block_list(args: argparse.Namespace) -> int:
    root = resolve_root(args)
    path = database_path(root)
    if not path.exists():
        raise StorageError(
            f"no agent database at {str(path)!r}; 'igris block list' shows what an agent "
            "enforces, so run one there first (igris run)"
        )
    db = Database.open(path)
    try:
        now = wall_ms()
        entries = [entry.describe(now) for entry in load_entries(db)]
    finally:
        db.close()
    emit(entries, as_json=args.json, human=_table)
    return 0


def _table(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "(no blocklist entries)"
    header = ("TARGET", "STATE", "EXPIRES (UTC)", "AUTHOR", "REASON")
    lines = [header] + [
        (e["target"], e["state"], _utc(e["expires_ms"]), e["author"], e["reason"] or "-")
        for e in entries
    ]
    return columns(lines)


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
