"""The built wheel works outside the repository: profiles, policy and models ship inside it."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_from_any_directory(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         str(REPO)],
        check=True, timeout=300, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("igris_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent/profiles/pi-zero-2w.toml" in names
    assert {"agent/policy_default/policy.json", "agent/policy_default/plans.json",
            "agent/orchestrator/scheduler.py", "agent/gateway/gateway.py",
            "agent/profiles/micropython/lite_agent.py", "firmware_tools/slots.py",
            "firmware_tools/otacheck.py"} <= set(names)
    assert {"agent/models/models.json", "agent/models/holdout.json",
            "agent/models/digits-mlp.tflite", "agent/models/digits-cnn.tflite"} <= set(names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )
    # Run from an empty directory with only the installed copy ahead on the path.
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import json, agent, agent.device as d, agent.ai.models as m\n"
        "from importlib.resources import files\n"
        "from agent.orchestrator.templates import TemplateSet\n"
        "print(json.dumps({'file': agent.__file__, 'profiles': d.available_profiles(),\n"
        " 'models': {n: str(i.file) for n, i in m.model_catalog().items()},\n"
        " 'policy': json.loads(files('agent.policy_default').joinpath('policy.json')"
        ".read_text())['version'], 'templates': TemplateSet.shipped().names()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=60).stdout
    found = json.loads(out)
    assert found["file"].startswith(str(site))
    assert {"generic-linux", "rpi4", "rpi5", "pi-zero-2w", "jetson-orin-nano"} <= set(
        found["profiles"])
    assert found["policy"] == 1
    assert "health-check" in found["templates"]
    assert sorted(found["models"]) == ["digits-cnn", "digits-mlp"]
    assert all(path.startswith(str(site)) for path in found["models"].values())
    version = subprocess.run([sys.executable, "-m", "agent", "version", "--json"], check=True,
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert json.loads(version.stdout)["igris"]
