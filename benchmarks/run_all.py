"""Run every ``benchmarks/bench_*.py`` in turn with short settings and print one summary table.

Each script runs as its own process with ``--json``; its progress goes to
stderr as it runs. Short defaults keep the whole run near a minute; pass
longer settings for figures worth writing down (``docs/benchmarks.md``)::

    python benchmarks/run_all.py [--cpu-seconds 20] [--runs 5] [--seconds 1] [--json]

Exit status: 0 when every script ran (whether its targets pass or miss),
1 when one failed to run or printed no result, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import child_env, format_targets, machine, raise_on_sigterm

HERE = Path(__file__).resolve().parent
ENVELOPE_TARGET = 0.8


def bench_args(name: str, args: argparse.Namespace) -> list[str]:
    """The short settings for each known script (others run with their defaults)."""
    if name == "bench_envelope":
        return ["--seconds", str(args.seconds)]
    if name == "bench_footprint":
        return ["--cpu-seconds", str(args.cpu_seconds)]
    if name == "bench_start":
        return ["--runs", str(args.runs)]
    if name == "bench_membership":
        return ["--runs", "1"]  # one join+kill and one join+stop each for Igris and Serf, ~1 min
    if name == "bench_bus":  # fan-out to 50 (Igris, raw paho, Serf) and the rate, ~1 min
        return ["--sizes", "50", "--rounds", "10", "--serf-sizes", "50", "--serf-rounds", "5",
                "--reps", "1", "--seconds", "2"]
    return []


def envelope_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """bench_envelope.py prints bare figures; judge them as its docstring says.

    Takes its JSON either flat (one body) or keyed by body name
    (``{"heartbeat": {...}, "command": {...}}``); a ``targets`` list is used as is.
    """
    if "targets" in result:
        return list(result["targets"])
    bodies = {"": result} if "sign_ratio" in result else result
    rows = []
    for body, figures in bodies.items():
        label = f" ({body})" if body else ""
        for name, key, raw, ratio in (
            ("envelope sign+encode", "sign_encode_per_s", "raw_sign_per_s", "sign_ratio"),
            ("envelope parse+verify", "parse_verify_per_s", "raw_verify_per_s",
             "verify_ratio"),
        ):
            rows.append({
                "name": name + label, "value": figures[key], "unit": "/s",
                "floor": figures[raw], "ratio": figures[ratio],
                "target": f"ratio >= {ENVELOPE_TARGET:g}",
                "verdict": "PASS" if figures[ratio] >= ENVELOPE_TARGET else "MISS", "note": "",
            })
    return rows


def run_one(script: Path, extra: list[str]) -> tuple[dict[str, Any] | None, str]:
    """Run one script; returns (parsed result, error text)."""
    proc = subprocess.Popen([sys.executable, str(script), *extra, "--json"],
                            stdout=subprocess.PIPE, text=True, env=child_env(),
                            cwd=HERE.parent)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        # Ctrl-C reached the child too (same process group); SIGTERM covers a
        # SIGTERM sent to us alone. Either way the child cleans up after itself.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        return None, f"exited with {proc.returncode}"
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]), ""
    except (IndexError, ValueError):
        return None, "printed no JSON result"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status is 0 whether targets pass or miss; non-zero only on errors.",
    )
    parser.add_argument("--cpu-seconds", type=float, default=20.0,
                        help="bench_footprint.py idle CPU window (default 20; its own default 60)")
    parser.add_argument("--runs", type=int, default=5,
                        help="bench_start.py runs of each kind (default 5; its own default 10)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="bench_envelope.py seconds per rate (default 1; its own default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these scripts, e.g. --only bench_start")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    raise_on_sigterm()

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
        missing = set(args.only) - {s.stem for s in scripts}
        if missing:
            parser.error(f"no such bench script: {', '.join(sorted(missing))}")

    results: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    try:
        for script in scripts:
            extra = bench_args(script.stem, args)
            print(f"## {script.name} {' '.join(extra)}", file=sys.stderr, flush=True)
            started = time.monotonic()
            result, error = run_one(script, extra)
            took = time.monotonic() - started
            print(f"## {script.name}: {error or 'done'} in {took:.0f} s", file=sys.stderr,
                  flush=True)
            if result is None:
                errors[script.stem] = error
                continue
            results[script.stem] = result
            if script.stem == "bench_envelope":
                try:
                    targets += envelope_targets(result)
                except (KeyError, TypeError, AttributeError) as exc:
                    errors[script.stem] = f"unexpected JSON ({exc!r})"
            else:
                targets += result.get("targets", [])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

    if args.json:
        print(json.dumps({"machine": machine(), "targets": targets, "errors": errors,
                          "results": results}))
    else:
        m = machine()
        print(f"\nmachine: {m['machine']}, {m['cpus']} CPUs, Python {m['python']}; "
              "figures are noisy (a few runs, a shared machine)\n")
        print(format_targets(targets))
        for name, error in errors.items():
            print(f"ERROR {name}: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
