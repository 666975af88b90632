"""A profile's manifests are checked at `check` time, as the rack's API
server would take them: against the OpenAPI schemas of the rack's Kubernetes
minor (strict: unknown fields, wrong types), names, the Secrets and
ConfigMaps workloads take, Ingress hosts and the profile's host aliases.
The broken corpus (tests/profiles/broken/5N-*) holds one case of each kind;
these tests cover what the corpus cannot say."""

import textwrap
from pathlib import Path

import pytest

from firstboot.errors import ProfileError
from firstboot.profile import load_profiles
from firstboot.profile.k8s_schemas import schemas_for
from image.payload import PYPI_AGENT_PACKAGES

pytestmark = pytest.mark.pure
REPO = Path(__file__).resolve().parent.parent
DEFAULTS = REPO / "tests/profiles/broken/defaults.yaml"

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default}
spec:
  containers: [{name: c, image: "registry.example/c:1"}]
"""
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  rules:
    - host: web
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{port: 80}]}
"""


def rack(tmp_path: Path, manifest: str | None, extra: str = "") -> Path:
    """A valid rack (the corpus's defaults) with one manifest file, and extra profile YAML."""
    (tmp_path / "defaults.yaml").write_text(DEFAULTS.read_text())
    profile = tmp_path / "r.yaml"
    text = "rack: r\n" + textwrap.dedent(extra)
    if manifest is not None:
        (tmp_path / "app.yaml").write_text(manifest)
        text += "manifests: [app.yaml]\n"
    profile.write_text(text)
    return profile


def problems(profile: Path) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_profiles([profile])
    return caught.value.problems


def test_example_racks_pass(build):
    result = build("check", "rack-profiles")
    assert result.returncode == 0, result.stderr
    assert "skolo-rack4" in result.stdout


def test_schemas_follow_the_racks_kubernetes_minor(tmp_path):
    """Pod-level resources came with Kubernetes 1.32: a 1.31 rack's API server refuses them."""
    pod = POD + "  resources: {limits: {cpu: '1'}}\n"
    [line] = problems(rack(tmp_path, pod))
    assert line == (f"{tmp_path}/app.yaml: document 1 (Pod default/p): spec.resources: unknown field: "
                    "the API server refuses it (field not declared in schema)")
    [profile] = load_profiles([rack(tmp_path, pod, "k3s: {version: v1.32.3+k3s1}\n")])
    assert profile.k3s.version == "v1.32.3+k3s1"


def test_a_kubernetes_minor_without_schemas_is_an_error_not_a_neighbour(tmp_path):
    [line] = problems(rack(tmp_path, POD, "k3s: {version: v1.99.0+k3s1}\n"))
    assert line.startswith(f"{tmp_path}/r.yaml: k3s.version: Kubernetes 1.99: kubernetes-validate has no "
                           "schemas for it (it has 1.25 to 1.37)")


def test_schemas_are_read_once_and_only_for_racks_with_manifests(tmp_path):
    schemas_for.cache_clear()
    load_profiles([REPO / "rack-profiles/big-rack.yaml"])
    assert schemas_for.cache_info().currsize == 0
    load_profiles([REPO / "rack-profiles/example.yaml", REPO / "rack-profiles/skolo-rack4.yaml"])
    assert schemas_for.cache_info().misses == 1 and schemas_for("1.31") is schemas_for("1.31")


def test_a_document_that_is_not_an_object(tmp_path):
    lines = problems(rack(tmp_path, POD + "---\n---\n- a list\n---\nkind: Pod\n"))
    assert lines == [f"{tmp_path}/app.yaml: document 3 is not a mapping; each document must be one Kubernetes object",
                     f"{tmp_path}/app.yaml: document 4 has no apiVersion or kind; each document must be one "
                     "Kubernetes object"]


def test_an_unknown_kind(tmp_path):
    [line] = problems(rack(tmp_path, "apiVersion: apps/v1\nkind: Deploymnet\nmetadata: {name: d}\n---\n" + POD))
    assert line == (f"{tmp_path}/app.yaml: document 1 (Deploymnet d): kind: Kubernetes 1.31 serves no Deploymnet "
                    "in apps/v1")
    [line] = problems(rack(tmp_path, POD.replace("apiVersion: v1", "apiVersion: v9")))
    assert line.endswith("kind: Kubernetes 1.31 serves no Pod in v9 (it has no API version v9)")


def test_names_per_kind(tmp_path):
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n---\n"
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'system:Reader'}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default, labels: {'a/b/c': x}}\n")
    lines = problems(rack(tmp_path, text))
    assert len(lines) == 2, lines
    assert "document 1 (Namespace a.b): metadata.name: a lowercase RFC 1123 label" in lines[0]
    assert "document 3 (ConfigMap default/c): metadata.labels.a/b/c: key: prefix part a lowercase RFC 1123 " \
           "subdomain" in lines[1]


def test_what_a_workload_takes_must_exist_unless_optional(tmp_path):
    pod = POD.replace("image:", "env: [{name: K, valueFrom: {secretKeyRef: {name: s, key: k}}}], image:")
    [line] = problems(rack(tmp_path, pod))
    assert line.startswith(f"{tmp_path}/app.yaml: document 1 (Pod default/p): spec.containers[0].env[0].valueFrom."
                           "secretKeyRef.name: Secret 's' is not created in namespace 'default'")
    load_profiles([rack(tmp_path, pod, "secrets: [{name: s, data: {k: 'sm://rackboot-test/s'}}]\n")])
    load_profiles([rack(tmp_path, pod.replace("key: k}", "key: k, optional: true}"))])
    made = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: default}\nstringData: {k: v}\n---\n"
    load_profiles([rack(tmp_path, made + pod)])


def test_a_cronjobs_pod_template_is_checked(tmp_path):
    cron = textwrap.dedent("""\
        apiVersion: batch/v1
        kind: CronJob
        metadata: {name: backup, namespace: default}
        spec:
          schedule: "0 * * * *"
          jobTemplate:
            spec:
              template:
                spec:
                  restartPolicy: OnFailure
                  volumes: [{name: cfg, configMap: {name: backup-config}}]
                  containers: [{name: b, image: "registry.example/b:1"}]
        """)
    [line] = problems(rack(tmp_path, cron))
    assert "spec.jobTemplate.spec.template.spec.volumes[0].configMap.name: ConfigMap 'backup-config'" in line


def test_what_is_behind_an_alias(tmp_path):
    """An Ingress rule for the host, a catch-all one, or a LoadBalancer Service of the alias's name."""
    load_profiles([rack(tmp_path, INGRESS, "host_aliases: [web]\n")])
    catch_all = INGRESS.replace("    - host: web\n      http:", "    - http:")
    load_profiles([rack(tmp_path, catch_all, "host_aliases: [web, metrics]\n")])
    balanced = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: LoadBalancer, ports: [{port: 80}]}\n"
    load_profiles([rack(tmp_path, balanced, "host_aliases: [web]\n")])
    cluster_ip = balanced.replace("type: LoadBalancer, ", "")
    [line] = problems(rack(tmp_path, cluster_ip, "host_aliases: [web]\n"))
    assert line.startswith(f"{tmp_path}/r.yaml: host_aliases[0]: 'web': nothing in the manifests answers it")
    [line] = problems(rack(tmp_path, None, "host_aliases: [web]\n"))       # no manifests at all
    assert line.startswith(f"{tmp_path}/r.yaml: host_aliases[0]: 'web': nothing")


def test_an_ingress_backend_port_the_service_lacks(tmp_path):
    [line] = problems(rack(tmp_path, INGRESS.replace("number: 80", "number: 8080"), "host_aliases: [web]\n"))
    assert line.endswith("spec.rules[0].http.paths[0].backend.service.port: port 8080: the Service has no such port")


def test_k3s_own_custom_resources_are_applied_unchecked(tmp_path):
    chart = ("apiVersion: helm.cattle.io/v1\nkind: HelmChartConfig\nmetadata: {name: traefik, namespace: kube-system}\n"
             "spec: {valuesContent: 'ports: {web: {hostPort: 80}}'}\n")
    load_profiles([rack(tmp_path, chart)])


def test_the_image_does_not_carry_the_schemas():
    """kubernetes-validate is the build host's: the agent never checks YAML."""
    assert "kubernetes-validate" not in PYPI_AGENT_PACKAGES
    assert "kubernetes-validate==" in (REPO / "requirements.txt").read_text()
