"""Faults on a pretend jumphost: a power cut during each step and the next
boot's run; a secret store that is away for a while; a slow API server; an
API server that never answers in time. After each, `status` says where the
run is or what failed, and a later run finishes."""

import os
import signal
import sys
import time

import pytest

from firstboot.agent import STEPS as AGENT_STEPS
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack

TOKEN = b"loop-rack-token-fault-5d21"


@pytest.fixture
def secret_manager():
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    sm.start()
    yield sm
    sm.stop()


@pytest.fixture
def new_rack(tmp_path, secret_manager):
    racks = []

    def make(name="rack"):
        rack = Rack(tmp_path / name, REPO / "tests/profiles/loopback", "loop", secret_manager.address)
        racks.append(rack)
        return rack
    yield make
    for rack in racks:
        rack.destroy()


def assert_rack_ready(rack, done):
    assert done.returncode == 0, done.stderr + rack.status_text()
    assert {s["outcome"] for s in rack.status()["steps"].values()} == {"done"}
    assert rack.get("apps/v1", "Deployment", "metadata-server", "loop-apps").status.readyReplicas == 2
    assert rack.get("v1", "Node", "jumphost-loop").metadata.labels["rackboot.dev/rack"] == "loop"


def running_step(rack):
    try:
        status = rack.status()
    except (OSError, ValueError):
        return None
    return next((name for name, s in status.get("steps", {}).items() if s["outcome"] == "running"), None)


# Steps that take long enough to be caught in the middle are slowed by the
# doubles, the way a real machine's would be: the secret store answers
# UNAVAILABLE twice (token), the API answers slowly (ready, apply).
SLOW = {"token": {"fail_next": 2}, "ready": {"K3S_STANDIN_API_DELAY": "0.5"},
        "apply": {"K3S_STANDIN_API_DELAY": "0.5"}}


STEPS = [s.name for s in AGENT_STEPS]


@pytest.mark.parametrize("step", [s for s in STEPS if s != "report"])
def test_power_cut_during_each_step_then_next_boot_finishes(new_rack, secret_manager, step):
    slow = SLOW.get(step, {})
    for attempt in range(8):   # identify and k3s are quick: try until the cut lands inside them
        rack = new_rack(f"attempt{attempt}")
        if "fail_next" in slow:
            secret_manager.fail_next(slow["fail_next"])
        # k3s runs as a service: it gets the delay from systemd, not from the agent.
        rack.machine.set_service_environment(**{k: v for k, v in slow.items() if k != "fail_next"})
        agent = rack.machine.popen([sys.executable, "-m", "firstboot", "run", "--role=jumphost"], **rack.env)
        seen = None
        while agent.poll() is None and seen != step:
            seen = running_step(rack)
            if seen in STEPS[STEPS.index(step) + 1:]:
                break                       # too late for this attempt
            time.sleep(0.0002)
        if seen == step and agent.poll() is None:
            # Freeze the agent where it is: powering off takes longer than a
            # quick step (identify reads the rack models in milliseconds).
            os.kill(agent.pid, signal.SIGSTOP)   # nsenter -m execs the agent: same pid
        rack.machine.power_off()            # the agent and k3s die at once (and the delay with them)
        agent.communicate()
        # What `status` shows after a cut inside the step: the step it was on. A quick
        # step (identify) may finish between being seen and the cut: then try again.
        if seen == step and f"{step:10} running" in rack.status_text():
            break
        rack.destroy()
    else:
        pytest.fail(f"could not cut the power during {step} in 8 attempts")
    secret_manager.recover()
    done = rack.agent()                     # the next boot
    assert_rack_ready(rack, done)
    assert "running" not in rack.status_text()


def test_secret_store_away_for_a_while(new_rack, secret_manager):
    rack = new_rack()
    secret_manager.fail_next(3)             # about 7 s of UNAVAILABLE, within the agent's retries
    done = rack.agent()
    assert_rack_ready(rack, done)
    assert done.stderr.count("sm://rackboot-loop/k3s-node-token: ServiceUnavailable; retrying") == 3
    assert TOKEN.decode() not in done.stderr + done.stdout


def test_slow_api_server_still_reaches_ready(new_rack):
    rack = new_rack()
    rack.machine.set_service_environment(K3S_STANDIN_API_DELAY="0.3")
    done = rack.agent()
    assert_rack_ready(rack, done)


def test_api_that_never_answers_in_time_fails_ready_and_status_explains(new_rack):
    rack = new_rack()
    rack.machine.set_service_environment(K3S_STANDIN_API_DELAY="15")
    done = rack.agent(RACKBOOT_READY_TIMEOUT="3")
    assert done.returncode == 1
    text = rack.status_text()
    assert "ready      failed" in text and "apply      not reached" in text
    assert "k3s is not ready after 3 s: the API is not reachable" in text
    assert "hint: journalctl -u k3s says why" in text
    # The API comes back to normal speed: the next run finishes.
    rack.machine.run(["systemctl", "stop", "k3s.service"])
    rack.machine.unset_service_environment("K3S_STANDIN_API_DELAY")
    assert_rack_ready(rack, rack.agent())
