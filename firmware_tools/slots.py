"""A/B slots on a device: install a verified bundle into the slot not running, switch, confirm.

Layout under ``base`` (``/opt/igris`` on a device)::

    slots/a/, slots/b/   one venv each (no pip in it): the agent wheel unpacked into its
                         site-packages, and igris-deps.pth naming the shared site-packages
                         that hold the agent's dependencies (paho-mqtt, PyNaCl, ...)
    current -> slots/a   the slot that runs: the unit starts current/bin/python -m agent
    ota.json             the slots' versions, the pending update, the last outcome
    ota-check.py         the boot check (firmware_tools/otacheck.py), run before each start

:func:`apply` goes step by step (``fetch``, ``verify``, ``install``,
``pending``, ``switch``), each step safe to interrupt: until ``current`` is switched
(one atomic ``os.replace`` of a symlink) the device runs the old slot, and
the boot check drops a pending update that never switched. After the switch
the new agent must confirm itself healthy (:func:`confirm`) before its
deadline, or the boot check (or the agent itself, :func:`roll_back`) puts
``current`` back.

Bundles carry only the agent's wheel; dependencies are shared between the
slots (installed once, by provisioning), so an update needs no network and
no compiler on the device. A release that needs new dependencies needs a
provisioning run first.
"""

from __future__ import annotations

import hashlib
import shutil
import sysconfig
import urllib.request
import venv
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_tools import otacheck
from firmware_tools.bundle import verify_bundle
from firmware_tools.errors import BundleRejected, FirmwareError
from firmware_tools.manifest import Manifest

SLOT_NAMES = ("a", "b")
DEPS_PTH = "igris-deps.pth"
CHECK_SCRIPT = "ota-check.py"
DEFAULT_DEADLINE_S = 120.0
STEPS = ("fetch", "verify", "install", "pending", "switch")
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""A bundle is an agent wheel and a manifest: anything near this is not one."""


def default_deps() -> Path:
    """The site-packages that hold this interpreter's dependencies (where PyNaCl is)."""
    import nacl

    return Path(nacl.__file__).resolve().parents[1]


def slot_site_packages(slot_dir: Path) -> Path:
    """``<slot>/lib/pythonX.Y/site-packages`` of a slot's venv."""
    rel = Path(sysconfig.get_path("purelib", vars={"base": ".", "platbase": "."}))
    return slot_dir / rel


def running_slot(module_file: str) -> tuple[Path, str] | None:
    """``(base, slot)`` when the module at ``module_file`` runs from an A/B slot, else None."""
    path = Path(module_file).resolve()
    for parent in path.parents:
        if parent.parent.name == otacheck.SLOTS and parent.name in SLOT_NAMES:
            base = parent.parent.parent
            if (base / otacheck.STATE).exists():
                return base, parent.name
            return None
    return None


def status(base: Path) -> dict[str, Any]:
    """What ``igris update status`` shows: slots, which runs, the pending update, the last."""
    state = otacheck.load_state(str(base))
    return {"base": str(base), "current": otacheck.current_slot(str(base)), **state}


def install_slot(base: Path, slot: str, wheel: Path, *, version: str, deps: Path,
                 now_ms: int) -> Path:
    """Make ``slots/<slot>`` afresh: a venv with ``wheel`` unpacked in it and the shared deps."""
    slot_dir = base / otacheck.SLOTS / slot
    if slot_dir.exists():
        shutil.rmtree(slot_dir)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(slot_dir)
    site = slot_site_packages(slot_dir)
    _unpack_wheel(wheel, site)
    (site / DEPS_PTH).write_text(f"{deps}\n")
    shutil.copyfile(otacheck.__file__, base / CHECK_SCRIPT)
    state = otacheck.load_state(str(base))
    state["slots"][slot] = {"version": version, "installed_ms": now_ms}
    otacheck.save_state(str(base), state)
    return slot_dir


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """Unpack a pure-Python wheel into ``site`` (what pip does for one), refusing any path
    that would land outside it."""
    site.mkdir(parents=True, exist_ok=True)
    root = site.resolve()
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            target = (site / name).resolve()
            if root not in target.parents and target != root:
                raise BundleRejected("unsafe-path", f"wheel member {name!r} leaves the slot")
        archive.extractall(site)


def init(base: Path, wheel: Path, *, version: str, deps: Path | None = None,
         now_ms: int) -> Path:
    """First install (provisioning): slot ``a`` holds ``wheel`` and ``current`` points at it."""
    base.mkdir(parents=True, exist_ok=True)
    install_slot(base, "a", wheel, version=version, deps=deps or default_deps(), now_ms=now_ms)
    otacheck.point_current(str(base), "a")
    return base / otacheck.CURRENT


def fetch(source: str, sha256: str, into: Path) -> Path:
    """The bundle at ``source`` (a path, ``file://`` or ``http(s)://`` URL) copied to ``into``,
    at most :data:`MAX_BUNDLE_BYTES`, checked against the expected SHA-256 (hex) before
    anything reads it."""
    into.parent.mkdir(parents=True, exist_ok=True)
    url = source if source.startswith(("http://", "https://", "file://")) else None
    hasher = hashlib.sha256()
    try:
        with (urllib.request.urlopen(url, timeout=60) if url else open(source, "rb")) as src, \
                into.open("wb") as out:
            size = 0
            while chunk := src.read(1 << 16):
                size += len(chunk)
                if size > MAX_BUNDLE_BYTES:
                    raise BundleRejected("too-large",
                                         f"{source} is over {MAX_BUNDLE_BYTES} bytes")
                hasher.update(chunk)
                out.write(chunk)
    except OSError as exc:  # urllib's URLError and HTTPError are OSErrors too
        raise BundleRejected("fetch", f"cannot read {source}: {exc}") from None
    digest = hasher.hexdigest()
    if digest != sha256.lower():
        into.unlink()
        raise BundleRejected("digest", f"{source} has SHA-256 {digest}, expected {sha256}")
    return into


def apply(base: Path, source: str, *, sha256: str, ca_public: bytes, target: str,
          current_version: str, now_ms: Callable[[], int], allow_downgrade: bool = False,
          deadline_s: float = DEFAULT_DEADLINE_S, deps: Path | None = None,
          on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install the bundle at ``source`` into the slot not running and switch to it.

    Returns what was done (``version``, ``slot``, ``previous``, ``deadline_ms``); the caller
    restarts the agent. ``on_step(name)`` is called before each of :data:`STEPS`.
    """
    step = on_step or (lambda _name: None)
    running = otacheck.current_slot(str(base))
    if running not in SLOT_NAMES:
        raise FirmwareError(f"{base} holds no A/B slots (no 'current' link); provision it "
                            "first (igris-fw or the igris_agent role)")
    pending = otacheck.load_state(str(base)).get("pending")
    if pending and pending["slot"] == running:
        # The other slot is the one to roll back to: it must not be overwritten.
        raise BundleRejected("busy", f"the update to {pending['version']} is still proving "
                                     "itself healthy; apply again once it is confirmed or "
                                     "rolled back (igris update status)")
    slot = "b" if running == "a" else "a"
    work = base / "incoming"
    if work.exists():
        shutil.rmtree(work)
    step("fetch")
    bundle = fetch(source, sha256, work / "bundle.tar")
    step("verify")
    (work / "payload").mkdir()
    manifest: Manifest = verify_bundle(bundle, ca_public=ca_public, now_ms=now_ms(),
                                       target=target, current_version=current_version,
                                       allow_downgrade=allow_downgrade,
                                       extract_to=work / "payload")
    step("install")
    wheel = work / "payload" / Path(manifest.wheel).name
    install_slot(base, slot, wheel, version=manifest.version, deps=deps or default_deps(),
                 now_ms=now_ms())
    step("pending")
    deadline_ms = now_ms() + int(deadline_s * 1000)
    state = otacheck.load_state(str(base))
    state["pending"] = {"slot": slot, "version": manifest.version, "previous": running,
                        "deadline_ms": deadline_ms, "boots": 0, "started_ms": now_ms()}
    otacheck.save_state(str(base), state)
    step("switch")
    otacheck.point_current(str(base), slot)
    shutil.rmtree(work, ignore_errors=True)
    return {"version": manifest.version, "slot": slot, "previous": running,
            "deadline_ms": deadline_ms}


def confirm(base: Path, slot: str, now_ms: int) -> dict[str, Any] | None:
    """The agent running from ``slot`` is healthy: keep it. The confirmed update, or None
    when nothing was pending for this slot."""
    state = otacheck.load_state(str(base))
    pending = state.get("pending")
    if not pending or pending["slot"] != slot or otacheck.current_slot(str(base)) != slot:
        return None
    state["pending"] = None
    state["last"] = {"result": "confirmed", "version": pending["version"], "ms": now_ms,
                     "took_ms": now_ms - pending["started_ms"]}
    otacheck.save_state(str(base), state)
    return state["last"]


def roll_back(base: Path, slot: str, now_ms: int, reason: str) -> dict[str, Any] | None:
    """The agent running from ``slot`` did not get healthy in time: point ``current`` back at
    the previous slot (the caller then restarts). None when nothing was pending for it."""
    state = otacheck.load_state(str(base))
    pending = state.get("pending")
    if not pending or pending["slot"] != slot:
        return None
    return otacheck.roll_back(str(base), state, now_ms, reason)


def python_of(base: Path) -> Path:
    """The interpreter that runs the current slot: ``current/bin/python``."""
    return base / otacheck.CURRENT / "bin" / "python"
