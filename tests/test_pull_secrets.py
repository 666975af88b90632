"""A profile's secret_imports and image_pull_secrets through firstboot/apply.py,
against one k3s stand-in server (the strict API of tests/test_k3s_api_strict.py)
and, for berglas, the Cloud Storage and KMS doubles: secrets stored exactly as
the team's add-secret-from-stdin.sh stores them reach the API with their
values; a stored object that cannot be its Secret stops apply before anything
is written; a pull secret goes on the namespace's default ServiceAccount, which
kube-controller-manager makes some time after the namespace, before any
workload, keeping the entries others put there."""

import base64
import types

import pytest
import yaml

from firstboot import apply, secretref, service_accounts
from firstboot.errors import BadInput
from firstboot.profile.model import PullSecret, SecretImport
from tests import test_k3s_api_strict as strict_api
from tests.doubles.k8s_api.store import Store
from tests.test_apply_prune import Recording, get
from tests.test_berglas import BUCKET, DOCKER_CONFIG, TEAM_SECRETS, google, kubectl_secret, team_store

api = strict_api.api                  # one stand-in server for this module too
pytestmark = pytest.mark.machine      # it runs in a pretend machine
__all__ = ["google"]                  # the fixture, used by name

NODE = "strict-api"


def profile(tmp_path, rack: str, documents, imports=(), pulls=()):
    manifest = tmp_path / f"{rack}.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    return types.SimpleNamespace(rack=rack, manifests=(manifest,), secrets=(), secret_imports=tuple(imports),
                                 image_pull_secrets=tuple(pulls), jumphost=types.SimpleNamespace(hostname=NODE))


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deployment(name: str, ns: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": "gcr.io/skia-public/app:1"}]}}}}


def rack4_import(ns: str, required=()) -> SecretImport:
    return SecretImport(secretref.parse_prefix(f"berglas://{BUCKET}/skolo-rack4/"), ns, tuple(required), ())


def pull_names(api, ns: str) -> list[str]:
    account = get(api, "ServiceAccount", "default", ns)
    return [ref.name for ref in account.imagePullSecrets or ()]


def test_secrets_stored_the_teams_way_reach_the_api_with_their_values(api, tmp_path, google):
    for name, secret_yaml in TEAM_SECRETS.items():
        team_store(google.bucket, "skolo-rack4", name, secret_yaml)
    rack = profile(tmp_path, "import-rack", [namespace("import-ns")], [rack4_import("import-ns")])
    result = apply.apply(api.kubeconfig, rack, timeout=30)
    assert result["imported"] == [f"import-ns/{name}" for name in sorted(TEAM_SECRETS)]
    pull = get(api, "Secret", "gcr-io-skia-public-pull", "import-ns")
    assert pull.type == "kubernetes.io/dockerconfigjson"
    assert base64.b64decode(pull.data[".dockerconfigjson"]) == DOCKER_CONFIG
    power = get(api, "Secret", "power-cycle", "import-ns")
    assert power.type == "Opaque" and base64.b64decode(power.data["password"]) == b"hunter2-not-for-logs"
    assert power.metadata.labels["rackboot.dev/rack"] == "import-rack"     # pruned with the rack's objects
    assert "hunter2" not in repr(result)


def test_a_stored_secret_that_cannot_be_imported_stops_apply_before_any_write(api, tmp_path, google):
    team_store(google.bucket, "skolo-rack4", "alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    team_store(google.bucket, "skolo-rack4", "power-cycle", kubectl_secret("power-cycle", a=b"1").replace(
        b"metadata:\n", b"metadata:\n  namespace: elsewhere\n"))
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first", "namespace": "half-ns"}}
    rack = profile(tmp_path, "half-rack", [namespace("half-ns"), configmap], [rack4_import("half-ns")])
    with pytest.raises(BadInput, match=r"skolo-rack4/power-cycle#\d+ \(Secret power-cycle\): its Secret YAML "
                                       r"is for namespace 'elsewhere'"):
        apply.apply(api.kubeconfig, rack, timeout=30)
    assert get(api, "Namespace", "half-ns") is None and get(api, "ConfigMap", "first", "half-ns") is None


def test_an_imported_secret_that_a_manifest_also_makes_is_refused(api, tmp_path, google):
    team_store(google.bucket, "skolo-rack4", "alert-to-pubsub", TEAM_SECRETS["alert-to-pubsub"])
    mine = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alert-to-pubsub", "namespace": "twice-ns"}}
    rack = profile(tmp_path, "twice-rack", [namespace("twice-ns"), mine], [rack4_import("twice-ns")])
    with pytest.raises(BadInput, match=r"^secret_imports\[0\] berglas://.*/skolo-rack4/: document 1 \(Secret "
                                       r"twice-ns/alert-to-pubsub\) is also .*twice-rack.yaml: document 2"):
        apply.apply(api.kubeconfig, rack, timeout=30)
    assert get(api, "Namespace", "twice-ns") is None


def test_a_pull_secret_goes_on_the_default_service_account_before_any_workload(api, tmp_path, monkeypatch):
    """The namespace is new: its default ServiceAccount comes some time after
    it (kube-controller-manager), and the agent waits for it."""
    calls = []
    real_client = apply._client
    monkeypatch.setattr(apply, "_client", lambda kubeconfig: Recording(real_client(kubeconfig), calls))
    pull = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "pull", "namespace": "pulls-ns"},
            "data": {".dockerconfigjson": base64.b64encode(DOCKER_CONFIG).decode()}}
    rack = profile(tmp_path, "pulls-rack", [namespace("pulls-ns"), deployment("app", "pulls-ns"), pull],
                   pulls=[PullSecret("pulls-ns", "pull")])
    result = apply.apply(api.kubeconfig, rack, timeout=30)
    assert result["pull_secrets"] == ["pulls-ns: +pull"] and pull_names(api, "pulls-ns") == ["pull"]
    bodies = [kwargs.get("body") or {} for _, kwargs in calls]
    attached = next(i for i, body in enumerate(bodies) if "imagePullSecrets" in body)
    deployed = next(i for i, body in enumerate(bodies) if body.get("kind") == "Deployment")
    assert attached < deployed
    account = get(api, "ServiceAccount", "default", "pulls-ns")
    assert service_accounts.FIELD_MANAGER in [entry.manager for entry in account.metadata.managedFields]
    assert "app.kubernetes.io/managed-by" not in (account.metadata.labels or {})    # never pruned
    again = apply.apply(api.kubeconfig, rack, timeout=30)
    assert again["pull_secrets"] == [] and get(api, "ServiceAccount", "default", "pulls-ns").metadata.resourceVersion \
        == account.metadata.resourceVersion


def test_entries_others_added_are_kept_and_only_rackboots_are_taken_out(api, tmp_path):
    strict_api.namespace(api, "shared-ns")
    rack = profile(tmp_path, "shared-rack", [namespace("shared-ns")], pulls=[PullSecret("shared-ns", "ours")])
    apply.apply(api.kubeconfig, rack, timeout=30)          # waits for the ServiceAccount, adds ours
    code, _, body = api.call("PATCH", "/api/v1/namespaces/shared-ns/serviceaccounts/default",
                             {"imagePullSecrets": [{"name": "ours"}, {"name": "theirs"}]},
                             "application/merge-patch+json", fieldManager="someone")
    assert code == 200, body
    rack = profile(tmp_path, "shared-rack", [namespace("shared-ns")], pulls=[PullSecret("shared-ns", "second")])
    result = apply.apply(api.kubeconfig, rack, timeout=30)
    assert result["pull_secrets"] == ["shared-ns: +second -ours"]
    assert pull_names(api, "shared-ns") == ["theirs", "second"]


def test_a_pull_secret_in_a_namespace_that_does_not_exist_is_bad_input(api, tmp_path):
    rack = profile(tmp_path, "nons-rack", [], pulls=[PullSecret("no-such-ns", "pull")])
    with pytest.raises(BadInput, match="image_pull_secrets: namespace 'no-such-ns' does not exist"):
        apply.apply(api.kubeconfig, rack, timeout=30)


def test_a_write_with_a_stale_resource_version_is_a_conflict(api):
    """Optimistic concurrency, as the API server's: what makes the agent read again."""
    strict_api.namespace(api, "stale-ns")
    path = "/api/v1/namespaces/stale-ns/configmaps"
    code, _, made = api.call("POST", path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    assert code == 201, made
    stale = made["metadata"]["resourceVersion"]
    assert api.call("PATCH", f"{path}/c", {"data": {"a": "1"}}, "application/merge-patch+json")[0] == 200
    code, _, body = api.call("PATCH", f"{path}/c", {"metadata": {"resourceVersion": stale}, "data": {"a": "2"}},
                             "application/merge-patch+json")
    assert (code, body["reason"]) == (409, "Conflict")
    assert body["message"] == ('Operation cannot be fulfilled on configmaps "c": the object has been modified; '
                               "please apply your changes to the latest version and try again")


def test_the_stand_in_makes_a_default_service_account_after_the_namespace_not_with_it(tmp_path, monkeypatch):
    """kube-controller-manager's serviceaccounts controller, as the stand-in's store runs it."""
    monkeypatch.setenv("K3S_STANDIN_SERVICEACCOUNT_DELAY", "3600")     # the controller has not run yet
    store = Store(tmp_path / "db.json")
    store.put("namespaces", "", namespace("fresh"))
    assert store.get("serviceaccounts", "fresh", "default") is None
    store._default_serviceaccount("fresh")                              # now it has
    assert store.get("serviceaccounts", "fresh", "default")["metadata"]["namespace"] == "fresh"
    store.delete("serviceaccounts", "fresh", "default")
    store.terminate_namespace("fresh")
    store._default_serviceaccount("fresh")                              # not in a namespace that is going
    assert store.get("serviceaccounts", "fresh", "default") is None
