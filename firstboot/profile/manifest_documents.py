"""The Kubernetes objects in a profile's manifest files, read as the agent's
apply step reads them (firstboot/apply.py: load_documents), so a document
numbered here is the document the agent would name: counted from 1, empty
documents counted and skipped."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from firstboot.profile.problems import Problem, format_path

DEFAULT_NAMESPACE = "default"      # where the API server puts a namespaced object that names none


@dataclass(frozen=True)
class ManifestObject:
    file: Path          # as the user named it: the profile's directory, then the entry
    index: int
    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.body["metadata"].get("namespace") or DEFAULT_NAMESPACE

    def __str__(self) -> str:
        namespace = self.body["metadata"].get("namespace")
        return f"document {self.index} ({self.kind} {namespace + '/' if namespace else ''}{self.name})"

    def problem(self, path: tuple, message: str) -> Problem:
        """A problem at path inside this object: FILE: document N (Kind NS/NAME): PATH: MESSAGE."""
        return Problem(None, f"{self}: {format_path(path)}: {message}", self.file)


def _shape_problem(body) -> str | None:
    """Why a document is not one Kubernetes object, as the agent would refuse it."""
    if not isinstance(body, dict):
        return "is not a mapping"
    if not all(isinstance(body.get(k), str) and body[k] for k in ("apiVersion", "kind")):
        return "has no apiVersion or kind"
    if not isinstance(body.get("metadata"), dict) or not isinstance(body["metadata"].get("name"), str):
        return "has no metadata.name"
    if not isinstance(body["metadata"].get("namespace"), (str, type(None))):
        return "has a metadata.namespace that is not a string"
    return None


def read_objects(file: Path, shown_as: Path) -> tuple[list[ManifestObject], list[Problem]]:
    """The objects in one manifest file, and what keeps any document from being one."""
    try:
        loaded = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        return [], [Problem(None, f"not valid YAML: {' '.join(str(err).split())}", shown_as)]
    except OSError as err:
        return [], [Problem(None, f"cannot be read: {err.strerror}", shown_as)]
    objects, problems = [], []
    for index, body in enumerate(loaded, start=1):
        if body is None:
            continue
        refusal = _shape_problem(body)
        if refusal:
            problems.append(Problem(None, f"document {index} {refusal}; each document must be one "
                                          "Kubernetes object", shown_as))
        else:
            objects.append(ManifestObject(shown_as, index, body))
    return objects, problems


def shown_path(file: Path, profile: Path) -> Path:
    """A manifest file as the user named it: under the profile's directory as given."""
    directory = profile.parent
    try:
        return directory / file.relative_to(directory.resolve())
    except ValueError:
        return file


def read_all(files: tuple[Path, ...], profile: Path) -> tuple[list[ManifestObject], list[Problem]]:
    objects, problems = [], []
    for file in files:
        found, refused = read_objects(file, shown_path(file, profile))
        objects += found
        problems += refused
    return objects, problems


def pod_specs(obj: ManifestObject) -> Iterator[tuple[tuple, dict]]:
    """(path, pod spec) of a workload: a Pod's own, or its template's."""
    spec = obj.body.get("spec")
    if not isinstance(spec, dict):
        return
    if obj.kind == "Pod":
        yield ("spec",), spec
        return
    path, template = ("spec",), spec
    if obj.kind == "CronJob":
        path, template = ("spec", "jobTemplate", "spec"), (spec.get("jobTemplate") or {}).get("spec") or {}
    elif obj.kind not in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return
    pod = (template.get("template") or {}).get("spec") if isinstance(template, dict) else None
    if isinstance(pod, dict):
        yield (*path, "template", "spec"), pod
