"""``finish_run`` (scripts/flower_loopback.sh, behind ``make flower-deploy-smoke``,
``flower-drill`` and ``flower-round-times``) judges a run by its status on the SuperLink, since
``flwr run --stream`` exits 0 even when the ServerApp raised. Checked without a deployment,
against a stand-in ``flwr`` that starts run 7 and reports the status it is given."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_FLWR = """#!/usr/bin/env bash
case "$1" in
    run) echo "Successfully started run 7"; exit "$FAKE_RUN_EXIT" ;;
    ls) [ "$3" = 7 ] && printf '{"success": true, "runs": [{"run-id": "7", "status": "%s"}]}' \\
            "$FAKE_STATUS" ;;
    *) exit 2 ;;
esac
"""


def finish_run(tmp_path: Path, status: str, expected: str = "",
               run_exit: int = 0) -> subprocess.CompletedProcess:
    """Source flower_loopback.sh with the stand-in flwr, start a run, and finish it."""
    if shutil.which("setsid") is None:
        pytest.skip("setsid not on PATH")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        (venv / "bin" / "python").symlink_to(sys.executable)
    flwr = venv / "bin" / "flwr"
    flwr.write_text(FAKE_FLWR)
    flwr.chmod(0o755)
    script = ('source scripts/flower_loopback.sh; run_app "$work/run.log" . "overrides=\'\'"; '
              f'finish_run "$work/run.log" {expected}; echo finished')
    env = {**os.environ, "VENV": str(venv), "TMPDIR": str(tmp_path), "FAKE_STATUS": status,
           "FAKE_RUN_EXIT": str(run_exit), "FLOWER_RUN_TIMEOUT": "30"}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_completed_run_passes(tmp_path):
    result = finish_run(tmp_path, "finished:completed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "finished"


@pytest.mark.parametrize("status", ["finished:failed", "finished:stopped", "running"])
def test_a_run_that_did_not_complete_fails_the_script(tmp_path, status):
    result = finish_run(tmp_path, status)
    assert result.returncode == 1
    assert "finished" not in result.stdout
    assert f"flwr run 7 ended {status}, not finished:completed" in result.stderr


def test_an_expected_failure_passes(tmp_path):
    result = finish_run(tmp_path, "finished:failed", expected="finished:failed")
    assert result.returncode == 0, result.stderr


def test_flwr_run_failing_fails_the_script_whatever_the_status(tmp_path):
    result = finish_run(tmp_path, "finished:completed", run_exit=1)
    assert result.returncode == 1
    assert "flwr run failed" in result.stderr
