"""What check can tell of a profile's secret_imports and image_pull_secrets
before any secret is listed: prefixes that parse, the Secrets the rack can
count on (the profile's own, each import's required names, the manifests'),
and a pull secret that is one of those, of a type kubelet pulls with, in a
namespace that exists."""

from collections.abc import Iterator

from firstboot import secretref
from firstboot.profile.manifest_documents import ManifestObject
from firstboot.profile.problems import Problem

PULL_SECRET_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")
# Namespaces every cluster has (the API server makes them); any other must be in the manifests.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public")


def prefix_problems(doc: dict) -> Iterator[Problem]:
    for i, entry in enumerate(doc["secret_imports"]):
        try:
            secretref.parse_prefix(entry["from"])
        except secretref.SecretRefError as err:
            yield Problem(("secret_imports", i, "from"), str(err))
        for name in sorted(set(entry.get("required", ())) & set(entry.get("exclude", ()))):
            yield Problem(("secret_imports", i, "exclude"), f"{name!r} is both required and excluded")


def profile_secret_names(doc: dict) -> set[tuple[str, str]]:
    """(namespace, name) of every Secret the profile itself makes: its secrets, and its imports' required names."""
    names = {(s.get("namespace", "default"), s["name"]) for s in doc["secrets"]}
    names |= {(entry.get("namespace", "default"), name)
              for entry in doc["secret_imports"] for name in entry.get("required", ())}
    return names


def pull_secret_problems(doc: dict, objects: list[ManifestObject]) -> Iterator[Problem]:
    """Each image pull secret nobody creates, of a type kubelet does not pull with, or in no namespace."""
    created = profile_secret_names(doc) | {(o.namespace, o.name) for o in objects if o.kind == "Secret"}
    types = {(s.get("namespace", "default"), s["name"]): s.get("type", "Opaque") for s in doc["secrets"]}
    types |= {(o.namespace, o.name): o.body.get("type") or "Opaque" for o in objects if o.kind == "Secret"}
    namespaces = {o.name for o in objects if o.kind == "Namespace"} | set(SYSTEM_NAMESPACES)
    for i, entry in enumerate(doc["image_pull_secrets"]):
        key = (entry.get("namespace", "default"), entry["secret"])
        if key[0] not in namespaces:
            yield Problem(("image_pull_secrets", i, "namespace"),
                          f"namespace {key[0]!r} is not created by the profile's manifests")
        if key not in created:
            yield Problem(("image_pull_secrets", i, "secret"),
                          f"Secret {key[1]!r} is not created in namespace {key[0]!r} by the profile's secrets, "
                          "its manifests or a secret_imports entry's required names")
        elif types.get(key, PULL_SECRET_TYPES[0]) not in PULL_SECRET_TYPES:
            yield Problem(("image_pull_secrets", i, "secret"),
                          f"Secret {key[1]!r} is of type {types[key]!r}; kubelet pulls only with "
                          + " or ".join(PULL_SECRET_TYPES))
