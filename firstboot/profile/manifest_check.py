"""A profile's manifests checked as the rack's API server would take them,
before anything is built: each object against the OpenAPI schemas of the
rack's Kubernetes minor (k8s_schemas), its names (k8s_names), and, once every
object fits, what the objects need of each other and of the profile
(manifest_refs).

Problems inside a manifest name its file, the document and the path in it:
`FILE: document N (Kind NS/NAME): PATH: MESSAGE`. Problems of the profile
(a Kubernetes minor without schemas, an alias with nothing behind it) name
the profile's key, as every other profile problem does."""

from collections.abc import Iterator
from pathlib import Path

from firstboot.profile import k8s_names
from firstboot.profile.k8s_schemas import SchemasMissing, group_version, kubernetes_minor, schemas_for
from firstboot.profile.manifest_documents import ManifestObject, pod_specs, read_all
from firstboot.profile.manifest_refs import alias_problems, ingress_problems, mounted_problems
from firstboot.profile.problems import Problem
from firstboot.profile.secret_checks import profile_secret_names, pull_secret_problems

# API groups whose kinds k3s itself serves through its own CustomResourceDefinitions
# (the packaged Helm controller, k3s's add-ons and snapshots, traefik's CRDs):
# kubernetes-validate has no schemas for them, so they are applied unchecked.
K3S_CRD_GROUPS = frozenset({"helm.cattle.io", "k3s.cattle.io", "traefik.io", "traefik.containo.us"})


def _defined_by_crds(objects: list[ManifestObject]) -> set[tuple[str, str]]:
    """(group, kind) of the CustomResourceDefinitions the manifests make."""
    defined = set()
    for obj in objects:
        spec = obj.body.get("spec") or {}
        if obj.kind == "CustomResourceDefinition" and isinstance(spec.get("names"), dict):
            defined.add((spec.get("group"), spec["names"].get("kind")))
    return defined


def _name_problems(obj: ManifestObject) -> Iterator[Problem]:
    meta = obj.body["metadata"]
    for message in k8s_names.name_problems(obj.kind, meta["name"]):
        yield obj.problem(("metadata", "name"), message)
    if meta.get("namespace"):
        for message in k8s_names.pattern_problems(meta["namespace"], k8s_names.DNS1123_LABEL):
            yield obj.problem(("metadata", "namespace"), message)
    for section in ("labels", "annotations"):
        for key, value in (meta.get(section) or {}).items():
            for message in k8s_names.qualified_name_problems(key.lower() if section == "annotations" else key):
                yield obj.problem(("metadata", section, key), f"key: {message}")
            if section == "labels":
                for message in k8s_names.label_value_problems(value or ""):
                    yield obj.problem(("metadata", section, key), message)
    for pod_path, pod in pod_specs(obj):
        for group in ("initContainers", "containers"):
            for index, container in enumerate(pod.get(group) or []):
                for message in k8s_names.pattern_problems(container.get("name") or "", k8s_names.DNS1123_LABEL):
                    yield obj.problem((*pod_path, group, index, "name"), message)


def _object_problems(obj: ManifestObject, schemas, crds: set[tuple[str, str]], minor: str) -> list[Problem]:
    group, _ = group_version(obj.body["apiVersion"])
    if group in K3S_CRD_GROUPS or (group, obj.kind) in crds:
        return list(_name_problems(obj))
    if not schemas.knows(obj.body["apiVersion"], obj.kind):
        known = "" if schemas.kinds_of(obj.body["apiVersion"]) else f" (it has no API version {obj.body['apiVersion']})"
        return [obj.problem(("kind",), f"Kubernetes {minor} serves no {obj.kind} in "
                            f"{obj.body['apiVersion']}{known}")]
    problems = [obj.problem(path, message) for path, message in schemas.problems(obj.body)]
    return problems or list(_name_problems(obj))


def manifest_problems(doc: dict, files: tuple[Path, ...], profile: Path) -> list[Problem]:
    """Every problem of a schema-valid profile document's manifests (files, as resolved)."""
    aliases = tuple(doc["host_aliases"])
    if not files:
        # no schemas read for a rack without manifests
        return list(alias_problems([], aliases)) + list(pull_secret_problems(doc, []))
    objects, problems = read_all(files, profile)
    minor = kubernetes_minor(doc["k3s"]["version"])
    try:
        schemas = schemas_for(minor)
    except SchemasMissing as err:
        return [Problem(("k3s", "version"), str(err))]
    crds = _defined_by_crds(objects)
    for obj in objects:
        problems += _object_problems(obj, schemas, crds, minor)
    if problems:
        return problems       # what objects need of each other is read from objects that fit
    problems += mounted_problems(objects, profile_secret_names(doc))
    problems += pull_secret_problems(doc, objects)
    problems += ingress_problems(objects, aliases)
    problems += alias_problems(objects, aliases)
    return problems
