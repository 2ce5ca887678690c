"""``igris mem put|get|rm|ls|share|unshare``: this device's memory pools.

Each command opens ``<root>/igris.db`` with the root's identity (its box key
opens the pool keys) and calls :class:`agent.memory.MemoryStore`, so it needs
no running agent and works beside one: in WAL mode both can write, and each
commit waits its turn. ``share`` and ``unshare`` go through the running
agent's control socket, since the key messages go out on its connection.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.cli.common import add_root_option, ask_agent, resolve_root
from agent.cli.output import add_json_flag, columns, emit, short, when
from agent.db import Database
from agent.errors import DocumentInvalid, DocumentNotFound
from agent.identity import Identity
from agent.memory import Document, Listing, MemoryStore, PoolInfo, PoolKeys
from agent.wire import HybridClock

# The runtime's file name (agent.runtime.runtime.DB_NAME), not imported from
# there: that would load the whole agent for one command.
DB_NAME = "igris.db"
HELP = "this device's encrypted memory pools: put, get, remove and list JSON documents"
PUT_HELP = "store a JSON document under KEY in POOL (the pool is made by its first put)"
GET_HELP = "print the document under KEY in POOL"
RM_HELP = "delete the document under KEY in POOL"
LS_HELP = "list the pools, or the documents of POOL in key order"
SHARE_HELP = ("share POOL with member devices: the running agent sends them its keys "
              "(needs their certificates, learnt from their births)")
UNSHARE_HELP = ("remove DEVICE from POOL: the running agent rotates the pool key and sends "
                "the new one to the remaining members only")
VALUE_HELP = ("the value: JSON (42, true, '{\"a\": 1}'), @FILE or @- for a JSON file or stdin, "
              "or any other text, stored as a string")
_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LOOKS_LIKE_JSON = ("{", "[", '"')


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mem", help=HELP, description=HELP)
    mem_sub = p.add_subparsers(dest="mem_command", required=True, metavar="COMMAND")

    put = mem_sub.add_parser("put", help=PUT_HELP, description=PUT_HELP)
    put.add_argument("pool", metavar="POOL", help="pool name (letters, digits, '.', '_', '-')")
    put.add_argument("key", metavar="KEY", help="document key")
    put.add_argument("value", metavar="VALUE", help=VALUE_HELP)
    put.add_argument("--ttl", type=ttl_seconds, default=None, metavar="DURATION",
                     help="expire the document after this long (90, 30s, 5m, 1h, 2d; "
                          "default: the pool's default TTL, if any)")
    put.set_defaults(func=put_cmd)

    get = mem_sub.add_parser("get", help=GET_HELP, description=GET_HELP)
    get.add_argument("pool", metavar="POOL", help="pool name")
    get.add_argument("key", metavar="KEY", help="document key")
    get.set_defaults(func=get_cmd)

    rm = mem_sub.add_parser("rm", help=RM_HELP, description=RM_HELP)
    rm.add_argument("pool", metavar="POOL", help="pool name")
    rm.add_argument("key", metavar="KEY", help="document key")
    rm.set_defaults(func=rm_cmd)

    ls = mem_sub.add_parser("ls", help=LS_HELP, description=LS_HELP)
    ls.add_argument("pool", metavar="POOL", nargs="?", default=None,
                    help="pool whose documents to list (default: list the pools)")
    ls.add_argument("--prefix", default="", metavar="P", help="only keys starting with P")
    ls.add_argument("--after", default=None, metavar="KEY",
                    help="start after this key (to page through a large pool)")
    ls.add_argument("--limit", type=int, default=100, metavar="N",
                    help="at most N documents (default 100)")
    ls.set_defaults(func=ls_cmd)

    share = mem_sub.add_parser("share", help=SHARE_HELP, description=SHARE_HELP)
    share.add_argument("pool", metavar="POOL", help="pool name")
    share.add_argument("devices", metavar="DEVICE", nargs="+", help="device ids to add")
    share.set_defaults(func=share_cmd)

    unshare = mem_sub.add_parser("unshare", help=UNSHARE_HELP, description=UNSHARE_HELP)
    unshare.add_argument("pool", metavar="POOL", help="pool name")
    unshare.add_argument("device", metavar="DEVICE", help="device id to remove")
    unshare.set_defaults(func=unshare_cmd)

    for command in (put, get, rm, ls, share, unshare):
        add_root_option(command)
        add_json_flag(command)


def ttl_seconds(text: str) -> int:
    """``90``, ``30s``, ``5m``, ``1h``, ``2d`` -> seconds (an argparse type)."""
    match = re.fullmatch(r"([1-9][0-9]*)([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write whole seconds, or a number and s, m, h or d "
            "(e.g. 90, 5m, 2d)")
    return int(match.group(1)) * _UNITS_S[match.group(2)]


def parse_value(text: str) -> Any:
    """The JSON value a ``VALUE`` argument stands for (see :data:`VALUE_HELP`)."""
    if text.startswith("@"):
        source = text[1:]
        try:
            content = sys.stdin.read() if source == "-" else Path(source).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentInvalid(f"cannot read the value from {source!r}: {exc}") from None
        try:
            return _loads(content)
        except ValueError as exc:
            where = "stdin" if source == "-" else repr(source)
            raise DocumentInvalid(f"{where} does not hold JSON: {exc}") from None
    try:
        return _loads(text)
    except ValueError as exc:
        if text.lstrip().startswith(_LOOKS_LIKE_JSON):
            raise DocumentInvalid(
                f"VALUE looks like JSON but does not parse ({exc}); fix it, or write it as a "
                "JSON string to store it as text") from None
        return text


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


@contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[MemoryStore]:
    root = resolve_root(args)
    identity = Identity.load(root)
    db = Database.open(root / DB_NAME)
    try:
        yield MemoryStore(db, PoolKeys(db, identity.box_key), HybridClock())
    finally:
        db.close()


def put_cmd(args: argparse.Namespace) -> int:
    value = parse_value(args.value)
    with _open_store(args) as store:
        doc = store.put(args.pool, args.key, value, ttl_s=args.ttl)
    summary = {"pool": doc.pool, "key": doc.key, "version": doc.version,
               "expires": when(doc.expires_ms)}
    emit(doc.to_dict() if args.json else summary, as_json=args.json)
    return 0


def get_cmd(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        doc = store.get(args.pool, args.key)
    if doc is None:
        raise DocumentNotFound(
            f"no document {args.key!r} in pool {args.pool!r} (never put, deleted, or expired)")
    emit(doc.to_dict() if args.json else doc, as_json=args.json, human=_human_value)
    return 0


def rm_cmd(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        deleted = store.delete(args.pool, args.key)
    if not deleted:
        raise DocumentNotFound(
            f"no document {args.key!r} in pool {args.pool!r} to delete (never put, already "
            "deleted, or expired)")
    emit({"pool": args.pool, "key": args.key, "deleted": True}, as_json=args.json)
    return 0


def ls_cmd(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise DocumentInvalid(f"--limit must be at least 1, got {args.limit}")
    with _open_store(args) as store:
        if args.pool is None:
            pools = store.pools()
            emit([p.to_dict() for p in pools] if args.json else pools, as_json=args.json,
                 human=_pool_table)
            return 0
        listing = store.query(args.pool, args.prefix, limit=args.limit, after=args.after)
    if args.json:
        emit({"pool": args.pool, "documents": [d.to_dict() for d in listing.documents],
              "problems": [{"key": p.key, "reason": p.reason} for p in listing.problems]},
             as_json=True)
    else:
        emit(listing, as_json=False, human=_document_table)
    for problem in listing.problems:
        print(f"igris: error: {problem}", file=sys.stderr)
    return 1 if listing.problems else 0


def share_cmd(args: argparse.Namespace) -> int:
    """Through the running agent: it holds the connection the key message goes out on."""
    result = ask_agent(args, "mem.share", {"pool": args.pool, "devices": args.devices})
    emit(result, as_json=args.json)
    return 0


def unshare_cmd(args: argparse.Namespace) -> int:
    result = ask_agent(args, "mem.unshare", {"pool": args.pool, "device": args.device})
    emit(result, as_json=args.json)
    return 0


def _human_value(doc: Document) -> str:
    """A string as itself (what was put as text comes back as text); other values as JSON."""
    if isinstance(doc.value, str):
        return doc.value
    return json.dumps(doc.value, indent=2, sort_keys=True, ensure_ascii=False)


def _pool_table(pools: list[PoolInfo]) -> str:
    if not pools:
        return "(no pools)"
    return columns([("POOL", "DOCUMENTS", "EXPIRED", "TOMBSTONES", "DEFAULT TTL", "KEY"), *(
        (p.pool, str(p.documents), str(p.expired), str(p.tombstones),
         "-" if p.default_ttl_s is None else f"{p.default_ttl_s}s",
         f"{p.key_id or '-'} ({p.key_versions} held)")
        for p in pools)])


def _document_table(listing: Listing) -> str:
    if not listing.documents:
        return "(no documents)"
    return columns([("KEY", "VERSION", "UPDATED", "EXPIRES", "VALUE"), *(
        (d.key, str(d.version), when(d.ts[0]), when(d.expires_ms), short(d.value))
        for d in listing.documents)])





