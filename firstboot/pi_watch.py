"""A Pi re-joins a swapped jumphost by itself, without a reboot
(rackboot-pi-watch.timer runs `python -m firstboot pi-watch` every 20 s).

What a running k3s agent does when the server behind its address is swapped
(a fresh jumphost: new datastore; the same CA with the profile's k3s.ca, a
new one without), as k3s and the kubelet are written:

  - The agent fetches the server's CA once, at start: pkg/agent/config
    config.go get() -> clientaccess.ParseAndValidateToken (GET /cacerts),
    then getHostFile writes agent/server-ca.crt and client-ca.crt; the
    kubelet's kubeconfig and the tunnel (pkg/agent/tunnel tunnel.go Setup)
    are built from those files at start. A changed server CA fails their TLS
    until the agent restarts.
  - rackboot's agent token is bare (no K10<hash>::, firstboot/join.py), so
    on restart clientaccess token.go validateCAHash only warns and the agent
    trusts whatever /cacerts now serves, writing server-ca.crt again; its
    old client-kubelet.crt is refused with 401 and getNodeNamedCrt retries
    without it. A restart alone re-trusts a new CA: nothing to delete.
  - The kubelet registers its Node once: kubelet_node_status.go
    registerWithAPIServer returns at once when registrationCompleted, and
    tryUpdateNodeStatus on a deleted Node only fails ("error getting node").
    With the same CA (k3s.ca), a new datastore leaves the kubelet
    authenticated but without a Node, for good, until the agent restarts.

So the watcher restarts k3s-agent when the jumphost's k3s answers with
another CA than the one the agent pinned, or when this Pi's Node is gone
(read with the kubelet's own credentials; a 401 is a client CA that changed).
And when the jumphost's server runs another k3s version than the Pi's last
agent run installed (an upgrade in place: firstboot/k3s_follow.py), it runs
the first-boot agent again, which installs the served version.
It waits for the same finding on CHECKS runs in a row (a server that is
still starting is not a reason), and after a restart gives the agent
HOLDOFF seconds to join before it restarts it again. Nothing happens while
the agent is not running (the first-boot agent is still at work, or failed)
or the server does not answer. One log line per action; no token or key
is ever read, let alone logged.
"""

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from firstboot import k3s, k3s_follow, system
from firstboot.layout import Layout, Role

log = logging.getLogger("rackboot.pi-watch")

CHECKS = 3            # the same finding this many runs in a row (3 x 20 s)
HOLDOFF = 180         # seconds a restarted agent has to join before another restart
TIMEOUT = 10
AGENT_UNIT = k3s.service_name(Role.PI)
FIRSTBOOT_UNIT = "rackboot-firstboot.service"
PURPOSE = {AGENT_UNIT: "to join it again", FIRSTBOOT_UNIT: "to install the jumphost's k3s"}


@dataclass(frozen=True)
class Agent:
    server: str        # https://JUMPHOST:6443, from the agent's config
    node: str
    state: Path        # server-ca.crt, client-kubelet.crt/.key


def agent_of(layout: Layout) -> Agent | None:
    """The running agent's server and node, or None when this Pi has none yet."""
    try:
        config = yaml.safe_load(layout.k3s_config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    state = layout.k3s_agent_state
    server, node = str(config.get("server") or ""), str(config.get("node-name") or "")
    if not (server and node and (state / "server-ca.crt").is_file()):
        return None
    return Agent(server.rstrip("/"), node, state)


def certificates(pem: bytes) -> frozenset[bytes]:
    """A CA bundle's certificates (DER), however it is laid out."""
    found, text = set(), pem.decode("ascii", "replace")
    end = "-----END CERTIFICATE-----"
    for block in text.split(end)[:-1]:
        start = block.find("-----BEGIN CERTIFICATE-----")
        if start >= 0:
            try:
                found.add(ssl.PEM_cert_to_DER_cert(block[start:] + end))
            except ValueError:
                pass
    return frozenset(found)


def served_ca(agent: Agent) -> bytes | None:
    """What the server's /cacerts serves now (asked as the agent asks, not
    verified: it is only compared), or None when it does not answer."""
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{agent.server}/cacerts", context=unverified, timeout=TIMEOUT) as answer:
            return answer.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None


def node_answer(agent: Agent) -> int | None:
    """The API server's status for GET this Pi's Node with the kubelet's own
    identity and pinned CA; None when it did not answer."""
    context = ssl.create_default_context(cafile=str(agent.state / "server-ca.crt"))
    context.check_hostname = False       # k3s's certificate names the jumphost's addresses; the CA is pinned
    try:
        context.load_cert_chain(agent.state / "client-kubelet.crt", agent.state / "client-kubelet.key")
    except (OSError, ssl.SSLError):
        return None
    url = f"{agent.server}/api/v1/nodes/{urllib.parse.quote(agent.node, safe='')}"
    try:
        with urllib.request.urlopen(url, context=context, timeout=TIMEOUT) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def finding(agent: Agent) -> str | None:
    """Why the agent needs a restart now, or None."""
    served = served_ca(agent)
    if served is None:
        return None
    pinned = certificates((agent.state / "server-ca.crt").read_bytes())
    if certificates(served) and certificates(served) != pinned:
        return "the jumphost's k3s serves another CA than the agent pinned"
    code = node_answer(agent)
    if code == 404:
        return f"node {agent.node} is gone from the cluster"
    if code == 401:
        return "the jumphost's k3s no longer accepts this kubelet's certificate"
    return None


def boot_clock() -> float:
    """Seconds since boot (suspend included): comparable across runs, immune to clock changes."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _load(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and state.get("boot") == boot_id() else {}


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({**state, "boot": boot_id()}))
    os.replace(scratch, path)


def settings() -> tuple[int, float]:
    """CHECKS and HOLDOFF, or RACKBOOT_PI_WATCH_CHECKS / _HOLDOFF (tests)."""
    return (int(os.environ.get("RACKBOOT_PI_WATCH_CHECKS", CHECKS)),
            float(os.environ.get("RACKBOOT_PI_WATCH_HOLDOFF", HOLDOFF)))


def check(layout: Layout) -> str:
    """One run: what it found and did, in a word (nothing, waiting, seen,
    holdoff, restarted)."""
    agent = agent_of(layout)
    if agent is None or not system.is_active(AGENT_UNIT):
        return "nothing"
    path = layout.state_dir / "pi-watch.json"
    state, (checks, holdoff) = _load(path), settings()
    why, unit = finding(agent), AGENT_UNIT
    if why is None:
        why, unit = k3s_follow.behind(layout), FIRSTBOOT_UNIT
    if why is None:
        _save(path, {k: v for k, v in state.items() if k == "restarted"})
        return "nothing"
    seen = state.get("seen", 0) + 1 if state.get("why") == why else 1
    state.update(why=why, seen=seen)
    if seen < checks:
        _save(path, state)
        return "seen"
    if "restarted" in state and boot_clock() - state["restarted"] < holdoff:
        _save(path, state)
        return "holdoff"
    log.warning("pi-watch: %s (%d checks); restarting %s %s", why, seen, unit, PURPOSE[unit])
    system.systemctl("restart", "--no-block", unit, hint=f"journalctl -u {unit} says why")
    _save(path, {"restarted": boot_clock()})
    return "restarted"


def run(layout: Layout | None = None) -> int:
    check(layout or Layout.from_environment())
    return 0
