"""Fixtures for the firmware tools: one real agent wheel per session, a real operator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.identity import FleetCa, Identity, enroll
from tests.support.inproc_fleet import NOW

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent wheel built from this tree (``pip wheel --no-deps``), once per session."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, timeout=300, cwd=out,
    )
    (wheel,) = out.glob("igris_agent-*.whl")
    return wheel


@pytest.fixture
def operator(tmp_path: Path, fleet_ca: FleetCa) -> Identity:
    """Operator ``alice`` of fleet ``lab`` (valid 10 days from NOW)."""
    enroll(tmp_path / "ops", fleet_ca, "alice", now_ms=NOW, role="operator", days=10)
    return Identity.load(tmp_path / "ops")
