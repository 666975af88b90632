"""The systemctl stand-in (tests/doubles/bin/systemctl) is as strict as
systemd on what the agent relies on: a unit is used as loaded until
daemon-reload (or enable, which reloads); a service gets only the environment
its unit declares; Restart=, RestartSec=, RestartPreventExitStatus= and the
start limit hold; failed units are listed. The README's "restarts 30 s
later" and "does not retry bad input" are tested here with the real rendered
rackboot-firstboot.service, its ExecStart replaced by a script that exits as
the agent would."""

import json
import sys
import time
from pathlib import Path

import pytest

from firstboot.profile import load_profiles
from image import render
from tests.lib.machine import REPO, Machine

FIRSTBOOT_UNIT = Path("jumphost/rootfs/etc/systemd/system/rackboot-firstboot.service")
# RestartSec=30s becomes 0.6 s; every rule is otherwise systemd's.
TIME_SCALE = 0.02

# Exits with the next of its statuses (the last one again once used up);
# sends READY=1 first when that status is 0, as the agent does once the rack
# is identified. Each run is a line of RUNS: when it started, its environment.
SCRIPT = """#!/usr/bin/python3
import json, os, socket, sys, time
from pathlib import Path
runs = Path({runs!r})
done = len(runs.read_text().splitlines()) if runs.exists() else 0
statuses = {statuses!r}
status = statuses[min(done, len(statuses) - 1)]
with runs.open("a") as out:
    out.write(json.dumps({{"started": time.time(), "env": dict(os.environ), "args": sys.argv[1:]}}) + "\\n")
if status == 0:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.connect("\\0" + os.environ["NOTIFY_SOCKET"][1:])
    notify.send(b"READY=1")
sys.exit(status)
"""


@pytest.fixture
def machine(tmp_path):
    m = Machine(tmp_path / "machine", "console=ttyS0")
    yield m
    m.destroy()


def systemctl(machine: Machine, *args: str, **env):
    return machine.run(["systemctl", *args], timeout=60, **env)


def show(machine: Machine, unit: str, prop: str) -> str:
    return systemctl(machine, "show", "-P", prop, unit).stdout.strip()


def script(tmp_path: Path, statuses: list[int]) -> tuple[Path, Path]:
    """An executable that exits with statuses in turn, and where it logs its runs."""
    path, runs = tmp_path / "service-script", tmp_path / "runs"
    path.write_text(SCRIPT.format(runs=str(runs), statuses=statuses))
    path.chmod(0o755)
    return path, runs


def runs_of(runs: Path) -> list[dict]:
    return [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []


def wait_until(condition, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def install(machine: Machine, unit: str, text: str) -> None:
    machine.path(f"/etc/systemd/system/{unit}").write_text(text)


def rendered_firstboot_unit(exec_start: Path) -> str:
    """The image's rackboot-firstboot.service as image/render.py renders it,
    with only its ExecStart replaced."""
    [profile] = [p for p in load_profiles([REPO / "tests/profiles/loopback"]) if p.rack == "loop"]
    text = render.render_rack(profile)[FIRSTBOOT_UNIT]
    text = text.decode() if isinstance(text, bytes) else text
    lines = text.splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert lines[index] == "ExecStart=/usr/bin/python3 -m firstboot run --role=jumphost"
    lines[index] = f"ExecStart={exec_start} run --role=jumphost"
    # What the README promises rests on these lines of the real unit.
    for line in ("Type=notify", "Restart=on-failure", "RestartSec=30s", "RestartPreventExitStatus=2",
                 "RemainAfterExit=yes"):
        assert line in lines, line
    return "\n".join(lines) + "\n"


def test_a_changed_unit_runs_its_old_definition_until_daemon_reload(machine, tmp_path):
    exe, runs = script(tmp_path, [0])
    install(machine, "demo.service", f"[Service]\nType=notify\nEnvironment=VERSION=old\nExecStart={exe}\n")
    assert systemctl(machine, "is-active", "demo.service").stdout == "inactive\n"   # boot: units loaded
    install(machine, "demo.service", f"[Service]\nType=notify\nEnvironment=VERSION=new\nExecStart={exe}\n")
    assert show(machine, "demo.service", "NeedDaemonReload") == "yes"
    started = systemctl(machine, "start", "demo.service")
    assert started.returncode == 0, started.stderr
    assert ("Warning: The unit file, source configuration file or drop-ins of demo.service changed on disk. "
            "Run 'systemctl daemon-reload' to reload units.") in started.stderr
    assert runs_of(runs)[-1]["env"]["VERSION"] == "old"
    assert systemctl(machine, "daemon-reload").returncode == 0
    assert show(machine, "demo.service", "NeedDaemonReload") == "no"
    restarted = systemctl(machine, "restart", "demo.service")
    assert restarted.returncode == 0 and "Warning" not in restarted.stderr
    assert runs_of(runs)[-1]["env"]["VERSION"] == "new"
    assert (machine.systemctl_state / "reloads").read_text() == "1"


def test_a_drop_in_is_part_of_the_unit(machine, tmp_path):
    exe, runs = script(tmp_path, [0])
    install(machine, "demo.service", f"[Service]\nType=notify\nExecStart={exe}\n")
    systemctl(machine, "daemon-reload")
    dropins = machine.path("/etc/systemd/system/demo.service.d")
    dropins.mkdir()
    (dropins / "override.conf").write_text("[Service]\nEnvironment=FROM=drop-in\n")
    assert show(machine, "demo.service", "NeedDaemonReload") == "yes"
    systemctl(machine, "daemon-reload")
    assert systemctl(machine, "start", "demo.service").returncode == 0
    assert runs_of(runs)[-1]["env"]["FROM"] == "drop-in"


def test_a_unit_new_since_boot_is_loaded_when_named(machine, tmp_path):
    """As systemd 252: a unit it has not loaded is loaded from disk when a
    command names it; only a changed, loaded one waits for daemon-reload."""
    exe, runs = script(tmp_path, [0])
    systemctl(machine, "daemon-reload")
    install(machine, "late.service", f"[Service]\nType=notify\nExecStart={exe}\n")
    assert systemctl(machine, "start", "late.service").returncode == 0
    assert len(runs_of(runs)) == 1


def test_enable_reloads_unless_told_not_to(machine, tmp_path):
    """systemctl(1): enable reloads the manager's configuration, as
    daemon-reload does, unless --no-reload."""
    exe, _ = script(tmp_path, [0])
    install(machine, "demo.service", f"[Service]\nExecStart={exe}\n\n[Install]\nWantedBy=multi-user.target\n")
    systemctl(machine, "is-active", "demo.service")
    install(machine, "demo.service", f"[Service]\nExecStart={exe} v2\n\n[Install]\nWantedBy=multi-user.target\n")
    assert systemctl(machine, "enable", "--no-reload", "demo.service").returncode == 0
    assert show(machine, "demo.service", "NeedDaemonReload") == "yes"
    assert systemctl(machine, "enable", "demo.service").returncode == 0
    assert show(machine, "demo.service", "NeedDaemonReload") == "no"
    assert (machine.systemctl_state / "reloads").read_text() == "1"
    assert systemctl(machine, "is-enabled", "demo.service").stdout == "enabled\n"


def test_a_power_cut_forgets_what_was_loaded(machine, tmp_path):
    exe, runs = script(tmp_path, [0])
    install(machine, "demo.service", f"[Service]\nType=notify\nEnvironment=VERSION=old\nExecStart={exe}\n")
    systemctl(machine, "daemon-reload")
    install(machine, "demo.service", f"[Service]\nType=notify\nEnvironment=VERSION=new\nExecStart={exe}\n")
    machine.power_off()          # the next boot loads the units afresh
    assert show(machine, "demo.service", "NeedDaemonReload") == "no"
    assert not (machine.systemctl_state / "reloads").exists()
    systemctl(machine, "start", "demo.service")
    assert runs_of(runs)[-1]["env"]["VERSION"] == "new"


def test_a_service_gets_only_the_environment_its_unit_declares(machine, tmp_path):
    exe, runs = script(tmp_path, [0])
    (machine.path("/etc/rackboot") / "demo.env").write_text("# comment\nFROM_FILE=\"quoted value\"\n")
    install(machine, "demo.service",
            f"[Service]\nType=notify\nEnvironment=PLAIN=1 \"SPACED=a b\"\n"
            f"EnvironmentFile=/etc/rackboot/demo.env\nEnvironmentFile=-/etc/rackboot/%N.missing\n"
            f"UnsetEnvironment=PLAIN\nExecStart={exe}\n")
    systemctl(machine, "set-environment", "FROM_MANAGER=yes")
    started = systemctl(machine, "start", "demo.service", CALLER_SECRET="must-not-leak")
    assert started.returncode == 0, started.stderr
    env = runs_of(runs)[-1]["env"]
    assert "CALLER_SECRET" not in env and "PYTHONPATH" not in env and "SYSTEMCTL_STANDIN_STATE" not in env
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["SPACED"] == "a b" and env["FROM_FILE"] == "quoted value" and env["FROM_MANAGER"] == "yes"
    assert "PLAIN" not in env
    assert len(env["INVOCATION_ID"]) == 32 and env["NOTIFY_SOCKET"].startswith("@")
    assert set(env) - {"LANG", "PWD"} == {"PATH", "SPACED", "FROM_FILE", "FROM_MANAGER", "INVOCATION_ID",
                                          "NOTIFY_SOCKET", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID"} | \
        {k for k in env if k.startswith("LC_")}


def test_a_missing_environment_file_fails_the_start(machine, tmp_path):
    exe, runs = script(tmp_path, [0])
    install(machine, "demo.service", f"[Service]\nType=notify\nEnvironmentFile=/etc/rackboot/absent\n"
                                     f"ExecStart={exe}\n")
    started = systemctl(machine, "start", "demo.service")
    assert started.returncode == 1 and "Job for demo.service failed" in started.stderr
    assert runs_of(runs) == []
    assert systemctl(machine, "is-failed", "demo.service").returncode == 0


def test_firstboot_unit_restarts_30s_after_a_failure(machine, tmp_path):
    """README: a failed run (exit status 1) restarts 30 s later; with time
    scaled by 0.02, 0.6 s later. A blocking start waits through the restart,
    as systemd's start job does, and the unit stays active once the agent
    has exited 0 (RemainAfterExit=yes)."""
    exe, runs = script(tmp_path, [1, 0])
    (machine.path("/etc/rackboot") / "agent.env").write_text("SECRET_MANAGER_EMULATOR_HOST=127.0.0.1:1\n")
    install(machine, "rackboot-firstboot.service", rendered_firstboot_unit(exe))
    started = systemctl(machine, "start", "rackboot-firstboot.service", SYSTEMCTL_STANDIN_TIME_SCALE=TIME_SCALE)
    assert started.returncode == 0, started.stderr
    first, second = runs_of(runs)
    assert 30 * TIME_SCALE <= second["started"] - first["started"] < 30 * TIME_SCALE + 2
    assert show(machine, "rackboot-firstboot.service", "NRestarts") == "1"
    assert systemctl(machine, "is-active", "rackboot-firstboot.service").stdout == "active\n"
    assert systemctl(machine, "list-units", "--failed", "--plain", "--no-legend").stdout == ""
    # The unit's own environment, nothing else: PYTHONPATH and the seed's agent.env.
    env = second["env"]
    assert env["PYTHONPATH"] == "/usr/lib/rackboot" and env["SECRET_MANAGER_EMULATOR_HOST"] == "127.0.0.1:1"
    assert "SYSTEMCTL_STANDIN_TIME_SCALE" not in env and second["args"] == ["run", "--role=jumphost"]


def test_firstboot_unit_does_not_retry_bad_input(machine, tmp_path):
    """README: exit status 2 (bad input) is not retried
    (RestartPreventExitStatus=2): the unit is failed and listed as failed, as
    the agent's report step reads it, until reset-failed."""
    exe, runs = script(tmp_path, [2, 0])
    install(machine, "rackboot-firstboot.service", rendered_firstboot_unit(exe))
    started = systemctl(machine, "start", "rackboot-firstboot.service", SYSTEMCTL_STANDIN_TIME_SCALE=TIME_SCALE)
    assert started.returncode == 1
    assert "Job for rackboot-firstboot.service failed because the control process exited with error code" \
        in started.stderr
    time.sleep(3 * 30 * TIME_SCALE)          # three restart delays: nothing comes
    assert len(runs_of(runs)) == 1
    assert show(machine, "rackboot-firstboot.service", "NRestarts") == "0"
    assert show(machine, "rackboot-firstboot.service", "Result") == "exit-code"
    assert systemctl(machine, "is-active", "rackboot-firstboot.service").stdout == "failed\n"
    assert systemctl(machine, "is-failed", "--quiet", "rackboot-firstboot.service").returncode == 0
    listed = systemctl(machine, "list-units", "--failed", "--plain", "--no-legend", "--no-pager")
    assert listed.stdout.split() == ["rackboot-firstboot.service", "loaded", "failed", "failed",
                                     *"rackboot first-boot agent: identify, fetch token, k3s, apply".split()]
    legend = systemctl(machine, "list-units", "--failed").stdout
    assert "● rackboot-firstboot.service" in legend and "1 loaded units listed." in legend
    report = machine.run([sys.executable, "-c", "from firstboot import report; print(report.failed_units())"])
    assert report.stdout.strip() == "['rackboot-firstboot.service']", report.stderr
    assert systemctl(machine, "reset-failed", "rackboot-firstboot.service").returncode == 0
    assert systemctl(machine, "list-units", "--failed", "--plain", "--no-legend").stdout == ""
    assert systemctl(machine, "is-failed", "rackboot-firstboot.service").returncode == 1


def test_a_service_that_keeps_failing_hits_the_start_limit(machine, tmp_path):
    """Restart=on-failure with the default RestartSec (100 ms) and start limit
    (5 starts in 10 s): the fifth failure in a row is the last."""
    exe, runs = script(tmp_path, [1])
    install(machine, "flaky.service", f"[Service]\nType=notify\nExecStart={exe}\nRestart=on-failure\n")
    started = systemctl(machine, "start", "flaky.service")
    assert started.returncode == 1
    assert "start of the service was attempted too often" in started.stderr
    assert len(runs_of(runs)) == 5
    assert show(machine, "flaky.service", "Result") == "start-limit-hit"
    assert systemctl(machine, "is-failed", "flaky.service").returncode == 0


def test_restart_always_brings_back_a_killed_service_but_not_a_stopped_one(machine, tmp_path):
    """As k3s's unit (Restart=always, RestartSec=5s, Type=notify)."""
    exe = tmp_path / "daemon"
    exe.write_text("#!/bin/sh\necho started\nexec sleep 1000\n")
    exe.chmod(0o755)
    install(machine, "daemon.service", f"[Service]\nExecStart={exe}\nRestart=always\nRestartSec=5s\n")
    assert systemctl(machine, "start", "daemon.service", SYSTEMCTL_STANDIN_TIME_SCALE=0.1).returncode == 0
    first = int(show(machine, "daemon.service", "MainPID"))
    machine.run(["kill", "-9", str(first)])
    wait_until(lambda: show(machine, "daemon.service", "MainPID") not in ("0", str(first)))
    assert show(machine, "daemon.service", "NRestarts") == "1"
    assert systemctl(machine, "stop", "daemon.service").returncode == 0
    time.sleep(1)                             # twice the (scaled) RestartSec
    assert systemctl(machine, "is-active", "daemon.service").stdout == "inactive\n"
    assert machine.journal("daemon.service").count("started") == 2


def test_notify_service_that_exits_without_ready_fails(machine, tmp_path):
    exe = tmp_path / "quiet"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    install(machine, "quiet.service", f"[Service]\nType=notify\nExecStart={exe}\n")
    started = systemctl(machine, "start", "quiet.service")
    assert started.returncode == 1 and "did not take the steps required" in started.stderr
    assert show(machine, "quiet.service", "Result") == "protocol"


def test_unknown_unit(machine):
    started = systemctl(machine, "start", "absent.service")
    assert started.returncode == 5
    assert started.stderr.strip() == "Failed to start absent.service: Unit absent.service not found."
