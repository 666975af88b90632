"""The agent's step runner: a failure is recorded where `status` explains it,
and a later run after the cause is fixed finishes."""

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot import agent, identify, report, state

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A pretend machine: its state directory, racks, network and no seed."""
    monkeypatch.setattr(state, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(agent, "PROFILES", REPO / "tests/profiles/twins")
    monkeypatch.setattr(identify, "rack_from_seed", lambda: None)
    monkeypatch.setattr(identify.NetworkView, "read", staticmethod(lambda: identify.NetworkView(
        frozenset({"52:54:00:00:00:01"}), frozenset({ipaddress.IPv4Address("10.1.0.8")}),
        ipaddress.IPv4Address("10.1.0.1"), None)))
    monkeypatch.setattr(report, "cloud_init", lambda: {"status": "done", "exit_status": 0, "errors": []})
    monkeypatch.setattr(report, "failed_units", lambda: [])
    monkeypatch.setattr(report, "ssh_host_keys", lambda: {})
    sent = []
    monkeypatch.setattr(report, "send", lambda summary: sent.append(summary) or True)
    return tmp_path, sent


def status_text(tmp_path) -> str:
    env = dict(os.environ, RACKBOOT_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "firstboot", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_ambiguous_rack_fails_identify_and_status_explains(machine):
    tmp_path, sent = machine
    assert agent.run("jumphost") == 1
    saved = json.loads((tmp_path / "state/status.json").read_text())
    assert saved["failed"] == "identify" and saved["steps"]["identify"]["outcome"] == "failed"
    assert "report" not in saved["steps"] and sent == []
    text = status_text(tmp_path)
    assert "identify   failed" in text
    assert "racks twin-a, twin-b all match this jumphost's network" in text
    assert "hint: boot with rackboot.rack=NAME" in text
    assert "failed at step identify; logs: journalctl -u rackboot-firstboot" in text


def test_run_after_fix_finishes_and_reports(machine, monkeypatch):
    tmp_path, sent = machine
    assert agent.run("jumphost") == 1
    monkeypatch.setattr(identify, "rack_from_seed", lambda: "twin-b")   # the seed is attached
    assert agent.run("jumphost") == 0
    saved = json.loads((tmp_path / "state/status.json").read_text())
    assert saved["failed"] is None
    assert saved["steps"]["identify"]["result"] == {"rack": "twin-b", "role": "jumphost",
                                                    "node": "jh-b", "source": "seed"}
    [summary] = sent
    assert summary["identity"]["rack"] == "twin-b" and summary["steps"] == {"identify": "done"}
    assert "identify   done" in status_text(tmp_path)


def test_status_before_any_run(tmp_path):
    assert "no first-boot run recorded yet" in status_text(tmp_path)
