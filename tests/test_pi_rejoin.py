"""A Pi re-joins a swapped jumphost by itself, without a reboot
(firstboot/pi_watch.py, run by rackboot-pi-watch.timer on the Pis).

Machine: a Pi joined; the jumphost dies and a fresh one flashed from the
same image boots at its address, with the rack's CA from the secret store
(k3s.ca) and without. The Pi is not restarted: its k3s agent runs on, and,
as real k3s and kubelets do (the stand-in is as strict: see the watcher's
docstring), its kubelet fails against the new server for good, a changed CA
at TLS, the same CA with a Node the new datastore does not have. Only the
watcher's restart of k3s-agent makes it a Ready node of the new cluster.
The watcher does nothing while the new server is not up, waits for the same
finding on consecutive checks, and leaves a joined Pi alone.
Pure: the holdoff after a restart; the units that run the watcher."""

import configparser
import os
import re
import subprocess
import sys
import time

import pytest

from firstboot import pi_watch
from firstboot.layout import Layout
from image import cluster_ca, pi_watch_units
from tests.doubles import k3s_standin
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack
from tests.test_k3s_ca import _bring_up, _swap_jumphost
from tests.test_pi_join import eventually, join, nodes, ready_condition

TOKEN = b"loop-rack-token-rejoin-7d2"
PI = "loop-pi-01"
AGENT = "k3s-agent.service"
CA_REF = "sm://rackboot-loop/k3s-cluster-ca"
FAST = {"RACKBOOT_PI_WATCH_CHECKS": 2, "RACKBOOT_PI_WATCH_HOLDOFF": 600}


@pytest.fixture
def rack(tmp_path, request):
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    if request.param == "k3s.ca":
        sm.add("rackboot-loop", "k3s-cluster-ca", cluster_ca.make("loop", rsa_bits=2048).archive)
        rack.edit_profile(lambda p: p["k3s"].update(ca=CA_REF))
    try:
        _bring_up(rack)
        yield rack
    finally:
        rack.destroy()
        sm.stop()


def watch(pi) -> str:
    """One run of the watcher on the Pi, as its timer runs it; its log."""
    done = pi.run([sys.executable, "-m", "firstboot", "pi-watch"], **FAST)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def status_errors(pi) -> int:
    return pi.journal(AGENT).count("Error updating node status")


def joined_pi(rack):
    pi = rack.add_pi("pi1", "0b0b0b01")
    pi.set_service_environment(K3S_STANDIN_NODE_STATUS_FREQUENCY=0.5)
    join(rack, pi)
    assert eventually(lambda: ready_condition(rack, PI).status == "True")
    assert watch(pi) == ""                        # a joined Pi is left alone
    return pi


def present(rack) -> bool:
    return PI in nodes(rack)


@pytest.mark.machine
@pytest.mark.parametrize("rack", ["k3s.ca", "no CA"], indirect=True)
def test_a_pi_rejoins_a_swapped_jumphost_without_a_reboot(rack):
    with_ca = rack.profile().k3s.ca is not None
    pi = joined_pi(rack)
    agent_pid = rack.k3s_pid(pi, AGENT)
    boot = rack.get("v1", "Node", PI).status.nodeInfo.bootID       # the Pi's own, as its kubelet reports it
    assert boot == pi.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
    pinned = pi.path("/var/lib/rancher/k3s/agent/server-ca.crt").read_bytes()
    _swap_jumphost(rack, "jumphost-2")
    # The new jumphost's k3s is not up yet: nothing to compare with, nothing done.
    for _ in range(3):
        assert watch(pi) == ""
    _bring_up(rack)
    assert (rack.machine.path("/var/lib/rancher/k3s/server/tls/server-ca.crt").read_bytes() == pinned) == with_ca

    # Without the watcher: the running agent's kubelet fails, and goes on failing.
    errors = status_errors(pi)
    assert eventually(lambda: status_errors(pi) >= errors + 3)
    failure = "404" if with_ca else "CERTIFICATE_VERIFY_FAILED"
    assert failure in pi.journal(AGENT).split("Error updating node status")[-1]
    assert not present(rack)
    assert rack.k3s_pid(pi, AGENT) == agent_pid

    # The watcher: the same finding twice in a row, then one restart.
    first = watch(pi)
    assert first == "" and rack.k3s_pid(pi, AGENT) == agent_pid
    second = watch(pi)
    why = "is gone from the cluster" if with_ca else "serves another CA than the agent pinned"
    assert re.fullmatch(rf"pi-watch: .*{why} \(2 checks\); restarting {AGENT} to join it again\n", second), second
    assert eventually(lambda: present(rack) and ready_condition(rack, PI).status == "True")
    assert rack.k3s_pid(pi, AGENT) != agent_pid
    assert rack.get("v1", "Node", PI).status.nodeInfo.bootID == boot        # not rebooted
    assert pi.path("/var/lib/rancher/k3s/agent/server-ca.crt").read_bytes() == \
        rack.machine.path("/var/lib/rancher/k3s/server/tls/server-ca.crt").read_bytes()
    # Joined again: left alone, and no token in anything it said.
    assert watch(pi) == "" and watch(pi) == ""
    assert k3s_standin.BARE_TOKEN_WARNING in pi.journal(AGENT)     # the restarted agent trusted /cacerts
    assert TOKEN.decode() not in first + second


def test_a_restarted_agent_gets_its_holdoff_before_another_restart(tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    agent = pi_watch.Agent("https://192.0.2.1:6443", PI, tmp_path)
    restarts = []
    monkeypatch.setattr(pi_watch, "agent_of", lambda layout: agent)
    monkeypatch.setattr(pi_watch.system, "is_active", lambda unit: True)
    monkeypatch.setattr(pi_watch.system, "systemctl", lambda *args, **kw: restarts.append(args))
    monkeypatch.setattr(pi_watch, "finding", lambda agent: f"node {PI} is gone from the cluster")
    monkeypatch.setenv("RACKBOOT_PI_WATCH_CHECKS", "2")
    monkeypatch.setenv("RACKBOOT_PI_WATCH_HOLDOFF", "3600")
    assert [pi_watch.check(layout) for _ in range(6)] == ["seen", "restarted", "seen", "holdoff", "holdoff",
                                                          "holdoff"]
    assert restarts == [("restart", "--no-block", AGENT)]
    # The holdoff is over: the finding that stayed gets another restart.
    monkeypatch.setattr(pi_watch, "boot_clock", lambda: time.clock_gettime(time.CLOCK_BOOTTIME) + 3601)
    assert pi_watch.check(layout) == "restarted"
    # The agent joined: the count starts again.
    monkeypatch.setattr(pi_watch, "finding", lambda agent: None)
    assert pi_watch.check(layout) == "nothing"


def test_the_pis_root_runs_the_watcher_every_20_seconds(tmp_path):
    pi_watch_units.install(tmp_path)
    units = Layout(tmp_path).units
    enabled = os.readlink(units / "timers.target.wants" / pi_watch_units.TIMER)     # a path in the Pi's root
    assert enabled == f"/etc/systemd/system/{pi_watch_units.TIMER}"
    service = configparser.ConfigParser(strict=True)
    service.read_string((units / pi_watch_units.SERVICE).read_text())
    assert service["Service"]["Type"] == "oneshot"
    argv = service["Service"]["ExecStart"].split()
    assert argv[-3:] == ["-m", "firstboot", "pi-watch"]
    timer = configparser.ConfigParser(strict=True)
    timer.read_string((units / pi_watch_units.TIMER).read_text())
    assert (timer["Timer"]["OnBootSec"], timer["Timer"]["OnUnitInactiveSec"]) == ("2min", "20s")
    done = subprocess.run([sys.executable, "-m", "firstboot", "pi-watch", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert done.returncode == 0 and "pi-watch" in done.stdout
