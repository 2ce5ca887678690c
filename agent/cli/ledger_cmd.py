"""``igris ledger verify`` and ``igris ledger show``: read the ledger file directly.

Both open ``<root>/igris.db`` read-only, so they need no running agent and
work while one runs (WAL lets a reader see the last commit without blocking
the writer). Verification checks entries against the key in the root's
certificate.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit, when
from agent.errors import CertificateInvalid, LedgerError, NotEnrolled
from agent.identity import Certificate, RootLayout, key_id
from agent.security_mesh import LedgerEntry, read_entries, verify_ledger

# The runtime's file name (agent.runtime.runtime.DB_NAME), not imported from
# there: that would load the whole agent for a read-only command.
DB_NAME = "igris.db"
HELP = "check or print this device's signed ledger"
VERIFY_HELP = ("check every entry's hash, chain link and signature; exit 1 naming the "
               "first bad entry and why")
SHOW_HELP = "print the newest ledger entries"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ledger", help=HELP, description=HELP)
    ledger_sub = p.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")

    verify = ledger_sub.add_parser("verify", help=VERIFY_HELP, description=VERIFY_HELP)
    add_root_option(verify)
    add_json_flag(verify)
    verify.set_defaults(func=verify_cmd)

    show = ledger_sub.add_parser("show", help=SHOW_HELP, description=SHOW_HELP)
    add_root_option(show)
    show.add_argument("--limit", type=int, default=20, metavar="N",
                      help="how many of the newest entries (default 20)")
    show.add_argument("--kind", default=None, metavar="K",
                      help="only entries of this kind (cert, policy, command, commands, "
                           "block, ...)")
    add_json_flag(show)
    show.set_defaults(func=show_cmd)


def _device_keys(root: Path) -> dict[str, bytes]:
    """Author key id -> public key, from the certificate in ``root`` (no secret key read)."""
    layout = RootLayout(root)
    if not layout.is_enrolled():
        raise NotEnrolled(f"{str(root)!r} holds no certificate, so there is no key to verify "
                          "the ledger against; is --root right?")
    try:
        cert = Certificate.from_dict(json.loads(layout.certificate.read_text()))
    except ValueError as exc:
        raise CertificateInvalid(f"{str(layout.certificate)!r}: {exc}") from None
    return {key_id(cert.sign_key): cert.sign_key}


def verify_cmd(args: argparse.Namespace) -> int:
    root = resolve_root(args)
    path = root / DB_NAME
    report = verify_ledger(path, _device_keys(root))
    if args.json:
        emit(report.to_dict(), as_json=True)
        return 0 if report.ok else 1
    if not report.ok:
        good = f"entries 1 to {report.size} verify" if report.size else "no entry verifies"
        raise LedgerError(f"ledger in {str(path)!r} does not verify: {report.reason} ({good})")
    emit({"ledger": str(path), "entries": report.size, "head": report.to_dict()["head"],
          "verdict": "ok: every hash, link and signature checks out"}, as_json=False)
    return 0


def _human_entries(entries: list[LedgerEntry]) -> str:
    if not entries:
        return "(no entries)"
    return "\n".join(
        f"{e.seq:>6}  {when(e.ts[0])}  {e.kind:<16} {_human_body(e)}" for e in entries)


def _human_body(entry: LedgerEntry) -> str:
    """The body as JSON; a batch of read-only runs (up to 128) as counts of who ran what
    (``--json`` has every record)."""
    body = entry.body
    runs = body.get("runs") if entry.kind == "commands" else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        return json.dumps(body, sort_keys=True)
    counts = Counter((str(r.get("cmd")), str(r.get("by")), r.get("ok") is True) for r in runs)
    return f"{len(runs)} read-only run(s): " + ", ".join(
        f"{cmd} x{n} by {by}" + ("" if ok else " (failed)")
        for (cmd, by, ok), n in sorted(counts.items()))


def show_cmd(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise LedgerError(f"--limit must be at least 1, got {args.limit}")
    entries = read_entries(resolve_root(args) / DB_NAME, limit=args.limit, kind=args.kind)
    data: Any = [e.to_dict() for e in entries] if args.json else entries
    emit(data, as_json=args.json, human=_human_entries)
    return 0
