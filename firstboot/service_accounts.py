"""Image pull secrets on a namespace's default ServiceAccount (a profile's
image_pull_secrets).

kube-controller-manager's serviceaccounts controller makes the ServiceAccount
"default" of a namespace asynchronously, after the namespace: just after
apply made a Namespace it may not be there yet, so the agent waits for it
(at most apply's timeout).

ServiceAccount.imagePullSecrets is an atomic list (x-kubernetes-list-type
atomic, no patch merge key): server-side apply, or a strategic merge patch,
would set the whole list and drop the entries others added. So the agent
reads the list, adds its names that are missing, takes out the names it
added before (the annotation ADDED_ANNOTATION records them) that the profile
no longer has, and writes the list back as a JSON merge patch carrying the
resourceVersion it read, under its own field manager: if someone wrote the
ServiceAccount in between, the API answers 409 Conflict and the agent reads
it again.

Pods take their ServiceAccount's imagePullSecrets when they are created (the
ServiceAccount admission plugin), never later: this runs before any workload
of the profile is applied.
"""

import time
from itertools import groupby

from firstboot.errors import BadInput, RackbootError

FIELD_MANAGER = "rackboot-pull-secrets"
ADDED_ANNOTATION = "rackboot.dev/image-pull-secrets"     # the names rackboot put there, comma-separated
POLL_SECONDS = 0.5
CONFLICT_RETRIES = 5


def attach_pull_secrets(dyn, pull_secrets, timeout: float, request_timeout: float,
                        sleep=time.sleep, clock=time.monotonic) -> list[str]:
    """Each namespace's default ServiceAccount lists its pull secrets; what changed, as "NS: +name -name"."""
    if not pull_secrets:
        return []
    deadline = clock() + timeout
    accounts = dyn.resources.get(api_version="v1", kind="ServiceAccount")
    changes = []
    ordered = sorted(pull_secrets, key=lambda p: p.namespace)
    for namespace, entries in groupby(ordered, key=lambda p: p.namespace):
        wanted = list(dict.fromkeys(entry.secret for entry in entries))
        for attempt in range(CONFLICT_RETRIES):
            account = _wait_for_default(dyn, namespace, deadline, request_timeout, sleep, clock)
            try:
                change = _update(dyn, accounts, account, wanted, request_timeout)
                break
            except _Conflict:
                continue
        else:
            raise RackbootError(f"ServiceAccount {namespace}/default: changed by someone else at each of "
                                f"{CONFLICT_RETRIES} attempts to add its image pull secrets",
                                hint="the agent tries again at its next run")
        if change:
            changes.append(f"{namespace}: {change}")
    return changes


class _Conflict(Exception):
    pass


def _wait_for_default(dyn, namespace: str, deadline: float, request_timeout: float, sleep, clock):
    from kubernetes.client.exceptions import ApiException

    accounts = dyn.resources.get(api_version="v1", kind="ServiceAccount")
    namespaces = dyn.resources.get(api_version="v1", kind="Namespace")
    while True:
        try:
            return dyn.get(accounts, name="default", namespace=namespace, _request_timeout=request_timeout).to_dict()
        except ApiException as err:
            if err.status != 404:
                raise _refused(namespace, err) from None
        try:
            dyn.get(namespaces, name=namespace, _request_timeout=request_timeout)
        except ApiException as err:
            if err.status == 404:
                raise BadInput(f"image_pull_secrets: namespace {namespace!r} does not exist",
                               hint="create it in the profile's manifests") from None
            raise _refused(namespace, err) from None
        if clock() >= deadline:
            raise RackbootError(f"ServiceAccount {namespace}/default: not made by kube-controller-manager "
                                "in time for its image pull secrets",
                                hint="journalctl -u k3s (the serviceaccounts controller); "
                                     "the agent tries again at its next run")
        sleep(POLL_SECONDS)


def _update(dyn, accounts, account: dict, wanted: list[str], request_timeout: float) -> str:
    """Write the list with wanted in it; "" when it already was. _Conflict if someone wrote first."""
    from kubernetes.client.exceptions import ApiException

    meta = account["metadata"]
    annotations = meta.get("annotations") or {}
    added_before = [n for n in annotations.get(ADDED_ANNOTATION, "").split(",") if n]
    current = [ref["name"] for ref in account.get("imagePullSecrets") or () if ref.get("name")]
    dropped = [name for name in added_before if name not in wanted and name in current]
    kept = [name for name in current if name not in dropped]
    added = [name for name in wanted if name not in kept]
    record = ",".join(wanted)
    if not added and not dropped and annotations.get(ADDED_ANNOTATION) == record:
        return ""
    body = {"metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {ADDED_ANNOTATION: record}},
            "imagePullSecrets": [{"name": name} for name in kept + added]}
    try:
        dyn.patch(accounts, name="default", namespace=meta["namespace"], body=body,
                  content_type="application/merge-patch+json", field_manager=FIELD_MANAGER,
                  _request_timeout=request_timeout)
    except ApiException as err:
        if err.status == 409:
            raise _Conflict() from None
        raise _refused(meta["namespace"], err) from None
    return " ".join([f"+{name}" for name in added] + [f"-{name}" for name in dropped]) or "recorded"


def _refused(namespace: str, err) -> RackbootError:
    return RackbootError(f"ServiceAccount {namespace}/default: the API answered {err.status} {err.reason}",
                         hint="the agent tries again at its next run")
