"""firstboot/apply.py and firstboot/rollout.py on their own: when a workload
counts as rolled out (the rules of kubectl's rollout_status.go, status by
status), and which of the API's refusals are bad input. The agent's apply
against the k3s stand-in is in tests/test_k3s_agent.py and
tests/test_k3s_api_strict.py."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from firstboot import apply, rollout
from firstboot.errors import BadInput, RackbootError


def workload(kind: str, spec: dict, status: dict, generation: int = 2) -> dict:
    return {"kind": kind, "metadata": {"name": "w", "namespace": "ns", "generation": generation},
            "spec": spec, "status": status}


def deployment(**status) -> dict:
    return workload("Deployment", {"replicas": 3}, {"observedGeneration": 2, **status})


DONE = {"replicas": 3, "readyReplicas": 3, "updatedReplicas": 3, "availableReplicas": 3}


def test_a_deployment_is_rolled_out_when_all_its_replicas_are_new_and_available():
    assert rollout.pending(deployment(**DONE)) is None


@pytest.mark.parametrize("status, reason", [
    ({"observedGeneration": 1, **DONE}, "not yet seen by its controller"),
    ({**DONE, "readyReplicas": 1, "availableReplicas": 1}, "1/3 ready"),
    ({**DONE, "updatedReplicas": 0}, "0 of 3 new replicas updated"),          # the old pods are ready
    ({**DONE, "replicas": 4}, "1 old replicas pending termination"),
    ({**DONE, "readyReplicas": 3, "availableReplicas": 2}, "2 of 3 updated replicas available"),
])
def test_a_deployment_is_not_rolled_out(status, reason):
    assert rollout.pending(workload("Deployment", {"replicas": 3}, {"observedGeneration": 2, **status})) == reason


def test_a_deployment_without_status_is_not_seen_yet():
    assert rollout.pending(workload("Deployment", {"replicas": 1}, None, generation=1)) == \
        "not yet seen by its controller"


def test_a_deployment_past_its_progress_deadline_fails_at_once():
    condition = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": 'ReplicaSet "w-5d4" has timed out progressing.'}
    with pytest.raises(RackbootError) as failed:
        rollout.pending(deployment(**{**DONE, "updatedReplicas": 1}, conditions=[condition]))
    assert str(failed.value) == ('Deployment ns/w exceeded its progress deadline: '
                                 'ReplicaSet "w-5d4" has timed out progressing.')


def statefulset(strategy: dict | None = None, **status) -> dict:
    spec = {"replicas": 3, **({"updateStrategy": strategy} if strategy else {})}
    return workload("StatefulSet", spec, {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                                          "updatedReplicas": 3, "currentRevision": "w-2",
                                          "updateRevision": "w-2", **status})


@pytest.mark.parametrize("body, reason", [
    (statefulset(), None),
    (statefulset(observedGeneration=1), "not yet seen by its controller"),
    (statefulset(readyReplicas=2), "2/3 ready"),
    (statefulset(updatedReplicas=1, currentRevision="w-1"), "1 of 3 new pods updated"),
    (statefulset(currentRevision="w-1"), "rolling update to revision w-2 not complete"),
    # A partition keeps the pods below it at the old revision, on purpose.
    (statefulset({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}, updatedReplicas=1,
                 currentRevision="w-1"), None),
    (statefulset({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}, updatedReplicas=1,
                 currentRevision="w-1"), "1 of 2 new pods updated"),
    # OnDelete replaces no pod until someone deletes it: ready pods are all there is.
    (statefulset({"type": "OnDelete"}, updatedReplicas=0, currentRevision="w-1"), None),
    (statefulset({"type": "OnDelete"}, readyReplicas=1), "1/3 ready"),
])
def test_when_a_statefulset_is_rolled_out(body, reason):
    assert rollout.pending(body) == reason


def daemonset(strategy: dict | None = None, **status) -> dict:
    spec = {"updateStrategy": strategy} if strategy else {}
    return workload("DaemonSet", spec, {"observedGeneration": 2, "desiredNumberScheduled": 4, "numberReady": 4,
                                        "updatedNumberScheduled": 4, "numberAvailable": 4, **status})


@pytest.mark.parametrize("body, reason", [
    (daemonset(), None),
    (daemonset(observedGeneration=1), "not yet seen by its controller"),
    (daemonset(numberReady=3, numberAvailable=3), "3/4 ready"),
    (daemonset(updatedNumberScheduled=0), "0 of 4 new pods updated"),
    (daemonset(numberAvailable=3), "3 of 4 updated pods available"),
    (daemonset({"type": "OnDelete"}, updatedNumberScheduled=0), None),
])
def test_when_a_daemonset_is_rolled_out(body, reason):
    assert rollout.pending(body) == reason


def api_exception(status: int, body: dict) -> ApiException:
    err = ApiException(status=status, reason="reason")
    err.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status, **body})
    return err


def test_server_side_applys_typed_patch_500_is_bad_input():
    message = ("failed to create typed patch object (ns/typo; /v1, Kind=Service): "
               ".spec.selectr: field not declared in schema")
    error = apply._api_error("f.yaml: document 1 (Service ns/typo)", api_exception(500, {"message": message}))
    assert type(error) is BadInput
    assert str(error) == f"f.yaml: document 1 (Service ns/typo): the API refused it (500): {message}"


@pytest.mark.parametrize("status", [500, 503, 504])
def test_other_server_errors_stay_transient(status):
    error = apply._api_error("doc", api_exception(status, {"message": "etcdserver: request timed out"}))
    assert type(error) is RackbootError
    assert "etcdserver: request timed out" in str(error) and "tries again" in error.hint


def test_a_create_in_a_terminating_namespace_is_not_called_bad_input():
    body = {"message": 'configmaps "c" is forbidden: unable to create new content in namespace gone because it '
                       "is being terminated", "reason": "Forbidden",
            "details": {"name": "c", "kind": "configmaps", "causes": [
                {"reason": "NamespaceTerminating", "message": "namespace gone is being terminated",
                 "field": "metadata.namespace"}]}}
    error = apply._api_error("doc", api_exception(403, body))
    assert type(error) is RackbootError
    assert "being deleted (Terminating)" in error.hint


def test_other_refusals_are_bad_input():
    error = apply._api_error("doc", api_exception(403, {"message": "forbidden", "reason": "Forbidden"}))
    assert type(error) is BadInput


def test_a_document_names_its_file_position_and_object():
    namespaced = apply.Document("kube/a.yaml", 3, {"apiVersion": "v1", "kind": "ConfigMap",
                                                   "metadata": {"name": "c", "namespace": "ns"}})
    cluster = apply.Document("kube/a.yaml", 4, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
    assert str(namespaced) == "kube/a.yaml: document 3 (ConfigMap ns/c)"
    assert str(cluster) == "kube/a.yaml: document 4 (Namespace ns)"
    assert cluster.key == ("v1", "Namespace", "", "ns")
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        cluster.index = 5


@pytest.mark.parametrize("environment, seconds", [({}, "300.0"), ({"RACKBOOT_APPLY_TIMEOUT": "12.5"}, "12.5")])
def test_how_long_apply_waits_is_set_by_the_environment(environment, seconds):
    from tests.test_join import defaults_under
    assert defaults_under(environment, "apply", "TIMEOUT", "apply") == [seconds, seconds]


GOOD = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: ns}\n"


def test_documents_keep_their_positions_past_empty_ones(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(f"---\n{GOOD}---\n---\n{GOOD.replace('name: c', 'name: d')}")
    second.write_text(GOOD.replace("name: c", "name: e"))
    documents = apply.load_documents((first, second))
    assert [str(d) for d in documents] == [f"{first}: document 1 (ConfigMap ns/c)",
                                           f"{first}: document 3 (ConfigMap ns/d)",
                                           f"{second}: document 1 (ConfigMap ns/e)"]


@pytest.mark.parametrize("document, problem", [
    ("- a list\n", "is not a mapping"),
    ("just text\n", "is not a mapping"),
    ("kind: ConfigMap\nmetadata: {name: c}\n", "has no apiVersion or kind"),
    ("apiVersion: v1\nmetadata: {name: c}\n", "has no apiVersion or kind"),
    ("apiVersion: 1\nkind: ConfigMap\nmetadata: {name: c}\n", "has no apiVersion or kind"),
    ("apiVersion: v1\nkind: ''\nmetadata: {name: c}\n", "has no apiVersion or kind"),
    ("apiVersion: v1\nkind: ConfigMap\n", "has no metadata.name"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: [c]\n", "has no metadata.name"),
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 5}\n", "has no metadata.name"),
])
def test_a_document_that_is_not_one_kubernetes_object_is_bad_input(tmp_path, document, problem):
    manifest = tmp_path / "kube.yaml"
    manifest.write_text(f"{GOOD}---\n{document}")
    with pytest.raises(BadInput) as caught:
        apply.load_documents((manifest,))
    assert str(caught.value) == f"{manifest}: document 2 {problem}; each document must be one Kubernetes object"
    assert caught.value.hint == "fix the manifest and rebuild the image"


def test_a_manifest_that_is_not_yaml_or_not_there_is_bad_input(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(BadInput) as caught:
        apply.load_documents((broken,))
    assert str(caught.value).startswith(f"{broken}: not valid YAML: while parsing a flow sequence")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(BadInput) as caught:
        apply.load_documents((missing,))
    assert str(caught.value) == f"{missing}: No such file or directory"


def test_a_refusal_without_a_message_is_named_by_its_reason():
    err = ApiException(status=422, reason="Unprocessable Entity")
    err.body = json.dumps(["not", "a", "Status"])
    error = apply._api_error("doc", err)
    assert type(error) is BadInput
    assert str(error) == "doc: the API refused it (422): Unprocessable Entity"
    assert error.hint == "fix the document and rebuild the image; objects before it were applied"


@pytest.mark.parametrize("status", [400, 403, 404, 409, 415, 422])
def test_each_refusal_status_is_bad_input(status):
    error = apply._api_error("doc", api_exception(status, {"message": "no"}))
    assert type(error) is BadInput and str(error) == f"doc: the API refused it ({status}): no"


def test_a_create_in_a_terminating_namespace_says_why_and_that_it_is_tried_again():
    body = {"message": "unable to create new content in namespace gone because it is being terminated",
            "details": {"causes": [{"reason": "NamespaceTerminating"}]}}
    error = apply._api_error("doc", api_exception(403, body))
    assert error.hint == ("its namespace is being deleted (Terminating) and not in the profile, or deleted by "
                          "someone else; the agent tries again at its next run")
