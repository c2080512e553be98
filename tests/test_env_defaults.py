"""The README's privacy promise: afina sets HF_HUB_OFFLINE, HF_HUB_DISABLE_TELEMETRY, MLFLOW_DISABLE_TELEMETRY
and DO_NOT_TRACK unless the user set them. The conftest sets them for the whole session, so these tests run
`python -m afina` in a child whose environment lacks them (or holds the user's own values) and read the
environment the command ran with when it exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROMISED = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

# `python -m afina --help`, with an exit hook that prints the variables as the command left them
PROBE = f"""
import atexit, json, os, runpy, sys
atexit.register(lambda: print("ENV=" + json.dumps({{k: os.environ.get(k) for k in {sorted(PROMISED)!r}}}), file=sys.stderr))
sys.argv = ["afina", "--help"]
runpy.run_module("afina", run_name="__main__", alter_sys=True)
"""


def afina_env(tmp_path, **given: str) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if k not in PROMISED}  # not the conftest's session-wide values
    env.update(given)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage: afina" in done.stdout, done.stdout[-2000:]  # the real command ran
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("ENV=")]
    return json.loads(line.removeprefix("ENV="))


def test_afina_sets_offline_and_no_telemetry_when_unset(tmp_path):
    assert afina_env(tmp_path) == PROMISED


def test_afina_keeps_the_users_own_values(tmp_path):
    mine = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "0", "MLFLOW_DISABLE_TELEMETRY": "false", "DO_NOT_TRACK": "false"}
    assert afina_env(tmp_path, **mine) == mine
    # one set, the others still filled in
    assert afina_env(tmp_path, HF_HUB_OFFLINE="0") == {**PROMISED, "HF_HUB_OFFLINE": "0"}
