"""The Nodes of Pis no longer in the rack's profile, deleted (jumphost, after
apply): a Pi removed by a push leaves no Node behind.

Only Nodes that carry the rack's own labels as a Pi's k3s config sets them
(rackboot.dev/rack=RACK, rackboot.dev/role=pi) and whose name is no Pi of
the profile are deleted; the jumphost's Node, other racks' Nodes and Nodes
without those labels are never touched. The Pi's node-password Secret stays:
the password is derived from the rack and node name, so a Pi given that name
again joins as before. A removed Pi that is still running registers again;
power it off first.
"""

from pathlib import Path

from firstboot import apply
from firstboot.errors import RackbootError

ROLE_LABEL = "rackboot.dev/role"


def remove_departed_pis(kubeconfig: Path, profile) -> list[str]:
    """Delete the rack's Pi Nodes that the profile no longer has; their names."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    keep = {pi.name for pi in profile.pis}
    selector = f"{apply.RACK_LABEL}={profile.rack},{ROLE_LABEL}=pi"
    removed = []
    try:
        dyn = apply._client(kubeconfig)
        nodes = dyn.resources.get(api_version="v1", kind="Node")
        for item in dyn.get(nodes, label_selector=selector, _request_timeout=apply.REQUEST_TIMEOUT).items:
            name = item.metadata.name
            if name in keep or item.metadata.deletionTimestamp:
                continue
            try:
                dyn.delete(nodes, name=name, _request_timeout=apply.REQUEST_TIMEOUT)
            except ApiException as err:
                if err.status != 404:
                    raise RackbootError(f"deleting the Node of Pi {name}, no longer in rack {profile.rack}'s "
                                        f"profile: the API answered {err.status} {err.reason}",
                                        hint="the agent tries again at its next run") from None
            removed.append(name)
    except (HTTPError, OSError) as err:
        raise RackbootError(f"the k3s API is not reachable ({type(err).__name__}: {err})",
                            hint="journalctl -u k3s; the agent tries again at its next run") from None
    return sorted(removed)
