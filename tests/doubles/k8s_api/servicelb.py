"""k3s's ServiceLB, as the stand-in's server runs it: for each Service of
type LoadBalancer, a svclb pod with a host port per Service port on each
eligible node, and the Service's status.loadBalancer.ingress from the nodes
whose pod is ready. Read in k3s-io/k3s pkg/cloudprovider:

- servicelb.go newDaemonSet: the DaemonSet kube-system/svclb-NAME-UID8, one
  container lb-PROTOCOL-PORT per Service port with hostPort = port and the
  port's protocol; tolerations for the control-plane/master NoSchedule taints
  and CriticalAddonsOnly. Its pods carry the labels svcname and svcnamespace.
- servicelb.go nodeHasDaemonSetLabel: once ANY node has the label
  svccontroller.k3s.cattle.io/enablelb (whatever its value), the DaemonSet's
  nodeSelector is enablelb=true: only nodes labelled "true" get a pod (plus
  lbpool=POOL when the Service has that label); with no node labelled, every
  node does. updateDaemonSets redoes this when a node's label changes.
- servicelb.go getStatus/podIPs/filterByIPFamily: ingress = the ExternalIPs
  of the nodes running a ready svclb pod if any has one, else their
  InternalIPs, of the Service's IP families, sorted; none: empty status.
- loadbalancer.go EnsureLoadBalancerDeleted, and cloudprovider.go
  Initialize: a Service no longer LoadBalancer loses its DaemonSet; with
  LBEnabled false (k3s --disable=servicelb: pkg/cli/server/server.go sets
  DisableServiceLB) every svclb DaemonSet is deleted and none is made.

The DaemonSet controller and scheduler are simulated on the pods alone (the
stand-in keeps no svclb DaemonSet object): a pod targets its node with
nodeAffinity as DaemonSet pods do, and when another svclb pod already holds
one of its host ports (port and protocol) there, the scheduler's NodePorts
filter leaves it Pending with the scheduler's message, as real k3s leaves
the second Service's svclb pod. A pod is ready while its node is Ready (the
node lifecycle controller marks a silent node's pods not ready). The API
server's defaults the stand-in does not fill in are taken as the v1.31 API
server sets them on a single-stack IPv4 cluster: ipFamilies [IPv4], and
ipMode VIP on each ingress IP (LoadBalancerIPMode, on by default)."""

import hashlib
import threading
import time

LABEL_DOMAIN = "svccontroller.k3s.cattle.io"
ENABLE_LB = f"{LABEL_DOMAIN}/enablelb"
LB_POOL = f"{LABEL_DOMAIN}/lbpool"
SVC_NAME = f"{LABEL_DOMAIN}/svcname"
SVC_NAMESPACE = f"{LABEL_DOMAIN}/svcnamespace"
LB_NAMESPACE = "kube-system"
LB_IMAGE = "rancher/klipper-lb:v0.4.9"
# The DaemonSet's own tolerations, and those the DaemonSet controller adds to its pods
# (pkg/controller/daemon/util AddOrUpdateDaemonPodTolerations): (key, effect; None: any).
TOLERATED = {("node-role.kubernetes.io/master", "NoSchedule"), ("node-role.kubernetes.io/control-plane", "NoSchedule"),
             ("CriticalAddonsOnly", None), ("node.kubernetes.io/not-ready", "NoExecute"),
             ("node.kubernetes.io/unreachable", "NoExecute"), ("node.kubernetes.io/disk-pressure", "NoSchedule"),
             ("node.kubernetes.io/memory-pressure", "NoSchedule"), ("node.kubernetes.io/pid-pressure", "NoSchedule"),
             ("node.kubernetes.io/unschedulable", "NoSchedule")}
_SUFFIX_LETTERS = "bcdfghjklmnpqrstvwxz2456789"     # apimachinery's rand.String alphabet


def is_load_balancer(service: dict) -> bool:
    return (service.get("spec") or {}).get("type") == "LoadBalancer"


def node_selector(service: dict, nodes: list[dict]) -> dict:
    """newDaemonSet's nodeSelector: {} unless some node has the enablelb label."""
    if not any(ENABLE_LB in (n["metadata"].get("labels") or {}) for n in nodes):
        return {}
    selector = {ENABLE_LB: "true"}
    pool = (service["metadata"].get("labels") or {}).get(LB_POOL)
    if pool:
        selector[LB_POOL] = pool
    return selector


def _tolerated(taint: dict) -> bool:
    return (taint["key"], taint.get("effect")) in TOLERATED or (taint["key"], None) in TOLERATED


def eligible_nodes(service: dict, nodes: list[dict]) -> list[dict]:
    """The nodes the Service's svclb DaemonSet puts a pod on."""
    selector = node_selector(service, nodes)
    return [n for n in nodes
            if all((n["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            and all(_tolerated(t) for t in (n.get("spec") or {}).get("taints") or []
                    if t.get("effect") in ("NoSchedule", "NoExecute"))]


def daemonset_name(service: dict) -> str:
    """generateName: svclb-NAME-UID8, the name cut at 48 and never at a trailing hyphen."""
    name = service["metadata"]["name"]
    if len(name) > 48:
        name = name[:48].rstrip("-")
    return f"svclb-{name}-{service['metadata']['uid'][:8]}"


def host_ports(pod: dict) -> set[tuple[int, str]]:
    return {(p["hostPort"], p.get("protocol", "TCP")) for c in pod["spec"]["containers"] for p in c.get("ports") or []
            if p.get("hostPort")}


def _node_ready(node: dict) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _internal_ip(node: dict) -> str:
    return next((a["address"] for a in node["status"].get("addresses") or [] if a["type"] == "InternalIP"), "")


def new_pod(service: dict, node: dict) -> dict:
    """The DaemonSet's pod for node, not yet scheduled."""
    ds = daemonset_name(service)
    digest = hashlib.sha256(f"{ds}/{node['metadata']['name']}".encode()).digest()
    meta = service["metadata"]
    containers = [{"name": f"lb-{p.get('protocol', 'TCP').lower()}-{p['port']}", "image": LB_IMAGE,
                   "ports": [{"name": f"lb-{p.get('protocol', 'TCP').lower()}-{p['port']}", "containerPort": p["port"],
                              "hostPort": p["port"], "protocol": p.get("protocol", "TCP")}],
                   "env": [{"name": "SRC_PORT", "value": str(p["port"])},
                           {"name": "DEST_PROTO", "value": p.get("protocol", "TCP")}],
                   "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}
                  for p in (service.get("spec") or {}).get("ports") or []]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{ds}-" + "".join(_SUFFIX_LETTERS[b % len(_SUFFIX_LETTERS)] for b in digest[:5]),
                         "namespace": LB_NAMESPACE,
                         "labels": {"app": ds, SVC_NAME: meta["name"], SVC_NAMESPACE: meta["namespace"]}},
            "spec": {"containers": containers, "serviceAccountName": "svclb",
                     "priorityClassName": "system-node-critical",
                     "automountServiceAccountToken": False,
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                                 "values": [node["metadata"]["name"]]}]}]}}}}}


def _scheduled(pod: dict, node: dict, ready: bool) -> dict:
    pod["spec"]["nodeName"] = node["metadata"]["name"]
    address = _internal_ip(node)
    octet = int(hashlib.sha256(pod["metadata"]["name"].encode()).hexdigest(), 16) % 250 + 2
    state = "True" if ready else "False"
    pod["status"] = {"phase": "Running", "hostIP": address, "hostIPs": [{"ip": address}],
                     "podIP": f"10.42.0.{octet}", "podIPs": [{"ip": f"10.42.0.{octet}"}],
                     "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": state},
                                    {"type": "ContainersReady", "status": state}]}
    return pod


def _pending(pod: dict, node_count: int) -> dict:
    others = node_count - 1
    message = (f"0/{node_count} nodes are available: 1 node(s) didn't have free ports for the requested pod ports"
               + (f", {others} node(s) didn't match Pod's node affinity/selector" if others else "")
               + f". preemption: 0/{node_count} nodes are available: {node_count} Preemption is not helpful "
               "for scheduling.")
    pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                         "reason": "Unschedulable", "message": message}]}
    return pod


def ingress(service: dict, pods: list[dict], nodes: dict[str, dict]) -> list[dict]:
    """getStatus: the addresses of the nodes with a ready pod of the Service."""
    external, internal = set(), set()
    for pod in pods:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        node = nodes.get(pod["spec"].get("nodeName") or "")
        if not ready or not pod["status"].get("podIP") or node is None:
            continue
        for address in node["status"].get("addresses") or []:
            {"ExternalIP": external, "InternalIP": internal}.get(address["type"], set()).add(address["address"])
    families = (service.get("spec") or {}).get("ipFamilies") or ["IPv4"]
    ips = sorted(ip for ip in (external or internal) if ip and ":" not in ip) if "IPv4" in families else []
    return [{"ip": ip, "ipMode": "VIP"} for ip in ips]


class ServiceLB:
    """The controller over the stand-in's store; reconcile() on every change."""

    def __init__(self, store, enabled: bool):
        self.store = store
        self.enabled = enabled

    def run(self) -> None:
        seen = None
        while True:
            if self.store.version != seen:
                seen = self.store.version
                self.reconcile()
            time.sleep(0.2)

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True).start()

    def reconcile(self) -> None:
        with self.store.lock:
            pods = {p["metadata"]["name"]: p for p in self.store.list("pods", LB_NAMESPACE, SVC_NAME)}
            services = sorted(self.store.list("services"), key=lambda s: (
                s["metadata"].get("creationTimestamp", ""), s["metadata"]["namespace"], s["metadata"]["name"]))
            balanced = [s for s in services if is_load_balancer(s)] if self.enabled else []
            wanted = self._place(balanced, pods)
            for name in set(pods) - set(wanted):
                self.store.delete("pods", LB_NAMESPACE, name)
            for pod in wanted.values():
                self.store.put("pods", LB_NAMESPACE, pod, status=True)
            nodes = {n["metadata"]["name"]: n for n in self.store.list("nodes")}
            for service in services:
                if not self.enabled and is_load_balancer(service):
                    continue      # no load balancer controller runs: nobody writes the status
                mine = [p for p in wanted.values() if p["metadata"]["labels"][SVC_NAME] == service["metadata"]["name"]
                        and p["metadata"]["labels"][SVC_NAMESPACE] == service["metadata"]["namespace"]]
                found = ingress(service, mine, nodes) if is_load_balancer(service) else []
                self._set_status(service, {"ingress": found} if found else {})

    def _place(self, services: list[dict], existing: dict[str, dict]) -> dict[str, dict]:
        """Each Service's pods on its eligible nodes; a pod already running keeps
        its node's ports, a new one gets them only if they are free there."""
        nodes = self.store.list("nodes")
        plan = [(service, node, new_pod(service, node))
                for service in services for node in eligible_nodes(service, nodes)]
        taken: dict[str, set] = {}
        for _, node, pod in plan:
            old = existing.get(pod["metadata"]["name"])
            if old and old["spec"].get("nodeName"):
                taken.setdefault(node["metadata"]["name"], set()).update(host_ports(pod))
        wanted = {}
        for _, node, pod in plan:
            name, old = node["metadata"]["name"], existing.get(pod["metadata"]["name"])
            if old and old["spec"].get("nodeName"):
                wanted[pod["metadata"]["name"]] = _scheduled(pod, node, _node_ready(node))
            elif host_ports(pod) & taken.get(name, set()):
                wanted[pod["metadata"]["name"]] = _pending(pod, len(nodes))
            else:
                taken.setdefault(name, set()).update(host_ports(pod))
                wanted[pod["metadata"]["name"]] = _scheduled(pod, node, _node_ready(node))
        return wanted

    def _set_status(self, service: dict, balancer: dict) -> None:
        status = service.get("status") or {}
        if (status.get("loadBalancer") or {}) == balancer:
            return
        service["status"] = {**status, "loadBalancer": balancer}
        self.store.put("services", service["metadata"]["namespace"], service, status=True)
