"""Ready: wait until k3s is up: the service active (k3s's own READY=1), and on
the jumphost the API answering and this node reporting Ready.

A Pi's agent has no credentials for the API; its k3s-agent unit turns active
once the node has joined, and the jumphost sees the node from its side.
"""

import os
import time

from firstboot import k3s, system
from firstboot.errors import RackbootError
from firstboot.layout import Layout, Role

TIMEOUT = float(os.environ.get("RACKBOOT_READY_TIMEOUT", "300"))
POLL = 1.0


def _unit_state(unit: str) -> str:
    return system.systemctl("is-active", unit, check=False).stdout.strip() or "unknown"


def wait(layout: Layout, role: Role, node: str, timeout: float = TIMEOUT) -> dict:
    start = time.monotonic()
    deadline = start + timeout
    unit = k3s.service_name(role)
    hint = f"journalctl -u {unit.removesuffix('.service')} says why; the agent tries again at its next run"
    while (state := _unit_state(unit)) != "active":
        if time.monotonic() > deadline:
            raise RackbootError(f"{unit} is not active after {timeout:.0f} s (it is {state})", hint=hint)
        time.sleep(POLL)
    result = {"service": unit, "service_seconds": round(time.monotonic() - start, 1)}
    if role is not Role.JUMPHOST:
        return result
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    last = "no answer yet"
    while True:
        try:
            api = config.new_client_from_config(config_file=str(layout.kubeconfig))
            api.configuration.retries = 0   # ours are the retries, bounded by the deadline
            core = client.CoreV1Api(api)
            conditions = {c.type: c.status for c in core.read_node(node, _request_timeout=10).status.conditions or []}
            if conditions.get("Ready") == "True":
                break
            last = f"node {node} is not Ready ({conditions.get('Ready', 'no Ready condition')})"
        except ApiException as err:
            last = f"the API answered {err.status} {err.reason}"
        except (HTTPError, OSError) as err:
            last = f"the API is not reachable ({type(err).__name__})"
        except config.ConfigException as err:
            last = f"no kubeconfig yet ({err})"
        if time.monotonic() > deadline:
            raise RackbootError(f"k3s is not ready after {timeout:.0f} s: {last}", hint=hint)
        time.sleep(POLL)
    result["api_seconds"] = round(time.monotonic() - start, 1)
    return result
