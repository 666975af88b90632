"""Node labels a kubelet would refuse, or rackboot keeps for itself."""

RESERVED_LABEL_PREFIX = "rackboot.dev/"

# Labels a kubelet may give its own node (--node-labels, which k3s's
# node-label passes on): none under kubernetes.io or k8s.io except these.
# kubernetes/kubernetes staging/src/k8s.io/kubelet/pkg/apis/well_known_labels.go
# (kubeletLabels, kubeletLabelNamespaces) and cmd/kubelet/app/options
# (isKubernetesLabel); kubelet refuses to start with any other.
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch",
    "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/os", "beta.kubernetes.io/arch"})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
NODE_RESTRICTION_NAMESPACE = "node-restriction.kubernetes.io"
# k3s's ServiceLB picks its nodes by these labels (pkg/cloudprovider/servicelb.go):
# rackboot gives enablelb=true to the jumphost alone, so port 80 is there only.
SERVICELB_LABEL_PREFIX = "svccontroller.k3s.cattle.io/"


def _in_namespace(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def label_refusal(key: str) -> str | None:
    """Why a node may not carry this label key, or None if it may."""
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if key.startswith(RESERVED_LABEL_PREFIX):
        return f"the {RESERVED_LABEL_PREFIX} prefix is reserved: rackboot sets rack, role and model itself"
    if key.startswith(SERVICELB_LABEL_PREFIX):
        return (f"{SERVICELB_LABEL_PREFIX} labels choose ServiceLB's nodes: rackboot sets enablelb=true "
                "on the jumphost itself, so that only the jumphost publishes port 80")
    if _in_namespace(namespace, NODE_RESTRICTION_NAMESPACE):
        return (f"a node cannot give itself {NODE_RESTRICTION_NAMESPACE}/ labels (NodeRestriction): "
                "rackboot's agent sets those through the API")
    kubernetes = _in_namespace(namespace, "kubernetes.io") or _in_namespace(namespace, "k8s.io")
    if kubernetes and key not in KUBELET_LABELS and not any(
            _in_namespace(namespace, allowed) for allowed in KUBELET_LABEL_NAMESPACES):
        return ("kubelet refuses node labels under kubernetes.io and k8s.io except "
                + ", ".join(f"{n}/*" for n in KUBELET_LABEL_NAMESPACES) + " and "
                + ", ".join(sorted(KUBELET_LABELS)))
    return None
