"""ssh to a rack's jumphost as its admin user, for the operator's commands
(attach; push can use the same pieces): one remote command with its output,
or a local port forwarded to the jumphost.

The options are explicit, whatever the operator's ssh configuration says:

- BatchMode=yes: never a prompt. The forward runs in the background, and a
  password or passphrase prompt there would hang; keys come from ssh-agent
  or an IdentityFile without a passphrase.
- Host keys are checked as the operator's ssh checks them (nothing is
  weakened): an unknown or changed jumphost key fails, and the hint says so.
- ControlPath=none: no multiplexing, so the forward is this ssh's own and
  goes when it goes (a shared master would keep it after we stop).
- ForwardAgent=no, ForwardX11=no: a jumphost gets no way back in.
- ConnectTimeout and ServerAlive*: an unreachable or dead jumphost fails in
  seconds, not minutes.
- the user is the image's admin user, `rackboot` (the seed's user-data),
  whatever User the configuration gives that host.

The host is jumphost.ssh_host, a checked host name or address (it cannot
start with '-'), given after `--`. `--ssh-config FILE` (ssh -F) is the one
way to change the rest, as the original team's attach.sh used a team ssh.cfg.
The remote command is fixed text of rackboot's (shlex-quoted words), never
input. ssh's output is never shown in an error unless it is its stderr: the
stdout of a remote command may be a secret (a kubeconfig).
"""

import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from firstboot import commands
from firstboot.errors import RackbootError
from firstboot.profile import RackProfile

ADMIN_USER = "rackboot"       # templates/jumphost/seed/user-data.j2
CONNECT_TIMEOUT = 15          # seconds for the TCP connection and the ssh handshake
OPTIONS = ("BatchMode=yes", f"ConnectTimeout={CONNECT_TIMEOUT}", "ServerAliveInterval=15", "ServerAliveCountMax=3",
           "ControlMaster=no", "ControlPath=none", "ForwardAgent=no", "ForwardX11=no")
PASSED = ("SSH_AUTH_SOCK",)   # beside commands.run's whitelist: the operator's ssh-agent


@dataclass(frozen=True)
class Target:
    host: str                       # jumphost.ssh_host
    user: str = ADMIN_USER
    config: Path | None = None      # ssh -F FILE; None: the operator's own ~/.ssh/config

    @classmethod
    def of(cls, profile: RackProfile, config: Path | None = None) -> "Target":
        return cls(profile.jumphost.ssh_host, config=config)

    @property
    def shown(self) -> str:
        return f"{self.user}@{self.host}"


def environment() -> dict[str, str]:
    return {name: os.environ[name] for name in PASSED if name in os.environ}


def argv(target: Target, *options: str, command: list[str] | None = None) -> list[str]:
    """ssh's argv: our options, then options, then -- HOST [COMMAND]."""
    words = ["ssh", *(["-F", str(target.config)] if target.config else [])]
    for option in OPTIONS:
        words += ["-o", option]
    words += ["-l", target.user, *options, "--", target.host]
    return words + ([shlex.join(command)] if command else [])


def remote(target: Target, command: list[str], timeout: float = 120, input: str | None = None,
           stdout_in_errors: bool = False) -> str:
    """command's standard output on the jumphost (input, if given, is its
    standard input); SshFailed on any failure, with the command's stdout too
    if stdout_in_errors (a command that reports errors there, never a secret)."""
    result = commands.run(argv(target, "-T", "-o", "ClearAllForwardings=yes", command=command), capture=True,
                          check=False, env=environment(), timeout=timeout, input=input)
    if result.returncode != 0:
        shown = result.stderr + (result.stdout if stdout_in_errors else "")
        raise SshFailed(target, result.returncode, shown, command)
    return result.stdout


class SshFailed(RackbootError):
    """ssh or the remote command failed: what, and what to do, from ssh's stderr."""

    def __init__(self, target: Target, status: int, stderr: str, command: list[str] | None = None):
        self.stderr, self.status = stderr, status
        message, hint = explain(target, status, stderr, command)
        super().__init__(message, hint)


# (what ssh says, what it means, what to do): OpenSSH 9's messages.
_KNOWN = (
    ("Could not resolve hostname", "cannot resolve {host}",
     "is jumphost.ssh_host right? It must be a name your DNS or ssh configuration (a Host entry) knows"),
    ("Connection refused", "{host} refuses ssh connections", "is the jumphost up and its ssh running?"),
    ("Connection timed out", "{host} does not answer", "is the jumphost up and reachable from here?"),
    ("No route to host", "{host} is unreachable", "is the jumphost up and reachable from here?"),
    ("Network is unreachable", "{host} is unreachable", "is this machine's network up?"),
    ("Host key verification failed", "the host key of {host} is unknown or has changed",
     "check the jumphost's key and accept it once with `ssh {user}@{host}`; a re-flashed or swapped jumphost has "
     "a new key: remove the old one with `ssh-keygen -R {host}` first"),
    ("Permission denied", "{user}@{host} refused the login",
     "your key must be in the profile's jumphost.ssh_authorized_keys and loaded in ssh-agent (ssh-add) or named by "
     "IdentityFile without a passphrase (rackboot runs ssh with BatchMode=yes)"),
    ("Address already in use", "a port here is in use", "another program (or another attach) listens on it"),
    ("cannot listen to port", "a port here is in use", "another program (or another attach) listens on it"),
    ("a password is required", "{user} on {host} cannot use sudo without a password",
     "the image's admin user has password-less sudo: is this a rackboot jumphost?"),
)


def explain(target: Target, status: int, stderr: str, command: list[str] | None) -> tuple[str, str | None]:
    tail = "\n".join(line for line in stderr.strip().splitlines()[-commands.TAIL_LINES:])
    for needle, what, hint in _KNOWN:
        if needle in stderr:
            words = {"host": target.host, "user": target.user}
            return f"ssh {target.shown}: {what.format(**words)}:\n{tail}", hint.format(**words)
    if status == 255 or not command:      # ssh's own failure
        return f"ssh {target.shown} failed (exit status {status})" + (f":\n{tail}" if tail else ""), None
    return (f"{shlex.join(command)} on {target.shown} failed (exit status {status})" + (f":\n{tail}" if tail else ""),
            None)


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be listened on now (ssh -L would bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as ssh's listener
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
