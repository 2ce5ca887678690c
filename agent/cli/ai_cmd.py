"""``igris infer`` and ``igris route explain``: the AI router of the running agent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.cli.common import add_root_option, ask_agent
from agent.cli.output import add_json_flag, emit, rows
from agent.errors import ConfigInvalid

INFER_HELP = "run one request through the router (local model, a peer, or the remote API)"
EXPLAIN_HELP = "show which backend the router would pick for TASK now, and why"


def _request_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private", action="store_true", help="keep the request on this device")
    p.add_argument("--deadline-ms", type=float, help="the latest answer that is still useful")
    p.add_argument("--min-accuracy", type=float, help="refuse backends less accurate (0..1)")
    add_root_option(p)
    add_json_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    infer = sub.add_parser(
        "infer", help=INFER_HELP,
        description=INFER_HELP + ". INPUT is a JSON list of numbers shaped like the model's "
                    "input, @FILE holding one, or holdout:N for sample N of the shipped "
                    "held-out set; --text sends text instead (chat models).")
    infer.add_argument("model", metavar="MODEL", help="e.g. digits-mlp, digits-cnn, text")
    infer.add_argument("input", metavar="INPUT", nargs="?", help="see above")
    infer.add_argument("--text", help="text for a chat model")
    _request_options(infer)
    infer.set_defaults(func=infer_cmd)

    route = sub.add_parser("route", help="the AI router", description="the AI router")
    route_sub = route.add_subparsers(dest="route_command", required=True, metavar="COMMAND")
    explain = route_sub.add_parser("explain", help=EXPLAIN_HELP, description=EXPLAIN_HELP + (
        ": the ranked backends with scores, those left out with the reason, and how the "
        "device's state (battery, heat, throttling, the power-save switch) shifted the "
        "weights."))
    explain.add_argument("task", metavar="TASK", help="a model or task name, e.g. digits-mlp")
    _request_options(explain)
    explain.set_defaults(func=explain_cmd)


def _params(args: argparse.Namespace, model: str) -> dict[str, Any]:
    return {"model": model, "private": args.private, "deadline_ms": args.deadline_ms,
            "min_accuracy": args.min_accuracy}


def read_input(text: str) -> list[Any]:
    """INPUT as the CLI takes it: JSON, @FILE, or holdout:N."""
    if text.startswith("holdout:"):
        from agent.ai.models import holdout

        inputs, _labels = holdout()
        try:
            return inputs[int(text[8:])]
        except (ValueError, IndexError):
            raise ConfigInvalid(f"{text!r}: the held-out set has samples 0..{len(inputs) - 1}"
                                ) from None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigInvalid(f"{text[1:]!r}: cannot read: {exc.strerror}") from None
    try:
        value = json.loads(source)
    except ValueError:
        raise ConfigInvalid(f"INPUT is not JSON: {text[:40]!r}") from None
    if not isinstance(value, list):
        raise ConfigInvalid("INPUT must be a JSON list of numbers")
    return value


def _human_decision(d: dict[str, Any]) -> str:
    lines = [f"choice: {d['choice'] or 'none'}" + (" (exploring)" if d["explored"] else "")]
    for item in d["ranked"]:
        lines.append(f"  {item['backend']:<28} score {item['score']:.3f}")
    for name, why in d["excluded"].items():
        lines.append(f"  {name:<28} left out: {why}")
    lines += [f"  because: {reason}" for reason in d["reasons"]]
    return "\n".join(lines)


def explain_cmd(args: argparse.Namespace) -> int:
    result = ask_agent(args, "ai.explain", _params(args, args.task))
    emit(result, as_json=args.json, human=_human_decision)
    return 0


def infer_cmd(args: argparse.Namespace) -> int:
    params = _params(args, args.model)
    if args.text is not None:
        params["text"] = args.text
    elif args.input is not None:
        params["inputs"] = read_input(args.input)
    else:
        raise ConfigInvalid("give INPUT (JSON, @FILE or holdout:N) or --text")
    result = ask_agent(args, "ai.infer", params, timeout=60)

    def human(r: dict[str, Any]) -> str:
        shown = {"backend": r["backend"], "latency_ms": r["latency_ms"]}
        if "label" in r:
            shown["label"] = r["label"]
        else:
            shown["outputs"] = json.dumps(r["outputs"])[:200]
        return rows(shown) + "\n" + _human_decision(r["decision"])

    emit(result, as_json=args.json, human=human)
    return 0
