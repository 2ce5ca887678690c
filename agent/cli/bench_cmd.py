"""``igris bench``: measure the local AI backends on the shipped held-out set.

Runs in this process, with no agent needed, and keeps the figures in
``<root>/igris.db`` (table ``ai_bench``), where the router reads them; WAL
lets it write beside a running agent. Energy per inference uses the target
profile's draw under load (``--target``, default: the configured target).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from agent.cli.common import add_root_option, resolve_root
from agent.cli.output import add_json_flag, columns, emit

# The runtime's file name (agent.runtime.runtime.DB_NAME), not imported from
# there: that would load the whole agent for a command that needs none of it.
DB_NAME = "igris.db"
HELP = "measure the local AI models: p50/p95 latency, held-out accuracy, energy per inference"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help=HELP,
        description=HELP + ". The figures are stored in the agent's database, where the "
                    "router weighs backends by them.",
    )
    p.add_argument("--backend", action="append", default=None, metavar="NAME",
                   help="only this backend, e.g. local:digits-mlp (repeatable; default: all)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="only the first N held-out samples (default: all of them)")
    add_root_option(p)
    p.add_argument("--target", default=None, metavar="PROFILE",
                   help="target profile whose power figure prices the CPU time "
                        "(default: the agent's configured target)")
    add_json_flag(p)
    p.set_defaults(func=bench)


def _table(report: dict[str, Any]) -> str:
    header = ("BACKEND", "MODEL", "P50 ms", "P95 ms", "ACCURACY", "mJ/INF", "SAMPLES")
    lines = [header] + [(
        f["backend"], f["model"], f"{f['p50_ms']:.4f}", f"{f['p95_ms']:.4f}",
        f"{f['accuracy']:.4f}", f"{f['mj_per_inference']:.4f}", str(f["samples"]),
    ) for f in report["figures"]]
    out = [columns(lines)]
    out += [f"{name}: unavailable ({why})" for name, why in report["unavailable"].items()]
    out.append(f"(target {report['target']} at {report['watts']:g} W under load; "
               f"stored in {report['db']})")
    return "\n".join(out)


def bench(args: argparse.Namespace) -> int:
    from agent.ai.backend import InferenceError
    from agent.ai.bench import run_bench, store_bench
    from agent.ai.local import LocalTflite
    from agent.ai.models import holdout, model_catalog
    from agent.config import load_config
    from agent.db import Database
    from agent.device import load_profile

    root = resolve_root(args)
    profile = load_profile(args.target or load_config(root).agent.target)
    backends = {f"local:{name}": LocalTflite(f"local:{name}", info)
                for name, info in model_catalog().items()}
    chosen = args.backend or list(backends)
    unknown = [name for name in chosen if name not in backends]
    if unknown:
        raise InferenceError("unknown_backend", f"no local backend named {unknown[0]!r}; "
                             f"there are {', '.join(backends)}")
    inputs, labels = holdout()
    if args.samples is not None:
        if not 1 <= args.samples <= len(labels):
            raise InferenceError("bad_input", f"--samples must be 1 to {len(labels)}, "
                                 f"got {args.samples}")
        inputs, labels = inputs[:args.samples], labels[:args.samples]

    ready, unavailable = [], {}
    for name in chosen:
        try:
            backends[name].load()
            ready.append(backends[name])
        except InferenceError as exc:
            unavailable[name] = str(exc)
    try:
        figures = asyncio.run(run_bench(ready, (inputs, labels),
                                        watts=profile.power.watts_load))
    finally:
        for backend in backends.values():
            backend.close()
    if not figures:
        raise InferenceError("unavailable", "no local backend can run: " + "; ".join(
            f"{name}: {why}" for name, why in unavailable.items()))

    db = Database.open(root / DB_NAME)
    try:
        store_bench(db, figures)
    finally:
        db.close()
    report = {"target": profile.name, "watts": profile.power.watts_load,
              "db": str(root / DB_NAME), "figures": [f.to_dict() for f in figures],
              "unavailable": unavailable}
    emit(report, as_json=args.json, human=_table)
    return 0
