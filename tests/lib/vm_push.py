"""Pushing a changed profile to the virtual rack's booted jumphost, as an
operator does: `build.py push PROFILE --to HOST --ssh-config FILE`, over the
router's forwarded ssh port, logged in as the admin with the test's key."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.lib.machine import REPO

AGENT_SECONDS = 900          # the agent's run after an install, under TCG


def ssh_config(rack, path: Path, host: str = "rack-jumphost") -> tuple[str, Path]:
    """An ssh configuration naming the jumphost host: (host, the file)."""
    path.write_text(f"Host {host}\n  HostName 127.0.0.1\n  Port {rack.ssh_port}\n  User rackboot\n"
                    f"  IdentityFile {rack.key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
                    "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    return host, path


def profiles_with(source: Path, target: Path, extra: list[dict]) -> Path:
    """A copy of source's profiles directory (example.yaml and what it
    names) with the extra Pis after the profile's own; the profile's path."""
    shutil.copytree(source.parent, target)
    document = yaml.safe_load((target / source.name).read_text())
    document["pis"] = [*document["pis"], *extra]
    (target / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return target / source.name


def push(profile: Path, host: str, config: Path, revision: int, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "build.py"), "push", str(profile), "--to", host,
                           "--ssh-config", str(config), "--revision", str(revision), *options],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=AGENT_SECONDS)


def agent_done(rack, revision: int) -> dict:
    """The jumphost agent's status once its run with revision has ended."""
    deadline = time.monotonic() + AGENT_SECONDS
    while True:
        status = json.loads(rack.ssh("sudo", "cat", "/var/lib/rackboot/status.json") or "{}")
        steps = status.get("steps", {})
        ended = steps.get("report", {}).get("outcome") == "done"
        if ended and (status.get("bundle") or {}).get("revision") == revision:
            return status
        assert time.monotonic() < deadline, f"the jumphost's agent did not finish revision {revision}: {status}"
        time.sleep(5)


def node_gone(rack, name: str) -> dict:
    """The cluster once Node name is gone from it."""
    deadline = time.monotonic() + AGENT_SECONDS
    while True:
        cluster = rack.cluster()
        if name not in cluster["nodes"]:
            return cluster
        assert time.monotonic() < deadline, f"Node {name} is still there: {cluster['nodes'].keys()}"
        time.sleep(5)
