"""The Pis' watcher units (firstboot/pi_watch.py): a oneshot service and the
timer that runs it every 20 s from two minutes after boot, so that a Pi
whose jumphost was swapped joins the new one without a reboot. Installed
into the Pis' shared root (and an SD card's) beside rackboot-pi-access."""

from pathlib import Path

from firstboot.commands import run
from firstboot.layout import MACHINE, Layout

SERVICE = "rackboot-pi-watch.service"
TIMER = "rackboot-pi-watch.timer"

SERVICE_TEXT = f"""\
# rackboot Pi (image/pi_watch_units.py): restarts k3s-agent when the
# jumphost's k3s serves another CA than the agent pinned, or this Pi's Node
# is gone from it (a swapped jumphost), and runs the first-boot agent again
# when the jumphost's k3s runs another version (an upgrade in place);
# firstboot/pi_watch.py says why.
[Unit]
Description=rackboot: re-join a swapped jumphost, follow its k3s upgrades
After=network-online.target rackboot-firstboot.service

[Service]
Type=oneshot
Environment=PYTHONPATH={MACHINE.agent_dir}
ExecStart=/usr/bin/python3 -m firstboot pi-watch
# It says something only when it acts: on the console too, where an operator looks.
StandardOutput=journal+console
StandardError=journal+console
# While the jumphost is away, its NFS root is too (a hard mount): a run then
# waits for it, and must not be failed for that.
TimeoutStartSec=30min
"""

# OnUnitInactiveSec: the next run 20 s after the last one ended, never two at once.
TIMER_TEXT = """\
# rackboot Pi (image/pi_watch_units.py): see rackboot-pi-watch.service.
[Unit]
Description=rackboot: check every 20 s that this Pi's k3s agent has its jumphost

[Timer]
OnBootSec=2min
OnUnitInactiveSec=20s
AccuracySec=5s

[Install]
WantedBy=timers.target
"""


def install(tree: Path) -> None:
    """The service and its timer (enabled) in tree."""
    layout = Layout(tree)
    for name, text in ((SERVICE, SERVICE_TEXT), (TIMER, TIMER_TEXT)):
        path = layout.unit(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    run(["systemctl", f"--root={tree}", "enable", TIMER], capture=True)
