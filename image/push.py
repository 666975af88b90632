"""build.py push PROFILE --to HOST [--dry-run] [--rollback]: a rack's new
bundle onto its running jumphost, over ssh as the admin user (image/ssh.py).

1. the bundle is built here (image/bundle_build.py) and packed as one tar
   file (firstboot/bundle_archive.py: the same bundle gives the same bytes);
2. scp copies it into ~rackboot/.rackboot-push/ on the jumphost, and with
   --k3s-bundle DIR that k3s bundle's files (verified here first, as for an
   image) into .rackboot-push/VERSION/;
3. `sudo -n python3 -m firstboot bundle install [--k3s-bundle DIR] FILE`
   there unpacks it into a root-owned staging directory, verifies it, refuses
   another rack's or an older revision than the jumphost uses, or a k3s it
   has not got or may not move to (one minor at a time), moves the k3s
   bundle and then the rack's into place atomically and runs the agent again
   (firstboot/bundle_install.py), which upgrades k3s keeping its datastore.
   With --dry-run it prints the files and objects that would change and
   changes nothing;
4. what was copied is removed, whatever happened.

--rollback sends nothing: `firstboot bundle rollback` on the jumphost
withdraws its newest pushed revision, so the one before is used again.

Every remote command is a fixed argv of rackboot's, the values in it (the
rack, a file name made of the rack and revision) checked names; ssh.argv
quotes it with shlex.join for the remote shell.
"""

import logging
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firstboot import bundle_archive, commands
from firstboot.errors import BadInput
from firstboot.layout import MACHINE
from firstboot.profile import RackProfile
from image import bundle_build, ssh

log = logging.getLogger("rackboot")

STAGING = ".rackboot-push"          # in the admin user's home on the jumphost
AGENT = ["sudo", "-n", "env", f"PYTHONPATH={MACHINE.agent_dir}", "python3", "-m", "firstboot", "bundle"]
HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                  r"[A-Za-z0-9])?)*")
REMOTE_TIMEOUT = 600                # the agent's run after an install may wait for k3s


@dataclass(frozen=True)
class Request:
    host: str
    ssh_config: Path | None
    dry_run: bool
    rollback: bool
    revision: tuple[int, str | None] | None     # (revision, commit); None for a rollback
    k3s_bundle: object = None                   # image.k3s_bundle.Bundle, verified, to send too


def check_host(host: str) -> None:
    if not HOST.fullmatch(host):
        raise BadInput(f"--to {host!r}: not a host name or IPv4 address",
                       hint="the jumphost's ssh name, as in the profile's jumphost.ssh_host")


def _scp(target: ssh.Target, local: Path | list[Path], remote_name: str) -> None:
    words = ["scp", *(["-F", str(target.config)] if target.config else [])]
    for option in ssh.OPTIONS:
        words += ["-o", option]
    sources = [str(p) for p in (local if isinstance(local, list) else [local])]
    words += ["-q", "--", *sources, f"{target.user}@{target.host}:{remote_name}"]
    result = commands.run(words, capture=True, check=False, env=ssh.environment(), timeout=REMOTE_TIMEOUT)
    if result.returncode != 0:
        raise ssh.SshFailed(target, result.returncode, result.stderr)


def _show(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def on_jumphost(target: ssh.Target, command: list[str]) -> str:
    """A firstboot bundle command's output; its refusal (exit 2: the
    jumphost's error and hint) is bad input here too, anything else SshFailed."""
    result = commands.run(ssh.argv(target, "-T", "-o", "ClearAllForwardings=yes", command=command), capture=True,
                          check=False, env=ssh.environment(), timeout=REMOTE_TIMEOUT)
    if result.returncode == 2:
        said = {kind: [line.removeprefix(kind).strip() for line in result.stderr.splitlines()
                       if line.startswith(kind)] for kind in ("error:", "hint:")}
        if said["error:"]:
            raise BadInput("\n".join(said["error:"]), hint="\n".join(said["hint:"]) or None)
    if result.returncode != 0:
        raise ssh.SshFailed(target, result.returncode, result.stderr, command)
    return result.stdout


def rollback(profile: RackProfile, request: Request) -> int:
    target = ssh.Target(request.host, config=request.ssh_config)
    command = [*AGENT, "rollback", "--rack", profile.rack, *(["--dry-run"] if request.dry_run else [])]
    _show(on_jumphost(target, command))
    return 0


def push(profile: RackProfile, request: Request) -> int:
    if request.rollback:
        return rollback(profile, request)
    number, commit = request.revision
    target = ssh.Target(request.host, config=request.ssh_config)
    with tempfile.TemporaryDirectory(prefix="rackboot-push-") as work:
        made = bundle_build.write(profile, Path(work) / profile.rack, number, commit)
        log.info("bundle %s", made.describe())
        archive = Path(work) / f"{profile.rack}-r{number}.tar"
        archive.write_bytes(bundle_archive.pack(made.directory))
        remote_file = f"{STAGING}/{archive.name}"
        ssh.remote(target, ["mkdir", "-p", "-m", "0700", "--", STAGING])
        try:
            _scp(target, archive, remote_file)
            command = [*AGENT, "install", *(["--dry-run"] if request.dry_run else []),
                       *_send_k3s_bundle(target, request.k3s_bundle), "--", remote_file]
            _show(on_jumphost(target, command))
        finally:
            ssh.remote(target, ["rm", "-rf", "--", remote_file,
                                *([f"{STAGING}/{request.k3s_bundle.version}"] if request.k3s_bundle else [])])
    return 0


def _send_k3s_bundle(target: ssh.Target, k3s: object) -> list[str]:
    """k3s's files (both arches: the jumphost's and its Pis') into
    STAGING/VERSION on the jumphost; the install command's option naming it."""
    if k3s is None:
        return []
    remote_dir = f"{STAGING}/{k3s.version}"          # a checked k3s version: no shell word in it
    log.info("sending k3s %s (%d files)", k3s.version, len(k3s.names()))
    ssh.remote(target, ["mkdir", "-p", "-m", "0700", "--", remote_dir])
    _scp(target, [k3s.path / name for name in k3s.names()], f"{remote_dir}/")
    return ["--k3s-bundle", remote_dir]
