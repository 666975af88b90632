"""The test tiers (tests/lib/tiers.py), through a real pytest run of a small
generated test file with this suite's conftest: every test lands in one tier,
a tier that cannot run here is skipped saying why, and under CI=true any skip
fails the run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lib import tiers

REPO = Path(__file__).resolve().parent.parent

SKIPS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no frobnicator on this host")
"""

NEEDS_A_MACHINE = """
import pytest

def test_runs():
    pass

@pytest.mark.machine
def test_needs_a_machine():
    pass
"""


def run_pytest(tmp_path: Path, source: str, *args: str, ci: bool = False, path: str | None = None):
    """pytest on source as test_generated.py, with tests/conftest.py as its plugin."""
    work = tmp_path / "generated"
    work.mkdir(exist_ok=True)
    (work / "test_generated.py").write_text(source)
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    if ci:
        env["CI"] = "true"
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-c", str(REPO / "pytest.ini"),
                           "--rootdir", str(work), "--confcutdir", str(work), "-p", "no:cacheprovider",
                           str(work / "test_generated.py"), *args],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_under_ci_a_skip_fails_the_run_and_says_why(tmp_path):
    result = run_pytest(tmp_path, SKIPS, ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "CI=true: 1 skipped, and under CI a skip is a failure" in result.stdout
    assert "1 skipped: no frobnicator on this host" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_without_ci_a_skip_is_reported_and_passes(tmp_path):
    result = run_pytest(tmp_path, SKIPS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no frobnicator on this host" in result.stdout      # -ra's summary
    assert "CI=true" not in result.stdout


@pytest.mark.parametrize("ci, status", [(False, 0), (True, 1)])
def test_a_tier_that_cannot_run_is_skipped_with_its_probes_reason(tmp_path, monkeypatch, ci, status):
    """Here the machine tier's tools are off the PATH (or this is not root)."""
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))
    reason = tiers.PROBES["machine"]()
    assert reason
    result = run_pytest(tmp_path, NEEDS_A_MACHINE, ci=ci, path=str(nothing))
    assert result.returncode == status, result.stdout + result.stderr
    assert f"tiers: pure 1, machine 1 (skipped: {reason})" in result.stdout
    assert f"machine tier cannot run here: {reason}" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout


def test_every_test_gets_one_tier_by_marker_or_by_what_it_uses(tmp_path):
    source = """
import pytest
from tests.lib.machine import Machine

@pytest.fixture
def box(tmp_path):
    return Machine(tmp_path, "console=ttyS0")

def test_plain():
    pass

def test_with_a_pretend_machine(box):
    pass

def test_with_the_image(example_image):
    pass

@pytest.mark.vm
def test_marked_vm():
    pass
"""
    listed = {}
    for tier in tiers.TIERS:
        result = run_pytest(tmp_path, source, "--collect-only", "-q", "-m", tier)
        assert result.returncode == 0, result.stdout + result.stderr
        listed[tier] = sorted(line.split("::")[1] for line in result.stdout.splitlines() if "::" in line)
    assert listed == {"pure": ["test_plain"], "machine": ["test_with_a_pretend_machine"],
                      "vm": ["test_marked_vm", "test_with_the_image"]}
    result = run_pytest(tmp_path, source, "--collect-only", "-q", "-m", "not vm")
    assert "tiers: pure 1, machine 1" in result.stdout


@pytest.mark.parametrize("test, message", [
    ("@pytest.mark.pure\n@pytest.mark.vm\ndef test_x():\n    pass\n",
     "test_generated.py::test_x: marked pure and vm: a test is in one tier"),
    ("@pytest.mark.pure\ndef test_x(example_image):\n    pass\n",
     "test_generated.py::test_x: marked pure but it uses the vm tier (uses example_image)"),
    ("@pytest.fixture\ndef box(tmp_path):\n    return Machine(tmp_path, '')\n\n"
     "@pytest.mark.pure\ndef test_x(box):\n    pass\n",
     "test_generated.py::test_x: marked pure but it uses the machine tier (builds a pretend machine in fixture box)"),
])
def test_a_test_without_one_tier_fails_collection(tmp_path, test, message):
    result = run_pytest(tmp_path, f"import pytest\nfrom tests.lib.machine import Machine\n\n{test}", "--collect-only")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert message in result.stderr


def test_a_pure_test_that_starts_a_pretend_machine_fails(tmp_path):
    """A machine built out of sight of the tier rules (in a helper) is still caught."""
    source = """
from tests.lib.machine import Machine

def start(path):
    return Machine(path, "console=ttyS0")

def test_sneaky(tmp_path):
    start(tmp_path)
"""
    result = run_pytest(tmp_path, source)
    assert result.returncode == 1
    assert "a pure-tier test started a pretend machine: mark it @pytest.mark.machine" in result.stdout
