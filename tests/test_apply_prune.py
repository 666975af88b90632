"""firstboot/apply.py's apply() in process, against one k3s stand-in server
(the strict API of tests/test_k3s_api_strict.py): what it labels, where a
namespaced object without a namespace goes, what it prunes (its own rack's
objects only, Namespaces last, kinds of earlier runs too), what it reports,
and the jumphost's placement label. Each test uses a rack name and
namespaces of its own."""

import types

import pytest
import yaml

from firstboot import apply
from firstboot.errors import BadInput, RackbootError
from tests import test_k3s_api_strict as strict_api

api = strict_api.api                  # one stand-in server for this module too
pytestmark = pytest.mark.machine      # it runs in a pretend machine

NODE = "strict-api"                   # the stand-in server's node (tests/test_k3s_api_strict.py)


def profile(tmp_path, rack: str, *documents: dict, name: str = "rack.yaml"):
    """What apply() reads of a rack profile: its manifests, Secrets, rack and jumphost."""
    manifest = tmp_path / name
    manifest.write_text(yaml.safe_dump_all(documents))
    return types.SimpleNamespace(rack=rack, manifests=(manifest,), secrets=(), secret_imports=(),
                                 image_pull_secrets=(), jumphost=types.SimpleNamespace(hostname=NODE))


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def configmap(name: str, ns: str | None, **data) -> dict:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def get(api, kind: str, name: str, ns: str | None = None):
    dyn = api.dynamic()
    resource = dyn.resources.get(api_version="v1", kind=kind)
    from kubernetes.dynamic.exceptions import NotFoundError
    try:
        return dyn.get(resource, name=name, namespace=ns)
    except NotFoundError:
        return None


def gone_or_going(api, kind: str, name: str, ns: str | None = None) -> bool:
    found = get(api, kind, name, ns)
    return found is None or bool(found.metadata.deletionTimestamp)


def test_applied_objects_carry_the_rack_labels_and_default_namespace(api, tmp_path):
    rack = profile(tmp_path, "labels-rack", namespace("labels-ns"), configmap("in-ns", "labels-ns", a="1"),
                   configmap("no-ns", None, b="2"))
    result = apply.apply(api.kubeconfig, rack, timeout=30)
    assert result["applied"] == ["Namespace labels-ns", "ConfigMap labels-ns/in-ns", "ConfigMap default/no-ns"]
    assert result["secrets"] == [] and result["pruned"] == []
    assert result["inventory"] == [["v1", "ConfigMap"], ["v1", "Namespace"]]
    wanted = {"app.kubernetes.io/managed-by": "rackboot", "rackboot.dev/rack": "labels-rack"}
    for kind, name, ns in (("Namespace", "labels-ns", None), ("ConfigMap", "in-ns", "labels-ns"),
                           ("ConfigMap", "no-ns", "default")):
        found = get(api, kind, name, ns)
        assert found is not None, (kind, name, ns)
        assert found.metadata.labels.to_dict() | wanted == found.metadata.labels.to_dict()
        managers = {entry.manager for entry in found.metadata.managedFields}
        assert managers == {"rackboot"}, managers
    assert get(api, "ConfigMap", "no-ns", "default").data.to_dict() == {"b": "2"}


def test_a_documents_own_labels_are_kept_beside_the_rack_labels(api, tmp_path):
    body = configmap("own-labels", "default", a="1")
    body["metadata"]["labels"] = {"team": "lab"}
    apply.apply(api.kubeconfig, profile(tmp_path, "own-labels-rack", body), timeout=30)
    labels = get(api, "ConfigMap", "own-labels", "default").metadata.labels.to_dict()
    assert labels == {"team": "lab", "app.kubernetes.io/managed-by": "rackboot",
                      "rackboot.dev/rack": "own-labels-rack"}


def test_prune_deletes_only_what_this_rack_applied_and_no_longer_has(api, tmp_path):
    ns = "prune-ns"
    first = profile(tmp_path, "prune-rack", namespace(ns), configmap("kept", ns, a="1"),
                    configmap("dropped", ns, a="2"))
    apply.apply(api.kubeconfig, first, timeout=30)
    # Another rack's object and one nobody labelled, in the same namespace.
    apply.apply(api.kubeconfig, profile(tmp_path, "other-rack", configmap("theirs", ns, c="3"), name="other.yaml"),
                timeout=30)
    dyn = api.dynamic()
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    dyn.create(configmaps, body=configmap("by-hand", ns, d="4"), namespace=ns)
    second = profile(tmp_path, "prune-rack", namespace(ns), configmap("kept", ns, a="1"))
    result = apply.apply(api.kubeconfig, second, timeout=30)
    assert result["pruned"] == [f"ConfigMap {ns}/dropped"]
    assert gone_or_going(api, "ConfigMap", "dropped", ns)
    for name in ("kept", "theirs", "by-hand"):
        assert get(api, "ConfigMap", name, ns) is not None, name
    again = apply.apply(api.kubeconfig, second, timeout=30)
    assert again["pruned"] == []


def test_namespaces_are_pruned_after_what_is_in_them(api, tmp_path):
    rack = "ns-last-rack"
    # A Secret: a kind listed after Namespace (v1 kinds in order), pruned before it all the same.
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "inside-secret", "namespace": "ns-last"}, "data": {}}
    first = apply.apply(api.kubeconfig, profile(tmp_path, rack, namespace("ns-last"), configmap("inside", "ns-last"),
                                                secret, configmap("stays", "default")), timeout=30)
    result = apply.apply(api.kubeconfig, profile(tmp_path, rack, configmap("stays", "default")),
                         previous_inventory=first["inventory"], timeout=30)
    assert result["pruned"] == ["ConfigMap ns-last/inside", "Secret ns-last/inside-secret", "Namespace ns-last"]
    assert gone_or_going(api, "Namespace", "ns-last")
    assert get(api, "ConfigMap", "stays", "default") is not None


def test_kinds_of_an_earlier_run_are_pruned_though_no_document_has_them_now(api, tmp_path):
    rack = "inventory-rack"
    first = apply.apply(api.kubeconfig, profile(tmp_path, rack, configmap("old-kind", "default")), timeout=30)
    assert first["inventory"] == [["v1", "ConfigMap"]]
    only_namespace = profile(tmp_path, rack, namespace("inventory-ns"))
    # Without the earlier inventory, ConfigMaps are not looked at.
    result = apply.apply(api.kubeconfig, only_namespace, timeout=30)
    assert result["pruned"] == [] and get(api, "ConfigMap", "old-kind", "default") is not None
    result = apply.apply(api.kubeconfig, only_namespace, previous_inventory=first["inventory"], timeout=30)
    assert result["pruned"] == ["ConfigMap default/old-kind"]
    assert result["inventory"] == [["v1", "ConfigMap"], ["v1", "Namespace"]]
    assert gone_or_going(api, "ConfigMap", "old-kind", "default")
    # A kind the cluster no longer serves (its CRD gone) is skipped, not an
    # error, and the kinds after it are pruned still.
    apply.apply(api.kubeconfig, profile(tmp_path, rack, configmap("later-kind", "default"), name="later.yaml"),
                timeout=30)
    result = apply.apply(api.kubeconfig, only_namespace, timeout=30,
                         previous_inventory=[["example.com/v1", "Gone"], ["v1", "ConfigMap"]])
    assert result["pruned"] == ["ConfigMap default/later-kind"]
    assert result["inventory"] == [["example.com/v1", "Gone"], ["v1", "ConfigMap"], ["v1", "Namespace"]]


def test_the_jumphost_node_is_labelled_once_and_keeps_its_other_labels(api, tmp_path):
    dyn = api.dynamic()
    nodes = dyn.resources.get(api_version="v1", kind="Node")
    # Other tests' apply() labelled it already: take the label off, as on a fresh node.
    dyn.patch(nodes, name=NODE, body={"metadata": {"labels": {apply.JUMPHOST_LABEL: None}}},
              content_type="application/merge-patch+json")
    before = dyn.get(nodes, name=NODE).metadata.labels.to_dict()
    assert apply.JUMPHOST_LABEL not in before
    label = "node-restriction.kubernetes.io/rackboot-role=jumphost"
    assert apply.label_jumphost(dyn, NODE) == {"node": NODE, "label": label, "changed": True}
    assert apply.label_jumphost(dyn, NODE) == {"node": NODE, "label": label, "changed": False}
    labels = dyn.get(nodes, name=NODE).metadata.labels.to_dict()
    assert labels == {**before, "node-restriction.kubernetes.io/rackboot-role": "jumphost"}
    result = apply.apply(api.kubeconfig, profile(tmp_path, "placement-rack", configmap("p", "default")), timeout=30)
    assert result["placement"] == {"node": NODE, "label": label, "changed": False}


def test_a_missing_node_fails_the_label_naming_it(api):
    with pytest.raises(RackbootError) as caught:
        apply.label_jumphost(api.dynamic(), "no-such-node")
    assert str(caught.value) == ("labelling the jumphost's Node no-such-node "
                                 "(node-restriction.kubernetes.io/rackboot-role=jumphost): the API answered "
                                 "404 Not Found")
    assert type(caught.value) is RackbootError
    assert caught.value.hint == "kubectl get node on the jumphost; the agent tries again at its next run"


def test_a_kind_the_cluster_does_not_serve_is_bad_input(api, tmp_path):
    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "default"}}
    rack = profile(tmp_path, "unserved-rack", configmap("before", "default"), body)
    with pytest.raises(BadInput) as caught:
        apply.apply(api.kubeconfig, rack, timeout=30)
    assert str(caught.value) == (f"{rack.manifests[0]}: document 2 (Widget default/w): "
                                 "the cluster serves no Widget in example.com/v1")
    assert caught.value.hint == "check apiVersion and kind; custom resources need their CRD first"
    assert get(api, "ConfigMap", "before", "default") is not None     # what came before it was applied


def test_an_unreadable_kubeconfig_is_named(tmp_path):
    rack = profile(tmp_path, "no-api-rack", configmap("c", "default"))
    missing = tmp_path / "k3s.yaml"
    with pytest.raises(RackbootError) as caught:
        apply.apply(missing, rack, timeout=30)
    assert str(caught.value).startswith(f"{missing}: cannot use k3s's kubeconfig: ")
    assert caught.value.hint == "is k3s running? journalctl -u k3s"


class Recording:
    """The real DynamicClient, each API call's keyword arguments recorded."""

    def __init__(self, dyn, calls: list):
        self._dyn, self._calls = dyn, calls

    def __getattr__(self, name):
        target = getattr(self._dyn, name)
        if name not in ("get", "patch", "server_side_apply", "delete"):
            return target

        def call(*args, **kwargs):
            self._calls.append((name, kwargs))
            return target(*args, **kwargs)
        return call


def test_every_api_call_has_a_request_timeout(api, tmp_path, monkeypatch):
    """A hung API server must fail the step (and the agent try again), not
    hang the agent: no call of apply's goes without a finite timeout."""
    calls = []
    real_client = apply._client
    monkeypatch.setattr(apply, "_client", lambda kubeconfig: Recording(real_client(kubeconfig), calls))
    rack = "timeouts-rack"
    first = apply.apply(api.kubeconfig, profile(tmp_path, rack, namespace("timeouts-ns"),
                                                configmap("c", "timeouts-ns")), timeout=30)
    apply.apply(api.kubeconfig, profile(tmp_path, rack), previous_inventory=first["inventory"], timeout=30)
    assert {name for name, _ in calls} == {"get", "patch", "server_side_apply", "delete"} - \
        ({"patch"} if first["placement"]["changed"] is False else set())
    for name, kwargs in calls:
        timeout = kwargs.get("_request_timeout")
        assert isinstance(timeout, (int, float)) and 0 < timeout <= 60, (name, kwargs)


def test_the_profiles_secrets_go_to_the_api_from_their_references(api, tmp_path, monkeypatch):
    from firstboot import secrets, secretref
    from firstboot.profile.model import KubeSecret
    values = {"sm://rackboot-test/user": b"admin", "sm://rackboot-test/key": b"\x00binary\xff"}
    monkeypatch.setattr(secrets, "access", lambda ref: values[str(ref)])
    specs = (KubeSecret("login", "default", "Opaque", (("key", secretref.parse("sm://rackboot-test/key")),
                                                         ("user", secretref.parse("sm://rackboot-test/user")))),
             KubeSecret("tls", "default", "kubernetes.io/basic-auth", (("username", secretref.parse("sm://rackboot-test/user")),)))
    rack = types.SimpleNamespace(**{**vars(profile(tmp_path, "secrets-rack", configmap("s", "default"))),
                                    "secrets": specs})
    documents = apply.secret_documents(rack)
    assert [(d.source, d.index, str(d)) for d in documents] == [
        ("secrets", 1, "secrets: document 1 (Secret default/login)"),
        ("secrets", 2, "secrets: document 2 (Secret default/tls)")]
    assert documents[0].body == {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                 "metadata": {"name": "login", "namespace": "default"},
                                 "data": {"key": "AGJpbmFyef8=", "user": "YWRtaW4="}}
    result = apply.apply(api.kubeconfig, rack, timeout=30)
    assert result["secrets"] == ["default/login", "default/tls"]
    assert result["applied"] == ["ConfigMap default/s", "Secret default/login", "Secret default/tls"]
    login = get(api, "Secret", "login", "default")
    assert login.type == "Opaque" and login.data.to_dict() == {"key": "AGJpbmFyef8=", "user": "YWRtaW4="}
    assert get(api, "Secret", "tls", "default").type == "kubernetes.io/basic-auth"


class FailingDeletes(Recording):
    """Deletes answered by the given ApiExceptions first, one per delete."""

    def __init__(self, dyn, failures: list):
        super().__init__(dyn, [])
        self._failures = failures

    def __getattr__(self, name):
        if name == "delete" and self._failures:
            def delete(*args, **kwargs):
                raise self._failures.pop(0)
            return delete
        return getattr(self._dyn, name)


def api_exception(status: int, message: str):
    import json
    from kubernetes.client.exceptions import ApiException
    err = ApiException(status=status, reason="Reason")
    err.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                           "message": message})
    return err


def prune_with(api, tmp_path, monkeypatch, rack: str, *failures):
    real_client = apply._client
    first = apply.apply(api.kubeconfig, profile(tmp_path, rack, configmap(f"{rack}-gone", "default")), timeout=30)
    monkeypatch.setattr(apply, "_client", lambda kubeconfig: FailingDeletes(real_client(kubeconfig), list(failures)))
    return apply.apply(api.kubeconfig, profile(tmp_path, rack), previous_inventory=first["inventory"], timeout=30)


def test_a_delete_answered_not_found_is_a_prune_done(api, tmp_path, monkeypatch):
    result = prune_with(api, tmp_path, monkeypatch, "gone-rack", api_exception(404, "not found"))
    assert result["pruned"] == ["ConfigMap default/gone-rack-gone"]


def test_a_delete_answered_conflict_is_done_only_if_the_object_is_going(api, tmp_path, monkeypatch):
    """409 for an object whose deletion began since it was listed: done. 409
    for one that is still there and not being deleted: the API's refusal."""
    with pytest.raises(BadInput) as caught:
        prune_with(api, tmp_path, monkeypatch, "conflict-rack", api_exception(409, "conflict"))
    assert str(caught.value) == ("pruning ConfigMap default/conflict-rack-gone: the API refused it (409): "
                                 "conflict")
    # Gone by the time it is looked at again: done.
    monkeypatch.undo()
    dyn = api.dynamic()
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")

    class GoneMeanwhile(FailingDeletes):
        def __getattr__(self, name):
            if name == "delete" and self._failures:
                def delete(resource, name, namespace, **kwargs):
                    self._dyn.delete(resource, name=name, namespace=namespace)
                    raise self._failures.pop(0)
                return delete
            return getattr(self._dyn, name)
    real_client = apply._client
    first = apply.apply(api.kubeconfig, profile(tmp_path, "conflict-rack-2", configmap("c2", "default")),
                        timeout=30)
    monkeypatch.setattr(apply, "_client",
                        lambda kubeconfig: GoneMeanwhile(real_client(kubeconfig), [api_exception(409, "conflict")]))
    result = apply.apply(api.kubeconfig, profile(tmp_path, "conflict-rack-2"), previous_inventory=first["inventory"],
                         timeout=30)
    assert result["pruned"] == ["ConfigMap default/c2"]
    assert dyn.get(configmaps, namespace="default", label_selector="rackboot.dev/rack=conflict-rack-2").items == []


def test_other_delete_failures_fail_the_prune_naming_the_object(api, tmp_path, monkeypatch):
    with pytest.raises(RackbootError) as caught:
        prune_with(api, tmp_path, monkeypatch, "failing-rack", api_exception(503, "etcd is down"))
    assert type(caught.value) is RackbootError
    assert str(caught.value) == "pruning ConfigMap default/failing-rack-gone: the API refused it (503): etcd is down"
    assert caught.value.hint == "the agent tries again at its next run"


def test_an_api_that_does_not_answer_fails_the_step_to_be_tried_again(api, tmp_path):
    import socket
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = yaml.safe_load(api.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    kubeconfig = tmp_path / "k3s.yaml"
    kubeconfig.write_text(yaml.safe_dump(config))
    with pytest.raises(RackbootError) as caught:
        apply.apply(kubeconfig, profile(tmp_path, "unreachable-rack", configmap("c", "default")), timeout=30)
    assert type(caught.value) is RackbootError
    assert str(caught.value).startswith("the k3s API is not reachable (MaxRetryError: ")
    assert caught.value.hint == "journalctl -u k3s; the agent tries again at its next run"


def test_a_namespace_back_in_the_profile_while_terminating_is_made_afresh(api, tmp_path):
    """Pruned, it terminates for a moment (the stand-in's namespace delay);
    applied again meanwhile, apply waits until it is gone and makes it anew
    with what goes in it, rather than applying into a namespace that goes."""
    rack, ns = "afresh-rack", "afresh-ns"
    wanted = profile(tmp_path, rack, namespace(ns), configmap("settings", ns, a="1"))
    first = apply.apply(api.kubeconfig, wanted, timeout=30)
    pruned = apply.apply(api.kubeconfig, profile(tmp_path, rack, name="empty.yaml"),
                         previous_inventory=first["inventory"], timeout=30)
    assert pruned["pruned"] == [f"ConfigMap {ns}/settings", f"Namespace {ns}"]
    assert get(api, "Namespace", ns).metadata.deletionTimestamp        # still terminating
    again = apply.apply(api.kubeconfig, wanted, previous_inventory=first["inventory"], timeout=30)
    assert again["applied"] == [f"Namespace {ns}", f"ConfigMap {ns}/settings"]
    made = get(api, "Namespace", ns)
    assert made.status.phase == "Active" and not made.metadata.deletionTimestamp
    assert get(api, "ConfigMap", "settings", ns).data.to_dict() == {"a": "1"}


def test_the_profile_takes_over_fields_another_manager_set(api, tmp_path):
    """Forced: the profile is the truth. A field someone else applied is the
    profile's again after apply; what only they set stays theirs."""
    code, _, body = api.apply("/api/v1/namespaces/default/configmaps/taken-over",
                              configmap("taken-over", "default", a="by hand", b="theirs"), manager="kubectl")
    assert code == 201, body
    apply.apply(api.kubeconfig, profile(tmp_path, "forced-rack", configmap("taken-over", "default", a="profile")),
                timeout=30)
    found = get(api, "ConfigMap", "taken-over", "default")
    assert found.data.to_dict() == {"a": "profile", "b": "theirs"}
