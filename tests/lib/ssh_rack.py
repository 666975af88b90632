"""A pretend rack's jumphost (tests/lib/rack.py) reached over real ssh, with
its agent run as the image runs it: build.py push's whole path, end to end.

tests/lib/ssh_jumphost.py's sshd, admin user and sudo, but inside the
pretend machine's namespaces (its mounts, network, cgroup) at its address on
the rack's bridge, so that what an ssh session starts (sudo, `firstboot
bundle install`, systemctl) acts on that machine. What the image gives the
jumphost for its agent's unit is put there too (as_the_image_runs_the_agent):
rackboot-firstboot.service from the rendered tree in /etc/systemd/system,
/etc/rackboot/agent.env with the rack's environment (the seed's --agent-env
on a real one), the vendored libraries beside the agent, and systemctl as
the stand-in (tests/doubles/bin/systemctl: a Type=notify start returns at
READY=1, after identify, and the run goes on in the background, as with
systemd). A push's `systemctl restart rackboot-firstboot.service` then runs
the real agent, every step, against the machine's k3s.
Machine tier: root, sshd, sudo (tests/lib/machine.py's needs too).
"""

import subprocess
import sysconfig
from pathlib import Path

from firstboot.layout import MACHINE
from tests.lib import ssh_jumphost
from tests.lib.machine import DOUBLES_BIN, Machine
from tests.lib.rack import Rack

AGENT_UNIT = "rackboot-firstboot.service"


class SshRackJumphost(ssh_jumphost.SshJumphost):
    """sshd in front of machine; name: how the operator's ssh configuration calls it."""

    def __init__(self, tmp: Path, name: str, machine: Machine):
        self.machine = machine
        super().__init__(tmp, name)

    def _network(self) -> None:        # the machine's own: its address on the rack's bridge
        self.address, self.host_address = str(self.machine.address), str(self.machine.network.router)

    def _namespace(self) -> None:
        binds = {"/etc/passwd": "etc/passwd", "/etc/group": "etc/group", "/etc/shadow": "etc/shadow",
                 "/etc/sudoers.d": "etc/sudoers.d", "/run/sshd": "run/sshd"}
        for target, source in binds.items():
            if not Path(target).exists():
                Path(target).mkdir(parents=True)       # an empty mount point on the host
            self.enter("mount", "--bind", str(self.root / source), target)

    def enter(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return ssh_jumphost._run(*self.machine.command(list(argv)), check=check)

    def spawn(self, argv: list[str], log: str, **env) -> subprocess.Popen:
        out = open(self.root / log, "w")
        process = subprocess.Popen(self.machine.command(argv), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, env=self.machine.env(**env))
        self.processes.append(process)
        return process

    def destroy(self) -> None:
        """sshd; its sessions and whatever they started go with the machine (Rack.destroy)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        subprocess.run(["rm", "-rf", "--", str(self.home_root)], check=False)


def as_the_image_runs_the_agent(rack: Rack) -> None:
    """The jumphost's agent unit, its environment file and libraries as the
    image has them, and systemctl as the stand-in at the path root's and
    services' PATH find it (sudo's secure_path, systemd's fixed PATH)."""
    machine = rack.machine
    rendered = machine.path(f"/usr/share/rackboot/racks/{rack.rack}") / "jumphost/rootfs" / \
        str(MACHINE.unit(AGENT_UNIT)).lstrip("/")
    machine.path(str(MACHINE.unit(AGENT_UNIT))).write_bytes(rendered.read_bytes())
    machine.path(str(MACHINE.agent_env)).write_text("".join(f"{key}={value}\n" for key, value in rack.env.items()))
    vendored = machine.path(str(MACHINE.site_packages))
    if not vendored.is_symlink():
        vendored.symlink_to(sysconfig.get_paths()["purelib"])
    done = machine.run(["mount", "--bind", str(DOUBLES_BIN / "systemctl"), "/usr/bin/systemctl"])
    if done.returncode != 0:
        raise RuntimeError(f"cannot put the systemctl stand-in in place: {done.stderr}")
