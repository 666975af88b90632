"""The k3s stand-in's Kubernetes API is as strict as the real API server
(v1.31) on what rackboot sends: objects decoded against the version's OpenAPI
schemas and validated (names, required and immutable fields, Secret and
ConfigMap data), server-side apply's per-manager field ownership, namespaces
that terminate before they go. Each answer is checked against the real
API server's code, Status body and wording (see tests/doubles/k8s_api).

One stand-in server (the bundle's `k3s` executable, as a pretend machine runs
it) serves the whole file; each test works in namespaces of its own. Against
real k3s (untested here: no real bundle on this machine):
RACKBOOT_K3S_BUNDLE=DIR runs the same assertions against DIR's `k3s server`;
tests that need the stand-in's knobs (K3S_STANDIN_READY_DELAY) skip."""

import base64
import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from firstboot import apply as rackboot_apply
from tests.doubles import k3s_standin_bundle
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO, Machine
from tests.lib.rack import Rack

VERSION = "v1.31.4+k3s1"
NAMESPACE_DELAY = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    """Raw requests with the admin's client certificate: every header and byte of the answer."""

    def __init__(self, kubeconfig: Path, scratch: Path):
        config = yaml.safe_load(kubeconfig.read_text())
        self.url = config["clusters"][0]["cluster"]["server"]
        user = config["users"][0]["user"]
        files = {}
        for name, key in (("ca", config["clusters"][0]["cluster"]["certificate-authority-data"]),
                          ("crt", user["client-certificate-data"]), ("key", user["client-key-data"])):
            files[name] = scratch / f"admin.{name}"
            files[name].write_bytes(base64.b64decode(key))
        self.context = ssl.create_default_context(cafile=str(files["ca"]))
        self.context.load_cert_chain(str(files["crt"]), str(files["key"]))
        self.kubeconfig = kubeconfig

    def call(self, method: str, path: str, body=None, content_type: str = "application/json", **query):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": content_type, "User-Agent": "strict-test/1.0"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return response.status, response.headers, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, err.headers, json.loads(err.read())

    def apply(self, path: str, body: dict, manager: str = "rackboot", force: bool = True, **query):
        if force:
            query["force"] = "true"
        return self.call("PATCH", path, body, "application/apply-patch+yaml", fieldManager=manager, **query)

    def dynamic(self):
        from kubernetes import config
        from kubernetes.dynamic import DynamicClient
        return DynamicClient(config.new_client_from_config(str(self.kubeconfig)))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict-api")
    real = k3s_standin_bundle.real_bundle()
    binary = real / "k3s" if real else root / "k3s"
    if not real:
        binary.write_bytes(k3s_standin_bundle.standin_binary(VERSION))
        binary.chmod(0o755)
    machine = Machine(root / "machine", "console=ttyS0")
    port = free_port()
    log = (root / "k3s.log").open("w")
    server = subprocess.Popen(machine.command([str(binary), "server", f"--https-listen-port={port}",
                                               "--node-name=strict-api", f"--node-ip={machine.address}",
                                               "--token=strict-api-token"]),
                              env=machine.env(K3S_STANDIN_NAMESPACE_DELAY=NAMESPACE_DELAY),
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        kubeconfig = machine.path("/etc/rancher/k3s/k3s.yaml")
        deadline = time.monotonic() + 60
        while not kubeconfig.exists():
            assert server.poll() is None, (root / "k3s.log").read_text()
            assert time.monotonic() < deadline, "the stand-in wrote no kubeconfig"
            time.sleep(0.1)
        client = Api(machine.kubeconfig(root / "test-host"), root)
        while client.call("GET", "/api/v1/namespaces/default")[0] != 200:
            assert time.monotonic() < deadline, "the stand-in's API does not answer"
            time.sleep(0.1)
        yield client
    finally:
        machine.destroy()
        server.wait()
        log.close()


def test_a_peer_silent_in_its_handshake_holds_up_no_one_else(api):
    """A peer that connects and goes silent (a Pi powered off mid-handshake:
    no FIN, no RST ever comes) costs only its own connection, as with Go's
    server, which shakes hands in each connection's goroutine: others are
    answered meanwhile. (The stand-in shook hands in accept() and stopped
    serving everyone: the virtual rack's Pi that stayed "activating".)"""
    address = urllib.parse.urlsplit(api.url)
    silent = [socket.create_connection((address.hostname, address.port)) for _ in range(3)]
    silent[0].sendall(b"\x16\x03\x01")          # the start of a ClientHello, and no more
    try:
        code, _, body = api.call("GET", "/api/v1/namespaces/default")
        assert code == 200, body
    finally:
        for connection in silent:
            connection.close()


def namespace(api: Api, name: str) -> str:
    code, _, body = api.apply(f"/api/v1/namespaces/{name}", {"apiVersion": "v1", "kind": "Namespace",
                                                            "metadata": {"name": name}})
    assert code in (200, 201), body
    return name


def deployment(name: str, ns: str, **spec) -> dict:
    base = {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "main", "image": "registry.example/app:1"}]}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {**base, **spec}}


def assert_invalid(answer, kind: str, name: str, field: str, message: str, group: str = ""):
    """The real 422: Status Failure, reason Invalid, details naming the object and each field."""
    code, _, body = answer
    assert code == 422, body
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["reason"] == "Invalid" and body["code"] == 422
    qualified = f"{kind}.{group}" if group else kind
    assert body["message"].startswith(f'{qualified} "{name}" is invalid: ')
    assert f"{field}: {message}" in body["message"]
    details = body["details"]
    assert details["name"] == name and details["kind"] == kind and details.get("group", "") == group
    assert any(c["field"] == field and c["message"].startswith(message) for c in details["causes"]), details["causes"]
    return body


# --- validation --------------------------------------------------------------

def test_version_answers_with_and_without_the_slash(api):
    """The API server's /version route (a go-restful web service at /version
    with GET "/") answers both paths; the Python client's VersionApi asks for
    /version/, kubectl for /version."""
    for path in ("/version", "/version/"):
        code, _, body = api.call("GET", path)
        assert code == 200 and body["major"] == "1" and body["gitVersion"].startswith("v1."), (path, code, body)


def test_deployment_without_selector_or_template_is_invalid(api):
    ns = namespace(api, "v-required")
    bare = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1}}
    body = assert_invalid(api.apply(f"/apis/apps/v1/namespaces/{ns}/deployments/web", bare),
                          "Deployment", "web", "spec.selector", "Required value", "apps")
    assert {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.template"} in \
        body["details"]["causes"]
    assert_invalid(api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", bare),
                   "Deployment", "web", "spec.template", "Required value", "apps")
    no_image = deployment("web", ns)
    del no_image["spec"]["template"]["spec"]["containers"][0]["image"]
    assert_invalid(api.apply(f"/apis/apps/v1/namespaces/{ns}/deployments/web", no_image),
                   "Deployment", "web", "spec.template.spec.containers[0].image", "Required value", "apps")
    unselected = deployment("web", ns, selector={"matchLabels": {"app": "other"}})
    assert_invalid(api.apply(f"/apis/apps/v1/namespaces/{ns}/deployments/web", unselected),
                   "Deployment", "web", "spec.template.metadata.labels", "Invalid value", "apps")
    assert api.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")[0] == 404


def test_a_wrong_type_fails_decoding_as_the_api_server_decodes(api):
    """Server-side apply converts the applied configuration to a typed value
    first: a wrong type is a plain error there, which the API server answers
    500 (kubernetes#122480). A create's JSON decoder answers 400."""
    ns = namespace(api, "v-types")
    two = deployment("web", ns, replicas="two")
    code, _, body = api.apply(f"/apis/apps/v1/namespaces/{ns}/deployments/web", two)
    assert code == 500 and body["status"] == "Failure" and "reason" not in body, body
    assert body["message"].startswith(f"failed to create typed patch object ({ns}/web; apps/v1, Kind=Deployment): "
                                      ".spec.replicas: expected numeric (int or float)")
    code, _, body = api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", two)
    assert (code, body["reason"]) == (400, "BadRequest")
    assert body["message"] == ('Deployment in version "v1" cannot be handled as a Deployment: json: cannot '
                               "unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32")
    counted = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "counts", "namespace": ns},
               "data": {"count": 2}}
    code, _, body = api.apply(f"/api/v1/namespaces/{ns}/configmaps/counts", counted)
    assert code == 500 and body["message"].startswith(
        f"failed to create typed patch object ({ns}/counts; /v1, Kind=ConfigMap): .data.count: expected string")
    code, _, body = api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", counted)
    assert code == 400 and body["message"].endswith(
        "json: cannot unmarshal number into Go struct field ConfigMap.data of type string")
    assert api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/counts")[0] == 404


def test_unknown_fields(api):
    """Apply refuses them whatever fieldValidation says; a create drops them
    with a warning, or refuses them under fieldValidation=Strict."""
    ns = namespace(api, "v-unknown")
    typo = deployment("web", ns)
    typo["spec"]["replica"] = 2
    for validation in ("Ignore", "Warn", "Strict"):
        code, _, body = api.apply(f"/apis/apps/v1/namespaces/{ns}/deployments/web", typo, fieldValidation=validation)
        assert code == 500, body
        assert body["message"] == (f"failed to create typed patch object ({ns}/web; apps/v1, Kind=Deployment): "
                                   ".spec.replica: field not declared in schema")
    code, _, body = api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", typo, fieldValidation="Strict")
    assert (code, body["reason"], body["message"]) == (400, "BadRequest",
                                                       'strict decoding error: unknown field "spec.replica"')
    code, headers, body = api.call("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", typo)
    assert code == 201, body
    assert headers.get_all("Warning") == ['299 - "unknown field \\"spec.replica\\""']
    assert "replica" not in body["spec"]


def test_bad_names_are_invalid(api):
    ns = namespace(api, "v-names")
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": ns}, "data": {}}
    body = assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/configmaps/Bad_Name", bad), "ConfigMap", "Bad_Name",
                          "metadata.name", 'Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist')
    assert body["details"]["causes"][0]["reason"] == "FieldValueInvalid"
    assert_invalid(api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                           "metadata": {"name": "has.dot"}}),
                   "Namespace", "has.dot", "metadata.name", 'Invalid value: "has.dot": a lowercase RFC 1123 label')
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1st", "namespace": ns},
               "spec": {"ports": [{"port": 80}]}}
    assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/services/1st", service), "Service", "1st",
                   "metadata.name", 'Invalid value: "1st": a DNS-1035 label must consist')
    labelled = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "labelled", "namespace": ns, "labels": {"rack": "has space"}}}
    assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/configmaps/labelled", labelled), "ConfigMap", "labelled",
                   "metadata.labels", 'Invalid value: "has space": a valid label must be an empty string')


def test_secret_data_must_be_base64(api):
    ns = namespace(api, "v-base64")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns},
              "data": {"key": "not base64!"}}
    code, _, body = api.call("POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    assert (code, body["message"]) == (400, 'Secret in version "v1" cannot be handled as a Secret: '
                                            "illegal base64 data at input byte 3")
    code, _, body = api.apply(f"/api/v1/namespaces/{ns}/secrets/s", secret)
    assert code == 500 and "illegal base64 data at input byte 3" in body["message"], body
    assert api.call("GET", f"/api/v1/namespaces/{ns}/secrets/s")[0] == 404
    bad_key = {**secret, "data": {"key/slash": "dg=="}}
    assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/secrets/s", bad_key), "Secret", "s",
                   "data[key/slash]", 'Invalid value: "key/slash": a valid config key must consist')


def test_immutable_fields_are_refused_on_update(api):
    ns = namespace(api, "v-immutable")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    assert api.apply(path, deployment("web", ns))[0] == 201
    moved = deployment("web", ns, selector={"matchLabels": {"app": "web", "tier": "x"}})
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    assert_invalid(api.apply(path, moved), "Deployment", "web", "spec.selector", "Invalid value", "apps")
    assert "field is immutable" in api.apply(path, moved)[2]["message"]

    secret_path = f"/api/v1/namespaces/{ns}/secrets/s"
    opaque = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "s", "namespace": ns},
              "data": {"k": "dg=="}}
    assert api.apply(secret_path, opaque)[0] == 201
    assert_invalid(api.apply(secret_path, {**opaque, "type": "example.com/other"}), "Secret", "s", "type",
                   'Invalid value: "example.com/other": field is immutable')

    frozen = {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
              "metadata": {"name": "frozen", "namespace": ns}, "data": {"k": "v"}}
    assert api.apply(f"/api/v1/namespaces/{ns}/configmaps/frozen", frozen)[0] == 201
    assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/configmaps/frozen", {**frozen, "data": {"k": "w"}}),
                   "ConfigMap", "frozen", "data", "Forbidden: field is immutable when `immutable` is set")

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": ns},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    code, _, created = api.apply(f"/api/v1/namespaces/{ns}/services/svc", service)
    assert code == 201 and created["spec"]["clusterIP"].startswith("10.43.")
    assert api.apply(f"/api/v1/namespaces/{ns}/services/svc", service)[0] == 200    # left out: kept
    moved = {**service, "spec": {**service["spec"], "clusterIP": "10.43.200.200"}}
    assert_invalid(api.apply(f"/api/v1/namespaces/{ns}/services/svc", moved), "Service", "svc",
                   "spec.clusterIPs[0]", 'Invalid value: []string{"10.43.200.200"}: may not change once set')

    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once", "namespace": ns},
           "spec": {"template": {"spec": {"restartPolicy": "Never",
                                          "containers": [{"name": "main", "image": "registry.example/a:1"}]}}}}
    assert api.apply(f"/apis/batch/v1/namespaces/{ns}/jobs/once", job)[0] == 201
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.example/a:2"
    assert_invalid(api.apply(f"/apis/batch/v1/namespaces/{ns}/jobs/once", job), "Job", "once", "spec.template",
                   "Invalid value", "batch")


# --- server-side apply -------------------------------------------------------

def rack_configmap(ns: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rack-info", "namespace": ns,
                                                                  "labels": {"rackboot.dev/rack": "example"}},
            "data": data}


def test_a_forced_apply_keeps_what_other_managers_own(api):
    """rackboot's forced apply (as firstboot/apply.py sends it) takes over only
    the fields it sends: a label and a data key another manager added stay."""
    ns = namespace(api, "ssa-keep")
    dyn = api.dynamic()
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")

    def rackboot(data):
        return dyn.server_side_apply(configmaps, body=rack_configmap(ns, data), name="rack-info", namespace=ns,
                                     field_manager=rackboot_apply.FIELD_MANAGER, force_conflicts=True)
    rackboot({"rack": "example", "owner": "rackboot"})
    code, _, _ = api.call("PATCH", f"/api/v1/namespaces/{ns}/configmaps/rack-info",
                          {"metadata": {"labels": {"team": "lab"}}, "data": {"extra": "by hand"}},
                          "application/merge-patch+json", fieldManager="kubectl-edit")
    assert code == 200
    result = rackboot({"rack": "example", "owner": "rackboot"}).to_dict()
    assert result["metadata"]["labels"] == {"rackboot.dev/rack": "example", "team": "lab"}
    assert result["data"] == {"rack": "example", "owner": "rackboot", "extra": "by hand"}
    managers = {(e["manager"], e["operation"]): e["fieldsV1"] for e in result["metadata"]["managedFields"]}
    assert managers[("kubectl-edit", "Update")] == {"f:data": {"f:extra": {}}, "f:metadata": {"f:labels": {"f:team": {}}}}
    assert managers[("rackboot", "Apply")]["f:data"] == {"f:owner": {}, "f:rack": {}}
    # A key rackboot no longer sends goes; the other manager's stay.
    result = rackboot({"rack": "example"}).to_dict()
    assert result["data"] == {"rack": "example", "extra": "by hand"}


def test_an_unforced_conflicting_apply_gets_409_naming_fields_and_managers(api):
    ns = namespace(api, "ssa-conflict")
    path = f"/api/v1/namespaces/{ns}/configmaps/rack-info"
    assert api.apply(path, rack_configmap(ns, {"owner": "rackboot"}))[0] == 201
    code, _, _ = api.call("PATCH", path, {"data": {"owner": "someone else"}}, "application/merge-patch+json",
                          fieldManager="kubectl-edit")
    assert code == 200
    code, _, body = api.apply(path, rack_configmap(ns, {"owner": "rackboot"}), force=False)
    assert code == 409, body
    assert (body["kind"], body["status"], body["reason"]) == ("Status", "Failure", "Conflict")
    assert body["message"].startswith('Apply failed with 1 conflict: conflict with "kubectl-edit" using v1 at ')
    assert body["message"].endswith(": .data.owner")
    [cause] = body["details"]["causes"]
    assert cause["reason"] == "FieldManagerConflict" and cause["field"] == ".data.owner"
    assert cause["message"].startswith('conflict with "kubectl-edit" using v1')
    # The same value is no conflict (both own it); forced, rackboot takes the field over.
    assert api.apply(path, rack_configmap(ns, {"owner": "someone else"}), force=False)[0] == 200
    code, _, body = api.apply(path, rack_configmap(ns, {"owner": "rackboot"}))
    assert code == 200 and body["data"]["owner"] == "rackboot"
    assert [e["manager"] for e in body["metadata"]["managedFields"]] == ["rackboot"]


def test_a_field_another_manager_also_owns_stays_when_the_applier_drops_it(api):
    ns = namespace(api, "ssa-shared")
    path = f"/api/v1/namespaces/{ns}/configmaps/rack-info"
    assert api.apply(path, rack_configmap(ns, {"shared": "v", "mine": "m"}))[0] == 201
    assert api.apply(path, rack_configmap(ns, {"shared": "v"}), manager="other", force=False)[0] == 200
    code, _, body = api.apply(path, rack_configmap(ns, {}))
    assert code == 200 and body["data"] == {"shared": "v"}


def test_list_items_are_owned_by_their_keys(api):
    """Containers by name: another manager's container in the same Deployment stays."""
    ns = namespace(api, "ssa-lists")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/web"
    assert api.apply(path, deployment("web", ns))[0] == 201
    sidecar = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
               "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "registry.example/s:1"}]}}}}
    code, _, body = api.apply(path, sidecar, manager="mesh", force=False)
    assert code == 200, body
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["main", "sidecar"]
    code, _, body = api.apply(path, deployment("web", ns))
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["main", "sidecar"]
    mesh = next(e for e in body["metadata"]["managedFields"] if e["manager"] == "mesh")
    containers = mesh["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert set(containers) == {'k:{"name":"sidecar"}'}


def test_dry_run_saves_nothing(api):
    ns = namespace(api, "ssa-dry")
    path = f"/api/v1/namespaces/{ns}/configmaps/rack-info"
    code, _, body = api.apply(path, rack_configmap(ns, {"a": "1"}), dryRun="All")
    assert code == 201 and body["data"] == {"a": "1"}
    assert api.call("GET", path)[0] == 404
    assert api.apply(path, rack_configmap(ns, {"a": "1"}))[0] == 201
    version = api.call("GET", path)[2]["metadata"]["resourceVersion"]
    code, _, body = api.apply(path, rack_configmap(ns, {"a": "2"}), dryRun="All")
    assert code == 200 and body["data"] == {"a": "2"}
    stored = api.call("GET", path)[2]
    assert stored["data"] == {"a": "1"} and stored["metadata"]["resourceVersion"] == version
    code, _, _ = api.call("DELETE", path, dryRun="All")
    assert code == 200 and api.call("GET", path)[0] == 200


def test_a_second_identical_apply_is_no_new_version(api):
    ns = namespace(api, "ssa-noop")
    path = f"/api/v1/namespaces/{ns}/configmaps/rack-info"
    first = api.apply(path, rack_configmap(ns, {"a": "1"}))[2]
    second = api.apply(path, rack_configmap(ns, {"a": "1"}))[2]
    assert first["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]


# --- namespaces --------------------------------------------------------------

def test_a_deleted_namespace_terminates_then_goes_with_its_contents(api):
    ns = namespace(api, "going")
    path = f"/api/v1/namespaces/{ns}/configmaps/rack-info"
    assert api.apply(path, rack_configmap(ns, {"a": "1"}))[0] == 201
    code, _, body = api.call("DELETE", f"/api/v1/namespaces/{ns}")
    assert code == 200 and body["kind"] == "Namespace"
    assert body["status"]["phase"] == "Terminating" and body["metadata"]["deletionTimestamp"]
    code, _, body = api.apply(f"/api/v1/namespaces/{ns}/configmaps/late", rack_configmap(ns, {}) | {
        "metadata": {"name": "late", "namespace": ns}})
    assert code == 403, body
    assert body["reason"] == "Forbidden"
    assert body["message"] == (f'configmaps "late" is forbidden: unable to create new content in namespace {ns} '
                               "because it is being terminated")
    assert body["details"] == {"name": "late", "kind": "configmaps", "causes": [
        {"reason": "NamespaceTerminating", "message": f"namespace {ns} is being terminated",
         "field": "metadata.namespace"}]}
    code, _, body = api.call("DELETE", f"/api/v1/namespaces/{ns}")
    assert (code, body["reason"]) == (409, "Conflict")
    assert api.call("GET", path)[0] == 200        # until the namespace controller gets to it
    deadline = time.monotonic() + NAMESPACE_DELAY + 10
    while api.call("GET", f"/api/v1/namespaces/{ns}")[0] != 404:
        assert time.monotonic() < deadline, "the namespace never went"
        time.sleep(0.1)
    assert api.call("GET", path)[0] == 404
    assert namespace(api, ns) == ns and api.apply(path, rack_configmap(ns, {"a": "1"}))[0] == 201


@pytest.mark.parametrize("name", ["default", "kube-system", "kube-public"])
def test_system_namespaces_may_not_be_deleted(api, name):
    code, _, body = api.call("DELETE", f"/api/v1/namespaces/{name}")
    assert code == 403, body
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    "reason": "Forbidden", "details": {"name": name, "kind": "namespaces"}, "code": 403}
    assert api.call("GET", f"/api/v1/namespaces/{name}")[2]["status"]["phase"] == "Active"


def test_kube_node_lease_may_be_deleted_and_comes_back(api):
    """Not one of NamespaceLifecycle's immortal namespaces: it terminates, and
    the API server's system-namespaces controller makes it again."""
    code, _, body = api.call("DELETE", "/api/v1/namespaces/kube-node-lease")
    assert code == 200 and body["status"]["phase"] == "Terminating"
    deadline = time.monotonic() + NAMESPACE_DELAY + 10
    while True:
        code, _, body = api.call("GET", "/api/v1/namespaces/kube-node-lease")
        if code == 200 and body["status"]["phase"] == "Active":
            break
        assert time.monotonic() < deadline, "kube-node-lease never came back"
        time.sleep(0.1)

# --- what the stricter API shows of rackboot's apply step --------------------
# Findings against firstboot/apply.py, written as the behaviour it should
# have; fixed by 9b958db (firstboot/rollout.py and apply's error classes).

TOKEN = b"rackboot-strict-api-token-5c1d"


@pytest.fixture
def rack(tmp_path):
    sm = SecretManagerDouble()
    sm.add("rackboot-example", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "rack-profiles", "example", sm.start())
    yield rack
    rack.destroy()
    sm.stop()


def test_a_manifest_with_an_unknown_field_is_bad_input(rack):
    """`check` refuses the typo (tests/test_manifest_check.py); the API
    server still does, should one reach a machine: a file changed after the build."""
    typo = rack.profiles / "kube/example/20-typo.yaml"
    fine = "apiVersion: v1\nkind: Service\nmetadata: {name: typo, namespace: rack-apps}\nspec:\n  ports: [{port: 80}]\n"
    typo.write_text(fine)
    rack.rebuild()                 # a new manifest file: a new image
    typo.write_text(fine + "  selectr: {app: x}\n")
    done = rack.agent()
    error = rack.status()["steps"]["apply"]["error"]
    assert f"{typo}: document 1 (Service rack-apps/typo)" in error
    assert ".spec.selectr: field not declared in schema" in error
    assert done.returncode == 2, done.stderr


def test_a_namespace_still_terminating_from_the_last_prune_is_no_error(rack):
    rack.machine.set_service_environment(K3S_STANDIN_NAMESPACE_DELAY=120)   # pods take their time to go
    extra = rack.profiles / "kube/example/30-extra.yaml"
    extra.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
    rack.rebuild()
    assert rack.agent().returncode == 0
    extra.unlink()
    rack.rebuild()
    done = rack.agent()
    assert done.returncode == 0, done.stderr
    assert rack.status()["steps"]["apply"]["result"]["pruned"] == ["Namespace extra"]
    assert rack.get("v1", "Namespace", "extra").status.phase == "Terminating"
    done = rack.agent()
    assert done.returncode == 0, rack.status()["steps"]["apply"].get("error")


def test_a_namespace_back_in_the_profile_while_still_terminating_is_made_afresh(rack):
    """Applied as it is, the Terminating namespace would take no new objects
    (403 NamespaceTerminating) and then go: apply waits, within its timeout,
    until it is gone, and creates it again with what goes in it."""
    rack.machine.set_service_environment(K3S_STANDIN_NAMESPACE_DELAY=15)
    extra = rack.profiles / "kube/example/30-extra.yaml"
    wanted = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n---\n"
              "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: extra}\ndata: {a: '1'}\n")
    extra.write_text(wanted)
    rack.rebuild()
    assert rack.agent().returncode == 0
    extra.write_text("")
    assert rack.agent().returncode == 0
    assert rack.status()["steps"]["apply"]["result"]["pruned"] == ["ConfigMap extra/settings", "Namespace extra"]
    extra.write_text(wanted)
    done = rack.agent(RACKBOOT_APPLY_TIMEOUT=1)
    assert done.returncode == 1, done.stderr
    assert rack.status()["steps"]["apply"]["error"] == ("Namespace extra is still being deleted (Terminating) "
                                                        "after 1 s; it is applied once it is gone")
    assert rack.get("v1", "Namespace", "extra").status.phase == "Terminating"
    done = rack.agent()
    assert done.returncode == 0, rack.status()["steps"]["apply"].get("error")
    assert rack.get("v1", "Namespace", "extra").status.phase == "Active"
    assert rack.get("v1", "ConfigMap", "settings", "extra").to_dict()["data"] == {"a": "1"}


# --- readiness is not free ---------------------------------------------------

@pytest.fixture
def loop_rack(tmp_path):
    """The loopback rack: a Deployment of two replicas to wait for."""
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    yield rack
    rack.destroy()
    sm.stop()


needs_standin_readiness = pytest.mark.skipif(
    k3s_standin_bundle.real_bundle() is not None,
    reason="sets when pods get ready (K3S_STANDIN_READY_DELAY), which only the stand-in can")


@needs_standin_readiness
def test_workloads_that_never_get_ready_fail_apply_with_a_clear_message(loop_rack):
    loop_rack.machine.set_service_environment(K3S_STANDIN_READY_DELAY="never")
    done = loop_rack.agent(RACKBOOT_APPLY_TIMEOUT=3)
    assert done.returncode == 1, done.stderr
    status = loop_rack.status()
    assert status["failed"] == "apply"
    assert status["steps"]["apply"]["error"] == ("not ready after 3 s: Deployment loop-apps/metadata-server: "
                                                 "0/2 ready")


@needs_standin_readiness
def test_apply_waits_for_workloads_to_get_ready(loop_rack):
    loop_rack.machine.set_service_environment(K3S_STANDIN_READY_DELAY=3)
    done = loop_rack.agent()
    assert done.returncode == 0, done.stderr + loop_rack.status_text()
    assert loop_rack.status()["steps"]["apply"]["result"]["waited_seconds"] >= 2
    assert loop_rack.get("apps/v1", "Deployment", "metadata-server", "loop-apps").status.readyReplicas == 2


@needs_standin_readiness
def test_a_rollout_is_waited_for_until_the_new_pods_are_ready(loop_rack):
    loop_rack.machine.set_service_environment(K3S_STANDIN_READY_DELAY=5)
    assert loop_rack.agent().returncode == 0
    manifest = loop_rack.profiles / "kube/00-rack.yaml"
    first = manifest.read_text()
    second = first.replace("labels: {app: metadata-server}", "labels: {app: metadata-server, rollout: second}")
    assert second != first        # a new pod template: a rollout (the image is air-gap k3s's own, fixed)
    manifest.write_text(second)
    done = loop_rack.agent()
    assert done.returncode == 0, done.stderr
    status = loop_rack.get("apps/v1", "Deployment", "metadata-server", "loop-apps").status
    assert (status.updatedReplicas, status.readyReplicas) == (2, 2), "apply finished before the rollout did"
