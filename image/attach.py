"""build.py attach RACK [-- CMD...]: this shell, or CMD, gets the rack's
cluster, as the original team's attach.sh gave it (skia-buildbot kube/attach.sh):

1. k3s's kubeconfig is read from the jumphost over ssh as its admin user
   (`sudo -n cat /etc/rancher/k3s/k3s.yaml`: the seed gives that user
   password-less sudo) and written, for the rack (image/kubeconfig.py), to
   $XDG_CONFIG_HOME/rackboot/attach/RACK.PID/kubeconfig (mode 0600, in a
   0700 directory of this attach's own: two shells never share one);
2. 127.0.0.1:k3s.attach_port is forwarded to the jumphost's 127.0.0.1:k3s.api_port
   (image/forward.py) and waited for until the rack's API answers through it;
3. CMD, or $SHELL, runs with KUBECONFIG (and RACKBOOT_ATTACHED=RACK) set, in
   the operator's own environment and terminal: it is the operator's command,
   not one of rackboot's (so not firstboot.commands.run's);
4. when it ends, the forward goes and the directory is removed, whatever
   happened; attach exits with CMD's status (128+N if a signal N ended it).

Two racks attach at once on their own ports (check refuses two racks with
one). A second attach to the same rack finds its port in use and says so.
An attach that was killed leaves a directory whose process is gone: the next
attach removes it.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from firstboot.errors import BadInput, RackbootError
from firstboot.layout import MACHINE
from firstboot.profile import RackProfile, load_profiles
from image import atomic, clusters, kubeconfig, ssh
from image.forward import Forward

log = logging.getLogger("rackboot")

KUBECONFIG_NAME = "kubeconfig"
FETCH = ["sudo", "-n", "cat", "--", str(MACHINE.kubeconfig)]


def find_rack(where: Path, rack: str) -> RackProfile:
    """The checked profile of rack among the profiles at where (a file or a directory)."""
    profiles = load_profiles([where])
    found = [p for p in profiles if p.rack == rack]
    if not found:
        known = ", ".join(sorted(p.rack for p in profiles)) or "none"
        raise BadInput(f"no rack {rack!r} in {where} (racks there: {known})",
                       hint="--profiles names another profile or directory")
    clusters.require_attach_ports(found)
    return found[0]


def config_home() -> Path:
    configured = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(configured) if configured.startswith("/") else Path.home() / ".config"   # XDG: absolute only


def attach_dirs() -> Path:
    return config_home() / "rackboot" / "attach"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: Path) -> None:
    """Directories of attaches that were killed (RACK.PID whose PID is gone)."""
    for entry in parent.iterdir() if parent.is_dir() else ():
        pid = entry.name.rpartition(".")[2]
        if entry.is_dir() and not entry.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an attach that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def own_directory(rack: str) -> Path:
    parent = attach_dirs()
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove_stale(parent)
    directory = parent / f"{rack}.{os.getpid()}"
    directory.mkdir(mode=0o700)          # never an existing one: this attach's alone
    return directory


def check_ssh_config(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise BadInput(f"{path}: no such file (--ssh-config)")


def fetch_kubeconfig(target: ssh.Target, profile: RackProfile) -> tuple[bytes, str]:
    try:
        text = ssh.remote(target, FETCH)
    except ssh.SshFailed as err:
        if f"{MACHINE.kubeconfig}: No such file" in err.stderr:
            raise RackbootError(f"{target.host} has no {MACHINE.kubeconfig}: k3s has not started there yet",
                                hint="the agent's k3s step has not run, or failed: on the jumphost, "
                                     "sudo PYTHONPATH=/usr/lib/rackboot python3 -m firstboot status") from None
        raise
    try:
        return kubeconfig.for_rack(text, profile.rack, profile.k3s.attach_port)
    except kubeconfig.NotK3sKubeconfig as err:
        raise RackbootError(f"{MACHINE.kubeconfig} on {target.host} is not k3s's kubeconfig: {err}") from None


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_attached(command: list[str], rack: str, config: Path) -> int:
    """command (or the operator's shell) with the rack's KUBECONFIG; its exit status."""
    argv = command or [os.environ.get("SHELL") or "/bin/sh"]
    env = {**os.environ, "KUBECONFIG": str(config), "RACKBOOT_ATTACHED": rack}
    if not command:
        print(f"attached to rack {rack} (KUBECONFIG={config}); exit this shell to detach", file=sys.stderr)
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as err:
        raise BadInput(f"cannot run {argv[0]}: {err.strerror}") from None
    # The terminal's Ctrl-C and Ctrl-\ are the command's to handle; a hang-up
    # or a kill of attach is passed on to it, and attach still cleans up.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGQUIT)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, lambda number, _: child.send_signal(number))
    try:
        return _exit_status(child.wait())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def attach(profile: RackProfile, command: list[str], ssh_config: Path | None = None) -> int:
    target = ssh.Target.of(profile, ssh_config)
    port = profile.k3s.attach_port
    if not ssh.port_is_free(port):
        raise RackbootError(f"port {port} (k3s.attach_port of rack {profile.rack}) is in use on this machine",
                            hint=f"is rack {profile.rack} attached in another shell already? "
                                 f"(`ss -ltnp sport = :{port}` shows who listens)")
    config_text, ca = fetch_kubeconfig(target, profile)
    directory = own_directory(profile.rack)
    forward = None
    try:
        config = directory / KUBECONFIG_NAME
        atomic.write_file(config, config_text, 0o600)
        forward = Forward(target, port, profile.k3s.api_port)
        forward.wait_ready(ca)
        forward.watch(profile.rack)
        return run_attached(command, profile.rack, config)
    finally:
        if forward is not None:
            forward.close()
        shutil.rmtree(directory, ignore_errors=True)
