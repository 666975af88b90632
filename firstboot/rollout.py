"""What apply waits for the cluster's controllers to finish: a Namespace
being deleted, before it is applied again; the rack's workloads rolling out.

A workload is rolled out by the rules of `kubectl rollout status` (kubectl's
pkg/polymorphichelpers/rollout_status.go): the agent and an operator running
kubectl agree.

Ready pods are not enough. While a new template rolls out, the old pods stay
ready (readyReplicas is full) and no pod runs the new template yet; the
controller counts those in updatedReplicas (Deployment, StatefulSet) and
updatedNumberScheduled (DaemonSet), and shows it has seen the new spec at all
in observedGeneration. A workload is rolled out when its controller has seen
its generation, every replica it wants runs the new template, no old one is
left, and the new ones are available.

OnDelete workloads (StatefulSet, DaemonSet) replace no pod until someone
deletes it, so for them ready pods of the generation seen are all there is to
wait for (kubectl refuses to say).
"""

import time

from firstboot.errors import RackbootError

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
POLL_SECONDS = 2
NOT_SEEN = "not yet seen by its controller"


def _counts(status: dict, *names: str) -> list[int]:
    return [status.get(name) or 0 for name in names]


def deployment_pending(body: dict) -> str | None:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if body["metadata"].get("generation", 0) > (status.get("observedGeneration") or 0):
        return NOT_SEEN
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise RackbootError(f"Deployment {body['metadata'].get('namespace')}/{body['metadata']['name']} "
                                "exceeded its progress deadline: " + (condition.get("message") or ""),
                                hint="kubectl -n NAMESPACE describe deployment/NAME on the jumphost says why")
    want = spec.get("replicas", 1)
    replicas, ready, updated, available = _counts(status, "replicas", "readyReplicas", "updatedReplicas",
                                                  "availableReplicas")
    if ready < want:           # implied by the checks below; named first as `kubectl get` shows it
        return f"{ready}/{want} ready"
    if updated < want:
        return f"{updated} of {want} new replicas updated"
    if replicas > updated:
        return f"{replicas - updated} old replicas pending termination"
    if available < updated:
        return f"{available} of {updated} updated replicas available"
    return None


def statefulset_pending(body: dict) -> str | None:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    observed = status.get("observedGeneration") or 0
    if observed == 0 or body["metadata"].get("generation", 0) > observed:
        return NOT_SEEN
    want = spec.get("replicas", 1)
    ready, updated = _counts(status, "readyReplicas", "updatedReplicas")
    if ready < want:
        return f"{ready}/{want} ready"
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return None
    partition = (strategy.get("rollingUpdate") or {}).get("partition") or 0
    if updated < want - partition:
        return f"{updated} of {want - partition} new pods updated"
    # The controller sets currentRevision to updateRevision when the last pod
    # is updated and ready; with a partition the old revision stays on purpose.
    if partition == 0 and status.get("currentRevision") != status.get("updateRevision"):
        return f"rolling update to revision {status.get('updateRevision')} not complete"
    return None


def daemonset_pending(body: dict) -> str | None:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if body["metadata"].get("generation", 0) > (status.get("observedGeneration") or 0):
        return NOT_SEEN
    want, ready, updated, available = _counts(status, "desiredNumberScheduled", "numberReady",
                                              "updatedNumberScheduled", "numberAvailable")
    if ready < want:
        return f"{ready}/{want} ready"
    if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
        return None
    if updated < want:
        return f"{updated} of {want} new pods updated"
    if available < want:
        return f"{available} of {want} updated pods available"
    return None


PENDING = {"Deployment": deployment_pending, "StatefulSet": statefulset_pending, "DaemonSet": daemonset_pending}


def pending(body: dict) -> str | None:
    """Why the workload `body` (as the API returns it) is not rolled out yet; None once it is."""
    return PENDING[body["kind"]](body)


def wait_for_workloads(dyn, workloads, timeout: float, request_timeout: float) -> float:
    """Poll (api_version, kind, namespace, name) until each is rolled out;
    the seconds that took."""
    start = time.monotonic()
    while True:
        waiting = []
        for api_version, kind, namespace, name in workloads:
            resource = dyn.resources.get(api_version=api_version, kind=kind)
            body = dyn.get(resource, name=name, namespace=namespace, _request_timeout=request_timeout).to_dict()
            reason = pending(body)
            if reason:
                waiting.append(f"{kind} {namespace}/{name}: {reason}")
        if not waiting:
            return round(time.monotonic() - start, 1)
        if time.monotonic() - start > timeout:
            raise RackbootError(f"not ready after {timeout:.0f} s: " + "; ".join(waiting),
                                hint="kubectl -n NAMESPACE describe KIND/NAME on the jumphost says why")
        time.sleep(POLL_SECONDS)


def wait_until_namespace_gone(dyn, namespaces, name: str, timeout: float, request_timeout: float) -> None:
    """A Namespace being deleted (say pruned by the last run, and back in the
    profile now) takes no new objects, and applying it would not stop its
    deletion: it would go, with all applied into it, once emptied. So wait,
    within apply's timeout, until it is gone; apply then makes it afresh."""
    from kubernetes.client.exceptions import ApiException

    start = time.monotonic()
    while True:
        try:
            current = dyn.get(namespaces, name=name, _request_timeout=request_timeout)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        if not current.metadata.deletionTimestamp:
            return
        if time.monotonic() - start > timeout:
            raise RackbootError(f"Namespace {name} is still being deleted (Terminating) after {timeout:.0f} s; "
                                "it is applied once it is gone",
                                hint=f"kubectl get namespace {name} -o yaml says what it waits for "
                                     "(status.conditions); the agent tries again at its next run")
        time.sleep(1)
