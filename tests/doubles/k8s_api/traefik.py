"""What answers on a svclb pod's host port in the stand-in: for k3s's
packaged traefik (its LoadBalancer Service kube-system/traefik, ports web 80
and websecure 443, from k3s's traefik chart), traefik's routing of the
cluster's Ingress rules; for any other LoadBalancer Service, a reply naming
the Service. No containers run here, so the reply names the backend Service
that traefik would have sent the request to.

The Host rule is traefik's: k3s v1.31 bundles traefik v2.11 (chart
27.0.201+up27.0.2); v1.32 on bundles v3. The Kubernetes Ingress provider
makes each rule's host a Host(`HOST`) rule, matched by hostV2 (traefik v2.11
and v3: pkg/muxer/http/matcher_v2.go; v3 syntax: host in matcher.go) against
the request's canonized host (pkg/middlewares/requestdecorator:
parseHost drops a :port, types.CanonicalDomain lower-cases and trims
spaces): equal, or equal once a trailing dot is dropped from the rule's host
or from the request's. So `metadata.` reaches Host(`metadata`). No rule
matches: traefik's 404 "404 page not found"."""

TRAEFIK_NAMESPACE, TRAEFIK_NAME = "kube-system", "traefik"
NOT_FOUND = "404 page not found\n"


def traefik_service() -> dict:
    """The LoadBalancer Service k3s's traefik chart makes (helm release traefik in kube-system)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": TRAEFIK_NAME, "namespace": TRAEFIK_NAMESPACE,
                         "labels": {"app.kubernetes.io/instance": "traefik-kube-system",
                                    "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": "traefik"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                     "selector": {"app.kubernetes.io/instance": "traefik-kube-system",
                                  "app.kubernetes.io/name": "traefik"},
                     "ports": [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": "web"},
                               {"name": "websecure", "port": 443, "protocol": "TCP", "targetPort": "websecure"}]}}


def _parse_host(addr: str) -> str:
    """requestdecorator's parseHost: net.SplitHostPort's host, else addr ([v6] unbracketed)."""
    if ":" not in addr:
        return addr
    if addr.startswith("["):
        end = addr.find("]")
        if end > 0 and addr[end + 1:end + 2] == ":" and ":" not in addr[end + 2:]:
            return addr[1:end]
        return addr[1:-1] if addr.endswith("]") else addr
    host, _, _ = addr.rpartition(":")
    return addr if ":" in host else host


def canonical_host(header: str) -> str:
    """GetCanonizedHost: parseHost, then types.CanonicalDomain (lower-cased, spaces trimmed)."""
    return _parse_host(header).strip().lower()


def host_matches(rule_host: str, header: str) -> bool:
    """traefik's Host matcher (hostV2), without CNAME flattening (off by default)."""
    rule_host, request = rule_host.lower(), canonical_host(header)
    if not request:
        return False
    return (request == rule_host or (rule_host.endswith(".") and request == rule_host[:-1])
            or (request.endswith(".") and request[:-1] == rule_host))


def _path_matches(path: dict, request_path: str) -> bool:
    want = path.get("path") or "/"
    if path.get("pathType") == "Exact":
        return request_path == want
    return request_path.startswith(want)     # Prefix and ImplementationSpecific: traefik's PathPrefix


def route(ingresses: list[dict], header: str, request_path: str) -> tuple[str, dict] | None:
    """The Ingress and backend traefik picks: a rule of this host, else a rule with no host."""
    for wildcard in (False, True):
        for ingress in ingresses:
            spec = ingress.get("spec") or {}
            if spec.get("ingressClassName") not in (None, "traefik"):
                continue
            for rule in spec.get("rules") or []:
                if bool(rule.get("host")) == wildcard or (rule.get("host") and not host_matches(rule["host"], header)):
                    continue
                for path in (rule.get("http") or {}).get("paths") or []:
                    if _path_matches(path, request_path):
                        return f"{ingress['metadata']['namespace']}/{ingress['metadata']['name']}", path["backend"]
    for ingress in ingresses:
        backend = (ingress.get("spec") or {}).get("defaultBackend")
        if backend:
            return f"{ingress['metadata']['namespace']}/{ingress['metadata']['name']}", backend
    return None


def answer(store, namespace: str, service: str, port: int, header: str, request_path: str) -> tuple[int, str]:
    """The HTTP status and body a request to NODE:port reaches, for the svclb pod of namespace/service."""
    if (namespace, service) != (TRAEFIK_NAMESPACE, TRAEFIK_NAME):
        return 200, f"service {namespace}/{service} port {port}; Host: {header}\n"
    found = route(store.list("ingresses"), header, request_path)
    if found is None:
        return 404, NOT_FOUND
    ingress, backend = found
    target = backend.get("service") or {}
    number = (target.get("port") or {}).get("number") or (target.get("port") or {}).get("name")
    return 200, (f"traefik: Ingress {ingress} -> service {ingress.split('/')[0]}/{target.get('name')} "
                 f"port {number}; Host: {header}\n")
