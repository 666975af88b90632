"""The agent's step runner, in process, for identify and token: a failure is
recorded where `status` explains it, the report still goes out, and a later
run after the cause is fixed goes on (here to the k3s step, which finds no
bundle: the whole run is in test_k3s_agent.py). The token comes through the
real Secret Manager client from the double in tests/doubles/."""

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firstboot import agent, identify, report
from firstboot.layout import Layout
from firstboot.profile import load_profiles
from image import render
from tests.doubles.secret_manager import SecretManagerDouble

REPO = Path(__file__).resolve().parent.parent
TOKEN = b"twin-rack-token-do-not-log-me"
TWINS = REPO / "tests/profiles/twins"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A pretend machine: its state directory, racks (rendered, with their
    models, as the image carries them), network, no seed, and a Secret
    Manager holding the twins' token. Its root is tmp_path: an image without
    k3s bundles (none under usr/lib/rackboot/k3s)."""
    layout = Layout(tmp_path).moving(state_dir=tmp_path / "state", profiles=TWINS)
    render.render(load_profiles([TWINS]), layout.racks)
    monkeypatch.setattr(identify, "rack_from_seed", lambda: None)
    monkeypatch.setattr(identify.NetworkView, "read", staticmethod(lambda: identify.NetworkView(
        frozenset({"52:54:00:00:00:01"}), frozenset({ipaddress.IPv4Address("10.1.0.8")}),
        ipaddress.IPv4Address("10.1.0.1"), None)))
    monkeypatch.setattr(report, "cloud_init", lambda: {"status": "done", "exit_status": 0, "errors": []})
    monkeypatch.setattr(report, "failed_units", lambda: [])
    monkeypatch.setattr(report, "ssh_host_keys", lambda: {})
    sent = []
    monkeypatch.setattr(report, "send", lambda summary: sent.append(summary) or True)
    sm = SecretManagerDouble()
    sm.add("rackboot-test", "k3s-token", TOKEN)
    monkeypatch.setenv("SECRET_MANAGER_EMULATOR_HOST", sm.start())
    yield tmp_path, sent, sm, layout
    sm.stop()


def status_text(tmp_path) -> str:
    env = dict(os.environ, RACKBOOT_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "firstboot", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_ambiguous_rack_fails_identify_and_status_explains(machine):
    tmp_path, sent, sm, layout = machine
    assert agent.run("jumphost", layout) == 1
    saved = json.loads((tmp_path / "state/status.json").read_text())
    assert saved["failed"] == "identify" and saved["steps"]["identify"]["outcome"] == "failed"
    assert "token" not in saved["steps"] and sm.calls == []
    [summary] = sent   # the report still goes out
    assert summary["steps"] == {"identify": "failed", "serve": "skipped", "token": "skipped", "k3s": "skipped",
                                "ready": "skipped", "apply": "skipped"}
    assert "racks twin-a, twin-b all match" in summary["errors"]["identify"]
    text = status_text(tmp_path)
    assert "identify   failed" in text and "token      not reached" in text
    assert "racks twin-a, twin-b all match this jumphost's network" in text
    assert "hint: boot with rackboot.rack=NAME" in text
    assert "failed at step identify; logs: journalctl -u rackboot-firstboot" in text


def test_run_after_fix_fetches_token_and_reports(machine, monkeypatch, capsys):
    tmp_path, sent, sm, layout = machine
    assert agent.run("jumphost", layout) == 1
    monkeypatch.setattr(identify, "rack_from_seed", lambda: "twin-b")   # the seed is attached
    assert agent.run("jumphost", layout) == 1
    saved = json.loads((tmp_path / "state/status.json").read_text())
    assert saved["failed"] == "k3s"
    assert saved["steps"]["k3s"]["error"].startswith("k3s v1.31.4+k3s1: not on this machine")
    assert saved["steps"]["identify"]["result"] == {"rack": "twin-b", "role": "jumphost",
                                                    "node": "jh-b", "source": "seed"}
    assert saved["steps"]["token"]["result"]["changed"] is True
    assert (tmp_path / "etc/rancher/k3s/token").read_bytes() == TOKEN + b"\n"
    assert sm.calls == ["projects/rackboot-test/secrets/k3s-token/versions/latest"]
    assert sent[-1]["steps"] == {"identify": "done", "serve": "done", "token": "done", "k3s": "failed",
                                 "ready": "skipped", "apply": "skipped"}
    assert "token      done" in status_text(tmp_path)
    # The value is nowhere but the token file.
    everything = (tmp_path / "state/status.json").read_text() + json.dumps(sent) + str(capsys.readouterr())
    assert TOKEN.decode() not in everything


def test_missing_secret_fails_token_step_naming_the_reference(machine, monkeypatch):
    tmp_path, sent, sm, layout = machine
    sm.secrets.clear()
    monkeypatch.setattr(identify, "rack_from_seed", lambda: "twin-a")
    assert agent.run("jumphost", layout) == 1
    assert sent[-1]["steps"] == {"identify": "done", "serve": "done", "token": "failed", "k3s": "skipped",
                                 "ready": "skipped", "apply": "skipped"}
    assert sent[-1]["errors"]["token"].startswith("sm://rackboot-test/k3s-token: NotFound")
    text = status_text(tmp_path)
    assert "failed at step token" in text and "secretAccessor" in text


def test_status_before_any_run(tmp_path):
    assert "no first-boot run recorded yet" in status_text(tmp_path)
