"""Port 80 of a rack is the jumphost's alone (issue 16). The rack router sends
the host aliases (`metadata`) to the jumphost, where traefik, k3s's ingress
controller, routes by host name. traefik's LoadBalancer Service gets its
port 80 from k3s's ServiceLB, which runs its svclb pods only on nodes labelled
svccontroller.k3s.cattle.io/enablelb=true once any node has that label: the
jumphost's k3s config gives it that label, the Pis' never do.

Rendered files are checked against what k3s and traefik do (their source,
read in tests/doubles/k8s_api/servicelb.py and traefik.py), and pretend
machines running the k3s stand-in show it: the jumphost answers `metadata`
and `metadata.` on port 80, a Pi refuses port 80, the Service's status names
the jumphost only, and with servicelb disabled nothing listens."""

import http.client
import socket

import pytest
import yaml

from firstboot.profile import load_profiles
from image import render
from tests.doubles import k3s_standin, k3s_standin_bundle
from tests.doubles.k8s_api import servicelb, traefik
from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.machine import REPO
from tests.lib.rack import Rack
from tests.test_pi_join import eventually

TOKEN = b"loop-rack-token-4c9e"
ENABLE_LB = servicelb.ENABLE_LB
K3S_CONFIG = "etc/rancher/k3s/config.yaml"


# --- what is rendered, against k3s's and traefik's rules ---------------------

def k3s_configs(profile) -> dict[str, dict]:
    """Each node's k3s config, read as the stand-in reads config.yaml (as k3s does)."""
    found = {}
    for path, text in render.render_rack(profile).items():
        if str(path).endswith(K3S_CONFIG):
            config = k3s_standin.parse_yaml_config(text, str(path))
            found[config["node-name"]] = config
    return found


def node(name: str, labels: dict, address: str, taints=()) -> dict:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"taints": list(taints)},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


@pytest.mark.parametrize("profile", load_profiles([REPO / "rack-profiles"]), ids=lambda p: p.rack)
def test_only_the_jumphost_is_labelled_for_servicelb(profile):
    """ServiceLB's node choice, applied to the nodes as each rack's rendered configs register them."""
    configs = k3s_configs(profile)
    assert "servicelb" not in profile.k3s.disable
    nodes = [node(name, k3s_standin.labels_from(config), name) for name, config in configs.items()]
    assert k3s_standin.labels_from(configs[profile.jumphost.hostname])[ENABLE_LB] == "true"
    assert [n["metadata"]["name"] for n in nodes if ENABLE_LB in n["metadata"]["labels"]] == [profile.jumphost.hostname]
    service = traefik.traefik_service()
    assert [n["metadata"]["name"] for n in servicelb.eligible_nodes(service, nodes)] == [profile.jumphost.hostname]


@pytest.mark.parametrize("profile", [p for p in load_profiles([REPO / "rack-profiles"]) if p.host_aliases],
                         ids=lambda p: p.rack)
def test_each_alias_and_its_fqdn_form_reach_a_backend(profile):
    """What the rack's own manifests give traefik: each alias, with and
    without the trailing dot, routes to a Service of the manifests."""
    assert "traefik" not in profile.k3s.disable
    docs = [d for path in profile.manifests for d in yaml.safe_load_all(path.read_text()) if d]
    ingresses = [{**d, "metadata": {"namespace": "default", **d["metadata"]}} for d in docs if d["kind"] == "Ingress"]
    services = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"])
                for d in docs if d["kind"] == "Service"}
    for alias in profile.host_aliases:
        for host in (alias, alias + ".", alias.upper() + ".:80"):
            found = traefik.route(ingresses, host, "/")
            assert found, f"{profile.rack}: nothing routes Host {host!r}"
            ingress, backend = found
            assert (ingress.split("/")[0], backend["service"]["name"]) in services


def test_a_profile_without_servicelb_labels_no_node(tmp_path):
    profile_dir = tmp_path / "profiles"
    (profile_dir / "kube").mkdir(parents=True)
    text = (REPO / "tests/profiles/loopback/loop.yaml").read_text() + "\n"
    disabled = text.replace("  api_port: 16443\n", "  api_port: 16443\n  disable: [servicelb]\n")
    (profile_dir / "loop.yaml").write_text(disabled)
    (profile_dir / "kube/00.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
    (profile_dir / "schema.json").write_text((REPO / "rack-profiles/schema.json").read_text())
    [profile] = load_profiles([profile_dir])
    configs = k3s_configs(profile)
    assert configs["jumphost-loop"]["disable"] == ["servicelb"]
    assert not any(ENABLE_LB in k3s_standin.labels_from(c) for c in configs.values())


def test_servicelb_node_choice_is_k3s_rule():
    """nodeHasDaemonSetLabel: with no node labelled, every node; once any node
    has the label, only those labelled "true" (and lbpool); taints the svclb
    DaemonSet does not tolerate keep its pods off."""
    service = {"metadata": {"name": "web", "namespace": "a", "labels": {}}, "spec": {"type": "LoadBalancer"}}
    jumphost, pi = node("jh", {"node-role.kubernetes.io/control-plane": "true"}, "10.0.0.8"), node("pi", {}, "10.0.0.9")
    names = lambda nodes: [n["metadata"]["name"] for n in servicelb.eligible_nodes(service, nodes)]   # noqa: E731
    assert names([jumphost, pi]) == ["jh", "pi"]
    jumphost["metadata"]["labels"][ENABLE_LB] = "true"
    assert names([jumphost, pi]) == ["jh"]
    jumphost["metadata"]["labels"][ENABLE_LB] = "false"
    assert names([jumphost, pi]) == []
    pi["metadata"]["labels"][ENABLE_LB] = "true"
    assert names([jumphost, pi]) == ["pi"]
    service["metadata"]["labels"][servicelb.LB_POOL] = "front"
    assert names([jumphost, pi]) == []
    jumphost["metadata"]["labels"].pop(ENABLE_LB)
    pi["metadata"]["labels"].pop(ENABLE_LB)
    service["metadata"]["labels"].clear()
    jumphost["spec"]["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    pi["spec"]["taints"] = [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}]
    assert names([jumphost, pi]) == ["jh"]


def test_status_lists_the_addresses_of_nodes_with_a_ready_pod():
    """getStatus/podIPs: ExternalIPs if any such node has one, else InternalIPs, IPv4, sorted."""
    nodes = {"b": node("b", {}, "10.0.0.9"), "a": node("a", {}, "10.0.0.10"), "c": node("c", {}, "10.0.0.11")}
    service = {"metadata": {"name": "web", "namespace": "x", "uid": "0123456789"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    pods = [servicelb._scheduled(servicelb.new_pod(service, nodes[n]), nodes[n], ready=n != "c") for n in nodes]
    assert servicelb.ingress(service, pods, nodes) == [{"ip": "10.0.0.10", "ipMode": "VIP"},
                                                       {"ip": "10.0.0.9", "ipMode": "VIP"}]
    nodes["a"]["status"]["addresses"].append({"type": "ExternalIP", "address": "203.0.113.5"})
    assert servicelb.ingress(service, pods, nodes) == [{"ip": "203.0.113.5", "ipMode": "VIP"}]
    assert servicelb.ingress({**service, "spec": {**service["spec"], "ipFamilies": ["IPv6"]}}, pods, nodes) == []


@pytest.mark.parametrize("header, matches", [
    ("metadata", True), ("metadata.", True), ("METADATA.", True), ("metadata:80", True), ("metadata.:80", True),
    (" metadata ", True), ("metadata..", False), ("metadataa", False), (".metadata", False), ("", False),
    ("metadata.rack", False)])
def test_traefik_host_rule(header, matches):
    """traefik's Host(`metadata`) (matcher_v2.go hostV2, on requestdecorator's canonized host)."""
    assert traefik.host_matches("metadata", header) is matches


# --- pretend machines: the k3s stand-in's ServiceLB ---------------------------

# The replies asserted below are the stand-in's (it names the backend traefik
# picks). Real k3s (RACKBOOT_K3S_BUNDLE) would need an HTTP backend from its
# air-gap images and time for traefik's helm install: not written, not run here.
standin_only = pytest.mark.skipif(k3s_standin_bundle.real_bundle() is not None,
                                  reason="asserts the stand-in's svclb replies and pod details")

@pytest.fixture(scope="module")
def rack(tmp_path_factory):
    """A jumphost and one Pi of the loopback rack, joined; servicelb and traefik on (no disable)."""
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path_factory.mktemp("servicelb"), REPO / "tests/profiles/loopback", "loop", sm.start())
    try:
        done = rack.agent()
        assert done.returncode == 0, done.stderr + rack.status_text()
        rack.pi = rack.add_pi("pi1", "0b0b0b01")
        done = rack.agent(rack.pi, role="pi")
        assert done.returncode == 0, done.stderr + rack.status_text(rack.pi)
        create(rack, METADATA_SERVICE, METADATA_INGRESS)
        yield rack
    finally:
        rack.destroy()
        sm.stop()


METADATA_SERVICE = {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "metadata-server", "namespace": "loop-apps"},
                    "spec": {"selector": {"app": "metadata-server"}, "ports": [{"port": 80, "targetPort": 8080}]}}
METADATA_INGRESS = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "metadata", "namespace": "loop-apps"},
                    "spec": {"rules": [{"host": "metadata", "http": {"paths": [{
                        "path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "metadata-server", "port": {"number": 80}}}}]}}]}}
BACKEND = "-> service loop-apps/metadata-server port 80"


def create(rack, *objects) -> None:
    dyn = rack.kube()
    for obj in objects:
        dyn.create(dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"]), body=obj,
                   namespace=obj["metadata"]["namespace"])


def ask(address, host: str, port: int = 80) -> tuple[int, str]:
    connection = http.client.HTTPConnection(str(address), port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def refuses(address, port: int) -> bool:
    try:
        socket.create_connection((str(address), port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def ingress_ips(rack, namespace: str = "kube-system", name: str = "traefik") -> list:
    status = rack.get("v1", "Service", name, namespace).to_dict().get("status") or {}
    return [(i["ip"], i.get("ipMode")) for i in (status.get("loadBalancer") or {}).get("ingress") or []]


def svclb_pods(rack, service: str = "traefik") -> list:
    dyn = rack.kube()
    pods = dyn.get(dyn.resources.get(api_version="v1", kind="Pod"), namespace="kube-system",
                   label_selector=f"{servicelb.SVC_NAME}={service}").to_dict()["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def label_jumphost(rack, value) -> None:
    """As an admin would: the jumphost node's enablelb label set to value (None: removed)."""
    dyn = rack.kube()
    dyn.patch(dyn.resources.get(api_version="v1", kind="Node"), name="jumphost-loop",
              body={"metadata": {"labels": {ENABLE_LB: value}}}, content_type="application/merge-patch+json")


@standin_only
def test_the_jumphost_alone_answers_port_80_for_metadata_and_metadata_dot(rack):
    jumphost, pi = rack.machine.address, rack.pi.address
    assert eventually(lambda: ingress_ips(rack) == [(str(jumphost), "VIP")]), ingress_ips(rack)
    pods = svclb_pods(rack)
    assert [(p["spec"]["nodeName"], p["status"]["phase"]) for p in pods] == [("jumphost-loop", "Running")]
    assert sorted((c["ports"][0]["hostPort"], c["ports"][0]["protocol"]) for c in pods[0]["spec"]["containers"]) == \
        [(80, "TCP"), (443, "TCP")]
    assert eventually(lambda: not refuses(jumphost, 80))
    for host in ("metadata", "metadata.", "Metadata.:80"):
        code, body = ask(jumphost, host)
        assert code == 200 and BACKEND in body and f"Host: {host}" in body, (host, code, body)
    assert ask(jumphost, "prometheus") == (404, traefik.NOT_FOUND)
    assert ask(jumphost, "metadata..") == (404, traefik.NOT_FOUND)
    assert refuses(pi, 80) and refuses(pi, 443)
    assert rack.get("v1", "Node", "loop-pi-01").metadata.labels.get(ENABLE_LB) is None


@standin_only
def test_with_no_node_labelled_every_node_publishes(rack):
    """k3s's rule, shown on the pretend rack: the label on the jumphost is what
    keeps the Pi's port 80 closed. Without it on any node, the Pi gets a svclb
    pod and answers too; labelled again, the Pi's pod and port go."""
    jumphost, pi = rack.machine.address, rack.pi.address
    assert eventually(lambda: ingress_ips(rack) == [(str(jumphost), "VIP")])
    label_jumphost(rack, None)
    try:
        both = sorted([(str(jumphost), "VIP"), (str(pi), "VIP")])
        assert eventually(lambda: sorted(ingress_ips(rack)) == both), ingress_ips(rack)
        assert sorted(p["spec"]["nodeName"] for p in svclb_pods(rack)) == ["jumphost-loop", "loop-pi-01"]
        assert eventually(lambda: not refuses(pi, 80))
        code, body = ask(pi, "metadata.")
        assert code == 200 and BACKEND in body
    finally:
        label_jumphost(rack, "true")
    assert eventually(lambda: ingress_ips(rack) == [(str(jumphost), "VIP")]), ingress_ips(rack)
    assert eventually(lambda: refuses(pi, 80))
    assert [p["spec"]["nodeName"] for p in svclb_pods(rack)] == ["jumphost-loop"]


@standin_only
def test_a_second_service_on_port_80_stays_pending(rack):
    """Two LoadBalancer Services on one port: the second's svclb pod cannot
    have the jumphost's port 80 (the scheduler's NodePorts filter), stays
    Pending, and its Service gets no address; traefik keeps the port."""
    jumphost = rack.machine.address
    assert eventually(lambda: ingress_ips(rack) == [(str(jumphost), "VIP")])
    create(rack, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "loop-apps"},
                  "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert eventually(lambda: len(svclb_pods(rack, "web")) == 1)
    [pod] = svclb_pods(rack, "web")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    [scheduled] = pod["status"]["conditions"]
    assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == ("PodScheduled", "False", "Unschedulable")
    assert "1 node(s) didn't have free ports for the requested pod ports" in scheduled["message"]
    assert ingress_ips(rack, "loop-apps", "web") == []
    assert BACKEND in ask(jumphost, "metadata")[1]


@standin_only
def test_with_servicelb_disabled_nothing_listens(tmp_path):
    """k3s --disable=servicelb: no svclb pods, no status, nothing on port 80,
    while traefik's Service is there (its chart is not disabled)."""
    sm = SecretManagerDouble()
    sm.add("rackboot-loop", "k3s-node-token", TOKEN)
    rack = Rack(tmp_path, REPO / "tests/profiles/loopback", "loop", sm.start())
    try:
        rack.edit_profile(lambda p: p["k3s"].update(disable=["servicelb"]))
        config = rack.machine.path("/usr/share/rackboot/racks/loop/jumphost/rootfs/" + K3S_CONFIG).read_text()
        assert ENABLE_LB not in config and "disable:\n  - servicelb\n" in config
        done = rack.agent()
        assert done.returncode == 0, done.stderr + rack.status_text()
        create(rack, METADATA_SERVICE, METADATA_INGRESS)
        assert rack.get("v1", "Service", "traefik", "kube-system").spec.type == "LoadBalancer"
        assert ingress_ips(rack) == []
        assert svclb_pods(rack) == []
        assert refuses(rack.machine.address, 80) and refuses(rack.machine.address, 443)
    finally:
        rack.destroy()
        sm.stop()
