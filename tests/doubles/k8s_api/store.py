"""The stand-in's datastore: objects by (plural, namespace, name), persisted as
one JSON file (k3s keeps its datastore in DATA/server/db too); the
controllers it simulates (workload status, the namespace controller).

Workloads get ready READY_DELAY seconds after each new generation
(K3S_STANDIN_READY_DELAY, 0 by default; "never"): see simulate_controllers.

A deleted Namespace goes through Terminating, as with the real API server
and its namespace controller: DELETE sets deletionTimestamp, spec.finalizers
["kubernetes"] and status.phase Terminating; NAMESPACE_DELAY seconds later
(K3S_STANDIN_NAMESPACE_DELAY, 0.5 by default) the controller deletes what is
in it and then the namespace. default, kube-system and kube-public may not be
deleted (NamespaceLifecycle's immortal namespaces); kube-node-lease may, and
the API server's system-namespaces controller makes it again.

Each namespace gets its ServiceAccount "default" from kube-controller-manager's
serviceaccounts controller, asynchronously: SERVICEACCOUNT_DELAY seconds
after the namespace (K3S_STANDIN_SERVICEACCOUNT_DELAY, 0.3 by default; real
k3s does not have it at the instant the namespace is created), and again
after it is deleted; never in a namespace that is going.
"""

import copy
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
WORKLOADS = ("deployments", "statefulsets", "daemonsets", "jobs")
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "resourceVersion")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())      # durable before it replaces the old, as k3s's datastore (sqlite) is
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)         # and the rename with it: a power cut keeps one or the other
    finally:
        os.close(directory)


def later(delay: float, function, *args) -> None:
    """function(*args) in a controller's own time, delay seconds from now."""
    timer = threading.Timer(delay, function, args)
    timer.daemon = True
    timer.start()


def matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _content(obj: dict, with_status: bool) -> dict:
    """What a write changes: all but the server's bookkeeping (and managedFields' times)
    and the status, which controllers write."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in SERVER_FIELDS}
    meta["managedFields"] = [{k: v for k, v in e.items() if k != "time"} for e in meta.get("managedFields") or []]
    return {**{k: v for k, v in obj.items() if with_status or k != "status"}, "metadata": meta}


class Store:
    def __init__(self, path: Path, namespace_delay: float | None = None):
        self.path = path
        self.lock = threading.RLock()
        self.version = 1
        self.objects: dict[str, dict] = {}
        self.extra: dict = {}
        self.namespace_delay = float(os.environ.get("K3S_STANDIN_NAMESPACE_DELAY", "0.5")) \
            if namespace_delay is None else namespace_delay
        self.serviceaccount_delay = float(os.environ.get("K3S_STANDIN_SERVICEACCOUNT_DELAY", "0.3"))
        delay = os.environ.get("K3S_STANDIN_READY_DELAY", "0")
        self.ready_delay = float("inf") if delay == "never" else float(delay)
        if path.exists():
            saved = json.loads(path.read_text())
            self.version, self.objects, self.extra = saved["version"], saved["objects"], saved["extra"]
        for obj in self.list("namespaces"):        # a restart finds them terminating still
            if obj["metadata"].get("deletionTimestamp"):
                self._finish_later(obj["metadata"]["name"])
        for obj in self.list("namespaces"):        # and namespaces still without their ServiceAccount
            self.default_serviceaccount_later(obj["metadata"]["name"])
        for key, obj in list(self.objects.items()):     # and rollouts under way
            plural = key.split("/")[0]
            if plural in WORKLOADS and not _rolled_out(plural, obj.get("status") or {}):
                self.ready_later(plural, key.split("/")[1], obj["metadata"]["name"], obj["metadata"]["generation"])

    def save(self) -> None:
        write_private(self.path, json.dumps({"version": self.version, "objects": self.objects,
                                             "extra": self.extra}))

    @staticmethod
    def key(plural: str, namespace: str, name: str) -> str:
        return f"{plural}/{namespace}/{name}"

    def get(self, plural, namespace, name):
        return self.objects.get(self.key(plural, namespace, name))

    def put(self, plural, namespace, obj: dict, dry_run: bool = False, status: bool = False) -> dict:
        """Store obj (its managedFields as the caller made them); a write that changes
        nothing is not a new version, as with the API server. status: the write
        is a kubelet's or controller's, whose status counts (not the API's main
        resource, where the API server ignores it)."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            old = self.get(plural, namespace, meta["name"])
            if namespace:
                meta["namespace"] = namespace
            if old and _content(old, status) == _content(obj, status):
                return old
            if old:
                for key in ("uid", "creationTimestamp"):
                    meta[key] = old["metadata"][key]
                spec_changed = {k: v for k, v in old.items() if k not in ("metadata", "status")} != \
                    {k: v for k, v in obj.items() if k not in ("metadata", "status")}
                meta["generation"] = old["metadata"].get("generation", 1) + (1 if spec_changed else 0)
            else:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = now()
                meta["generation"] = 1
            if not meta.get("managedFields"):
                meta.pop("managedFields", None)
            simulate_controllers(plural, obj, self, schedule=not dry_run)
            if dry_run:
                return obj
            self.version += 1
            meta["resourceVersion"] = str(self.version)
            self.objects[self.key(plural, namespace, meta["name"])] = obj
            self.save()
            if plural == "namespaces" and not old:
                self.default_serviceaccount_later(meta["name"])
            return obj

    def delete(self, plural, namespace, name):
        with self.lock:
            obj = self.objects.pop(self.key(plural, namespace, name), None)
            self.version += 1
            self.save()
            if (plural, name) == ("serviceaccounts", "default"):
                self.default_serviceaccount_later(namespace)
            return obj

    def default_serviceaccount_later(self, namespace: str) -> None:
        """The serviceaccounts controller: ServiceAccount "default" in namespace, serviceaccount_delay from now."""
        later(self.serviceaccount_delay, self._default_serviceaccount, namespace)

    def _default_serviceaccount(self, namespace: str) -> None:
        with self.lock:
            if not self.get("namespaces", "", namespace) or self.terminating(namespace) \
                    or self.get("serviceaccounts", namespace, "default"):
                return
            self.put("serviceaccounts", namespace, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                   "metadata": {"name": "default", "namespace": namespace}})

    def terminate_namespace(self, name: str, dry_run: bool = False) -> dict:
        """DELETE of a Namespace: Terminating now, gone once the controller emptied it."""
        with self.lock:
            obj = copy.deepcopy(self.get("namespaces", "", name))
            obj["metadata"]["deletionTimestamp"] = now()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            obj.setdefault("spec", {})["finalizers"] = ["kubernetes"]
            obj["status"] = {"phase": "Terminating"}
            if dry_run:
                return obj
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.objects[self.key("namespaces", "", name)] = obj
            self.save()
        self._finish_later(name)
        return obj

    def _finish_later(self, name: str) -> None:
        later(self.namespace_delay, self._finish_namespace, name)

    def _finish_namespace(self, name: str) -> None:
        with self.lock:
            for key in [k for k in self.objects if k.split("/")[1] == name]:
                del self.objects[key]
            self.objects.pop(self.key("namespaces", "", name), None)
            self.version += 1
            self.save()
            if name in SYSTEM_NAMESPACES:      # the system-namespaces controller
                self.ensure_namespace(name)

    def ready_later(self, plural: str, namespace: str, name: str, generation: int) -> None:
        """The simulated controller's pods of this generation get ready after ready_delay."""
        if self.ready_delay == float("inf"):
            return
        timer = threading.Timer(self.ready_delay, self._ready, (plural, namespace, name, generation))
        timer.daemon = True
        timer.start()

    def _ready(self, plural: str, namespace: str, name: str, generation: int) -> None:
        with self.lock:
            obj = self.get(plural, namespace, name)
            if not obj or obj["metadata"]["generation"] != generation:
                return       # gone, or a newer generation has its own timer
            obj["status"] = _ready_status(plural, obj)
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.save()

    def ensure_namespace(self, name: str) -> None:
        if not self.get("namespaces", "", name):
            self.put("namespaces", "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def terminating(self, namespace: str) -> bool:
        obj = self.get("namespaces", "", namespace)
        return bool(obj and obj.get("status", {}).get("phase") == "Terminating")

    def list(self, plural, namespace=None, selector=""):
        with self.lock:
            return [copy.deepcopy(obj) for key, obj in sorted(self.objects.items())
                    if key.split("/")[0] == plural
                    and (namespace is None or key.split("/")[1] == namespace)
                    and matches(obj["metadata"].get("labels") or {}, selector)]


def simulate_controllers(plural: str, obj: dict, store: "Store", schedule: bool = True) -> None:
    """Workload controllers, since no containers run here. A new generation is
    seen at once (observedGeneration); its pods are ready READY_DELAY seconds
    later (K3S_STANDIN_READY_DELAY: 0 by default, "never" for pods that never
    get ready). Until then a Deployment's or StatefulSet's old pods stay ready
    and none is updated, as in a rolling update that has not progressed."""
    generation = obj["metadata"]["generation"]
    spec = obj.get("spec") or {}
    old = obj.get("status") or {}
    done = store.ready_delay == 0 or old.get("observedGeneration") == generation and _rolled_out(plural, old)
    if plural in ("deployments", "statefulsets"):
        replicas = spec.get("replicas", 1)
        ready = replicas if done else min(old.get("readyReplicas", 0), replicas)
        obj["status"] = {"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
                         "updatedReplicas": replicas if done else 0, "availableReplicas": ready}
    elif plural == "daemonsets":
        nodes = len([k for k in store.objects if k.startswith("nodes/")])
        ready = nodes if done else min(old.get("numberReady", 0), nodes)
        obj["status"] = {"observedGeneration": generation, "desiredNumberScheduled": nodes,
                         "currentNumberScheduled": nodes, "numberReady": ready,
                         "updatedNumberScheduled": nodes if done else 0, "numberAvailable": ready}
    elif plural == "jobs":
        obj["status"] = {"succeeded": spec.get("completions", 1)} if done else {"active": 1}
    elif plural == "namespaces":
        obj["status"] = obj.get("status") or {"phase": "Active"}
    if plural in WORKLOADS and not done and schedule:
        store.ready_later(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], generation)


def _rolled_out(plural: str, status: dict) -> bool:
    if plural == "daemonsets":
        return status.get("updatedNumberScheduled") == status.get("desiredNumberScheduled")
    if plural == "jobs":
        return "succeeded" in status
    return status.get("updatedReplicas") == status.get("replicas")


def _ready_status(plural: str, obj: dict) -> dict:
    status = dict(obj.get("status") or {})
    if plural in ("deployments", "statefulsets"):
        status.update(readyReplicas=status["replicas"], updatedReplicas=status["replicas"],
                      availableReplicas=status["replicas"])
    elif plural == "daemonsets":
        nodes = status["desiredNumberScheduled"]
        status.update(numberReady=nodes, updatedNumberScheduled=nodes, numberAvailable=nodes)
    elif plural == "jobs":
        status = {"succeeded": (obj.get("spec") or {}).get("completions", 1)}
    return status
