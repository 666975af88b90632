"""Report: how this machine's first boot went, for people and for tests.

The report goes to the status file, to the journal, and to a virtio-serial
port named org.rackboot.status when the machine has one (QEMU boots in CI and
on a developer's desk), so a boot can be judged from a result the guest
produces rather than from scraping its console.
"""

import json
from pathlib import Path

from firstboot.commands import CommandFailed, run

STATUS_PORT = Path("/dev/virtio-ports/org.rackboot.status")
CLOUD_INIT_RESULT = Path("/run/cloud-init/result.json")
CLOUD_INIT_STATUS = Path("/run/cloud-init/status.json")
CLOUD_INIT_FINISHED = Path("/var/lib/cloud/instance/boot-finished")


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def cloud_init_finished_uptime() -> float | None:
    """When cloud-init finished this boot, in seconds since the kernel started
    (boot-finished starts with the uptime it was written at)."""
    try:
        return float(CLOUD_INIT_FINISHED.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _output(argv: list[str], timeout: float = 900) -> tuple[int, str]:
    """Exit status and output of a command the report only describes: a
    failure is part of the report (-1 and why, for one not run or timed
    out), never the report's end."""
    try:
        done = run(argv, capture=True, check=False, timeout=timeout)
    except CommandFailed as err:
        return -1, str(err)
    return done.returncode, done.stdout.strip()


def cloud_init() -> dict:
    """Wait for cloud-init to finish, then return its outcome and errors."""
    if not CLOUD_INIT_RESULT.parent.exists():
        # cloud-init did not run this boot (disabled, or not installed): waiting would never end.
        return {"status": "not run", "exit_status": None, "errors": []}
    status, text = _output(["cloud-init", "status", "--wait"])
    errors: list[str] = []
    for path in (CLOUD_INIT_RESULT, CLOUD_INIT_STATUS):
        try:
            data = json.loads(path.read_text())["v1"]
        except (OSError, ValueError, KeyError):
            continue
        errors += data.get("errors", [])
        for stage in data.values():
            if isinstance(stage, dict):
                errors += stage.get("errors", [])
    return {"status": text.split(":")[-1].strip() if text else "unknown",
            "exit_status": status, "errors": sorted(set(map(str, errors)))}


def failed_units() -> list[str]:
    _, text = _output(["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"])
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def ssh_host_keys() -> dict[str, str]:
    keys = {}
    for pub in sorted(Path("/etc/ssh").glob("ssh_host_*_key.pub")):
        status, text = _output(["ssh-keygen", "-l", "-f", str(pub)])
        if status == 0:
            keys[pub.name] = text.split()[1]
    return keys


def send(report: dict, port: Path = STATUS_PORT) -> bool:
    """Write the report as one JSON line to the status port, if there is one."""
    if not port.exists():
        return False
    with open(port, "w") as out:
        out.write(json.dumps(report, sort_keys=True) + "\n")
    return True
