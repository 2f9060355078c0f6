import subprocess
import sys

from .conftest import ROOT


def labkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labkit", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_doctor_lists_tools_and_stacks_with_versions():
    done = labkit("doctor")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.strip() and not line.startswith("to install")}
    assert lines["stack:linux"].startswith("ok")
    assert lines["python:scapy"].startswith("ok")
    for tool in ("runsc", "slirp4netns", "pasta", "libpcap"):
        line = lines[tool]
        assert line.startswith("ok") or "install: apt-get install -y" in line, line


def test_clean_refuses_a_bad_run_id():
    done = labkit("clean", "--run", "NOT-HEX")
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "labkit: bad run id 'NOT-HEX': allowed are the hex run ids in lab resource names (labkit-RUN-PID-...)"
    )


def test_unknown_command_is_a_usage_error():
    done = labkit("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr
