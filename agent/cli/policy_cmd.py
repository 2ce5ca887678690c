"""``igris policy push|show|validate``: the operator-signed policy every device follows."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, emit, rows
from agent.control import SOCKET_NAME, call
from agent.errors import AgentNotRunning, ConfigInvalid, EnvelopeRejected, PolicyRejected

HELP = "the fleet policy: push a signed version, show the one in force, validate a file"


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help=HELP, description=HELP)
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    push = policy_sub.add_parser(
        "push", help="sign FILE with an operator certificate and publish it to the fleet",
        description="Validate FILE, sign it with the operator enrolled in --root and publish "
                    "it retained on the fleet's policy topic. Devices apply it only if its "
                    "version is higher than the one they hold.",
    )
    push.add_argument("file", type=Path, help="policy JSON (see ai_assistant_config/policy.json)")
    add_root_option(push)
    push.add_argument("--broker", help="mqtt://HOST:PORT (default: [mqtt] broker of --root)")
    add_json_flag(push)
    push.set_defaults(func=policy_push)

    show = policy_sub.add_parser(
        "show", help="the policy in force on this device",
        description="The policy in force: asked of the running agent, or read from the "
                    "root's database when no agent runs.",
    )
    add_root_option(show)
    add_json_flag(show)
    show.set_defaults(func=policy_show)

    check = policy_sub.add_parser(
        "validate", help="check FILE against the policy schema",
        description="Check FILE against the policy schema without publishing it; the errors "
                    "name the key, what was expected and what was found.",
    )
    check.add_argument("file", type=Path, help="policy JSON")
    add_json_flag(check)
    check.set_defaults(func=policy_validate)


def read_policy_file(path: Path) -> dict[str, Any]:
    """Load and validate a policy file; every problem is one clear error."""
    from agent.mesh.policy_schema import validate_policy

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigInvalid(f"{str(path)!r}: cannot read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigInvalid(f"{str(path)!r}: not valid JSON: {exc}") from None
    try:
        return validate_policy(doc)
    except PolicyRejected as exc:
        raise PolicyRejected(f"{str(path)!r}: {exc}") from None


async def _push(root: Path, broker: str | None, doc: dict[str, Any]) -> dict[str, Any]:
    from agent.cli.operator_session import operator_session
    from agent.mesh.policy import policy_body, policy_digest
    from agent.wire import parse_envelope

    async with operator_session(root, broker=broker) as session:
        topic = session.topics.policy()
        current = await session.fetch_retained(topic)
        if current is not None:
            try:
                held = parse_envelope(current.payload).body.get("policy", {})
            except EnvelopeRejected:
                held = {}
            held_version = held.get("version") if isinstance(held, dict) else None
            if type(held_version) is int and held_version >= doc["version"]:
                raise PolicyRejected(
                    f"version {doc['version']} is not newer than version {held_version} "
                    "already published; devices would reject it. Raise \"version\"."
                )
        body = policy_body(doc, session.identity.certificate.to_dict())
        env = await session.channel.publish(topic, "policy", body, qos=1, retain=True)
        return {"version": doc["version"], "digest": policy_digest(doc),
                "signed_by": session.identity.device_id, "envelope": env.id, "topic": topic}


def policy_push(args: argparse.Namespace) -> int:
    doc = read_policy_file(args.file)
    result = asyncio.run(_push(resolve_root(args), args.broker, doc))
    emit(result, as_json=args.json)
    return 0


def _offline(root: Path) -> dict[str, Any]:
    from agent.cli.operator_session import database_path
    from agent.db import Database
    from agent.mesh.policy import policy_digest, stored_policy
    from agent.mesh.policy_schema import default_policy

    path = database_path(root)
    stored = None
    if path.exists():
        db = Database.open(path)
        try:
            stored = stored_policy(db.conn)
        finally:
            db.close()
    doc, author, applied = stored or (default_policy(), "default", None)
    return {"version": doc["version"], "author": author, "applied_ms": applied,
            "digest": policy_digest(doc), "document": doc, "source": "database"}


def _human(result: dict[str, Any]) -> str:
    head = {k: result.get(k) for k in ("version", "author", "applied_ms", "digest")}
    if result.get("last_rejection"):
        head["last rejected"] = result["last_rejection"]
    return rows(head) + "\n" + json.dumps(result["document"], indent=2, sort_keys=True)


def policy_show(args: argparse.Namespace) -> int:
    root = resolve_root(args)
    try:
        result = call(root / SOCKET_NAME, "policy.get")
        result["source"] = "agent"
    except AgentNotRunning:
        result = _offline(root)
    emit(result, as_json=args.json, human=_human)
    return 0


def policy_validate(args: argparse.Namespace) -> int:
    doc = read_policy_file(args.file)
    emit({"file": str(args.file), "version": doc["version"], "valid": True}, as_json=args.json)
    return 0
