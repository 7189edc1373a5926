"""Real Flower deployments on 127.0.0.1 (TLS, SuperNode authentication): the scripts behind
``make flower-deploy-smoke`` and ``make flower-drill``, run as a user runs them. Each starts a
SuperLink and SuperNodes as separate processes and checks the server's x_ag against the
in-process learner bit for bit (scripts/flower_check.py). Slow: the smoke 1.5-4 min, the drill
4.5-10 min on 2 cores shared with other jobs (its SuperNode drill waits ~60 s for a heartbeat)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the flower extra (pip install -e '.[flower]') is not installed")

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("openssl", "ssh-keygen", "setsid")


def free_port_range(size: int) -> int:
    """A port P with P..P+size free now (the scripts check again before they start)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + size < 65536 and all(port_free(port + offset) for offset in range(1, size + 1)):
            return port
    pytest.skip(f"no {size + 1} consecutive free ports on 127.0.0.1")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def run_script(name: str, timeout: int) -> str:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH (needed for the deployment's keys)")
    venv = Path(sys.executable).parent.parent  # the scripts run flwr from this environment
    env = {**os.environ, "VENV": str(venv), "FLOWER_PORT": str(free_port_range(3)),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen([str(REPO / "scripts" / name)], env=env, cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as script:
        try:
            stdout, stderr = script.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            script.terminate()  # its trap stops every process it started (not so on SIGKILL)
            stdout, stderr = script.communicate(timeout=60)
            pytest.fail(f"{name} ran past {timeout} s:\n{stdout}\n{stderr}")
    assert script.returncode == 0, f"{name} failed:\n{stdout}\n{stderr}"
    return stdout


@pytest.mark.slow
def test_deploy_smoke_refuses_a_stranger_reports_a_failed_run_and_equals_the_in_process_run():
    output = run_script("flower_deploy_smoke.sh", timeout=900)
    assert "unregistered SuperNode refused" in output
    assert "is reported as failed: flwr ls has it finished:failed" in output
    assert "ok: 2 rounds, failed rounds none, x_ag equal" in output


@pytest.mark.slow
def test_drill_survives_a_killed_supernode_and_a_killed_superlink():
    output = run_script("flower_drill.sh", timeout=1800)
    killed, resumed = [line for line in output.splitlines() if line.startswith("ok:")]
    assert "failed rounds [1" in killed, killed  # node1 was killed in round 1
    assert "x_ag equal" in killed and "x_ag equal" in resumed
    assert "the last ServerApp ran 2 rounds" in resumed, resumed  # 1 of 3 done before the kill
