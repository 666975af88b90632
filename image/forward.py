"""A local port forwarded to a jumphost (`ssh -N -L`), held for as long as
the operator's command runs, and taken down after it.

The forward listens on 127.0.0.1 only. ssh runs in a session of its own, so
the terminal's Ctrl-C and Ctrl-Z reach the operator's shell, not the forward,
and it is asked to die with rackboot (PR_SET_PDEATHSIG) so that even a killed
attach leaves no forward behind. It is ready when a TLS handshake through it
reaches a server whose certificate the rack's CA signed for 127.0.0.1: the
forward accepts, and the API behind it is the rack's.

It is the one command rackboot leaves running in the background, so it is
started here rather than by firstboot.commands.run (which waits), under the
same rules: argv list, stdin from /dev/null, the whitelisted environment
(with the operator's SSH_AUTH_SOCK), `+ argv` logged at debug.
"""

import ctypes
import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from firstboot import commands
from firstboot.errors import RackbootError
from image import ssh

log = logging.getLogger("rackboot")

READY_TIMEOUT = 60.0      # seconds from starting ssh until the API answers through it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Forward:
    """ssh -N -L 127.0.0.1:local_port:127.0.0.1:remote_port to target."""

    def __init__(self, target: ssh.Target, local_port: int, remote_port: int):
        self.target, self.local_port, self.remote_port = target, local_port, remote_port
        self.closing = False
        self._stderr = tempfile.TemporaryFile("w+", errors="replace")
        argv = ssh.argv(target, "-N", "-n", "-o", "ExitOnForwardFailure=yes",
                        "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}")
        log.debug("+ %s &", shlex.join(argv))
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=self._stderr, env=commands.environment(ssh.environment()),
                                            start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as err:
            self._stderr.close()
            raise RackbootError(f"cannot run ssh: {err.strerror}", hint="apt-get install openssh-client") from None

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def failed(self) -> ssh.SshFailed:
        return ssh.SshFailed(self.target, self.process.returncode, self.stderr())

    def wait_ready(self, ca_pem: str, timeout: float = READY_TIMEOUT) -> None:
        """Until the API answers TLS through the forward; the error says why not."""
        context = ssl.create_default_context(cadata=ca_pem)
        deadline = time.monotonic() + timeout
        why = "nothing answered"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.failed()
            try:
                with socket.create_connection(("127.0.0.1", self.local_port), timeout=5) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1"):
                    return
            except ssl.SSLCertVerificationError as err:
                raise RackbootError(f"the API at 127.0.0.1:{self.remote_port} on {self.target.host} is not the "
                                    f"one of the kubeconfig's cluster: {err.verify_message}",
                                    hint="is jumphost.ssh_host this rack's jumphost?") from None
            except (OSError, ssl.SSLError) as err:
                why = str(err) or type(err).__name__
            time.sleep(0.1)
        raise RackbootError(f"the forward to {self.target.shown} is up, but nothing answers TLS at "
                            f"127.0.0.1:{self.remote_port} there ({why})",
                            hint="is k3s running on the jumphost? (journalctl -u k3s; "
                                 "python3 -m firstboot status)")

    def watch(self, rack: str) -> None:
        """Say so at once if the forward goes down while the operator works."""
        def wait() -> None:
            self.process.wait()
            if not self.closing:
                sys.stderr.write(f"\nrackboot attach: the forward to rack {rack} went down "
                                 f"(exit status {self.process.returncode}); kubectl here will fail. "
                                 f"Exit and attach again.\n{self.stderr().strip()}\n")
        threading.Thread(target=wait, daemon=True).start()

    def close(self) -> None:
        self.closing = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._stderr.close()
