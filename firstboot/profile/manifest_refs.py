"""What a rack's objects need of each other, checked once every object fits
its schema: the Secrets and ConfigMaps a workload takes, the Services an
Ingress sends to, the hosts an Ingress answers, and something answering each
of the profile's host aliases.

An alias is a name the rack router resolves to the jumphost
(templates/router/hosts.j2); a device asks http://ALIAS/ on port 80, where
traefik, k3s's ingress controller, routes by the Host header (the design
document: "for metadata we just need to make sure DNS points 'metadata' to the
jumphost"). So what is behind an alias is an Ingress rule for that host, or
one for every host (no host, or a defaultBackend), with its Services in the
manifests; or a LoadBalancer Service named after it, which k3s's ServiceLB
publishes on the node's own address. A ClusterIP Service named like the alias
is not behind it: devices outside the cluster cannot reach cluster IPs, and
cluster DNS does not answer the bare name outside the Service's namespace."""

from collections.abc import Iterator

from firstboot.profile.manifest_documents import ManifestObject, pod_specs
from firstboot.profile.problems import Problem

# (volume source key, its field naming the object, kind) in a Pod's volumes.
_VOLUME_SOURCES = (("secret", "secretName", "Secret"), ("configMap", "name", "ConfigMap"))
_ENV_FROM = (("secretRef", "Secret"), ("configMapRef", "ConfigMap"))
_ENV_KEY_REFS = (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap"))


def _items(value) -> list:
    return value if isinstance(value, list) else []


def _taken(pod: dict) -> Iterator[tuple[tuple, str, dict, str]]:
    """(path, kind, the reference, its name field) for each Secret and ConfigMap a pod takes."""
    for i, volume in enumerate(_items(pod.get("volumes"))):
        for source, field, kind in _VOLUME_SOURCES:
            if isinstance(volume.get(source), dict):
                yield ("volumes", i, source, field), kind, volume[source], field
        projected = volume.get("projected") or {}
        for j, part in enumerate(_items(projected.get("sources"))):
            for source, kind in (("secret", "Secret"), ("configMap", "ConfigMap")):
                if isinstance(part.get(source), dict):
                    yield ("volumes", i, "projected", "sources", j, source, "name"), kind, part[source], "name"
    for group in ("initContainers", "containers"):
        for k, container in enumerate(_items(pod.get(group))):
            for m, entry in enumerate(_items(container.get("envFrom"))):
                for source, kind in _ENV_FROM:
                    if isinstance(entry.get(source), dict):
                        yield (group, k, "envFrom", m, source, "name"), kind, entry[source], "name"
            for m, entry in enumerate(_items(container.get("env"))):
                value_from = entry.get("valueFrom") or {}
                for source, kind in _ENV_KEY_REFS:
                    if isinstance(value_from.get(source), dict):
                        yield (group, k, "env", m, "valueFrom", source, "name"), kind, value_from[source], "name"


def mounted_problems(objects: list[ManifestObject], profile_secrets: set[tuple[str, str]]) -> Iterator[Problem]:
    """Each Secret or ConfigMap a workload takes (not optional) that nobody creates in its namespace."""
    created = {("Secret", ns, name) for ns, name in profile_secrets}
    created |= {(o.kind, o.namespace, o.name) for o in objects if o.kind in ("Secret", "ConfigMap")}
    for obj in objects:
        for pod_path, pod in pod_specs(obj):
            for path, kind, ref, field in _taken(pod):
                name = ref.get(field) or ""
                if ref.get("optional") is True or (kind, obj.namespace, name) in created:
                    continue
                by = "the profile's secrets or its manifests" if kind == "Secret" else "the profile's manifests"
                yield obj.problem((*pod_path, *path), f"{kind} {name!r} is not created in namespace "
                                  f"{obj.namespace!r} by {by}: the pod would never start "
                                  "(or mark the reference optional: true)")


def _ingress_hosts(ingress: ManifestObject) -> Iterator[tuple[tuple, str]]:
    spec = ingress.body.get("spec") or {}
    for i, rule in enumerate(_items(spec.get("rules"))):
        if rule.get("host"):
            yield ("spec", "rules", i, "host"), rule["host"]
    for i, tls in enumerate(_items(spec.get("tls"))):
        for j, host in enumerate(_items(tls.get("hosts"))):
            yield ("spec", "tls", i, "hosts", j), host


def _backends(ingress: ManifestObject) -> Iterator[tuple[tuple, dict]]:
    spec = ingress.body.get("spec") or {}
    if isinstance((spec.get("defaultBackend") or {}).get("service"), dict):
        yield ("spec", "defaultBackend", "service"), spec["defaultBackend"]["service"]
    for i, rule in enumerate(_items(spec.get("rules"))):
        for j, path in enumerate(_items((rule.get("http") or {}).get("paths"))):
            service = (path.get("backend") or {}).get("service")
            if isinstance(service, dict):
                yield ("spec", "rules", i, "http", "paths", j, "backend", "service"), service


def _port_problem(service: dict, port: dict) -> str | None:
    ports = _items((service.get("spec") or {}).get("ports"))
    if port.get("name") and port["name"] not in {p.get("name") for p in ports}:
        return f"port {port['name']!r}: the Service has no port of that name"
    if port.get("number") is not None and port["number"] not in {p.get("port") for p in ports}:
        return f"port {port['number']}: the Service has no such port"
    return None


def ingress_problems(objects: list[ManifestObject], aliases: tuple[str, ...]) -> Iterator[Problem]:
    """Ingress hosts that are not aliases, and backends that are not the manifests' Services."""
    services = {(o.namespace, o.name): o.body for o in objects if o.kind == "Service"}
    for ingress in (o for o in objects if o.kind == "Ingress"):
        for path, host in _ingress_hosts(ingress):
            if host not in aliases:
                yield ingress.problem(path, f"host {host!r} is not one of the profile's host_aliases "
                                      f"({', '.join(aliases) or 'none'}): the rack router resolves only "
                                      "those to the jumphost")
        for path, backend in _backends(ingress):
            service = services.get((ingress.namespace, backend.get("name")))
            if service is None:
                yield ingress.problem((*path, "name"), f"Service {backend.get('name')!r} is not created in "
                                      f"namespace {ingress.namespace!r} by the profile's manifests")
            elif _port_problem(service, backend.get("port") or {}):
                yield ingress.problem((*path, "port"), _port_problem(service, backend.get("port") or {}))


def _served_hosts(objects: list[ManifestObject]) -> tuple[set[str], bool]:
    """The hosts Ingress rules answer, and whether one answers every host."""
    hosts, every = set(), False
    for ingress in (o for o in objects if o.kind == "Ingress"):
        spec = ingress.body.get("spec") or {}
        every |= bool(spec.get("defaultBackend"))
        for rule in _items(spec.get("rules")):
            every |= not rule.get("host")
            hosts.add(rule.get("host"))
    hosts |= {o.name for o in objects
              if o.kind == "Service" and (o.body.get("spec") or {}).get("type") == "LoadBalancer"}
    return hosts, every


def alias_problems(objects: list[ManifestObject], aliases: tuple[str, ...]) -> Iterator[Problem]:
    """Each alias (first place it is named) with nothing behind it, at host_aliases[i] of the profile."""
    hosts, every = _served_hosts(objects)
    for index, alias in enumerate(aliases):
        if not every and alias not in hosts and alias not in aliases[:index]:
            yield Problem(("host_aliases", index), f"{alias!r}: nothing in the manifests answers it: no Ingress "
                          "rule for this host (traefik routes port 80 by host name) and no LoadBalancer "
                          "Service of this name")
