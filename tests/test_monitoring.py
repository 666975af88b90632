"""Monitoring of rackboot itself (issue 16): the first-boot agent's metrics
file (firstboot/metrics.py) and the rack's prometheus, alert rules and
node-exporter (rack-profiles/kube/skolo-rack4/2*.yaml), checked by the
consumer that reads them: promtool (Debian's prometheus package, installed by
tests/run) `check metrics`, `check config`, `check rules` and `test rules`.

Debian builds its prometheus without Kubernetes service discovery, so its
promtool refuses every kubernetes_sd_configs block as an unknown field. The
configuration is then checked in two parts: those blocks against upstream's
own definition (v2.53.5 discovery/kubernetes: the fields of SDConfig, its
roles, and the meta labels each role gives, which the relabelling reads),
and the rest by promtool with each block swapped for a static target. A
promtool that knows Kubernetes discovery also checks the file unchanged."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from firstboot import agent, identify, metrics
from firstboot.layout import MACHINE, Layout
from firstboot.profile import load_profiles
from tests import test_agent

REPO = Path(__file__).resolve().parent.parent
RACK_DIR = REPO / "rack-profiles/kube/skolo-rack4"
[SKOLO] = [p for p in load_profiles([REPO / "rack-profiles"]) if p.rack == "skolo-rack4"]
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN = test_agent.TOKEN
machine = test_agent.machine     # the pretend machine fixture: a jumphost of the twins' racks, no k3s bundle

# Upstream prometheus v2.53.5, discovery/kubernetes/kubernetes.go: SDConfig's
# fields (less the inlined HTTP client's, which these blocks need not: in a
# pod, discovery uses the service account) and its roles.
SD_FIELDS = {"role", "api_server", "kubeconfig_file", "namespaces", "selectors", "attach_metadata"}
SD_NAMESPACE_FIELDS = {"own_namespace", "names"}
# The meta labels each role gives (node.go, pod.go, endpoints.go, service.go and
# kubernetes.go's addObjectMetaLabels: ROLE_name, _label_*, _labelpresent_*,
# _annotation_*, _annotationpresent_*). Endpoints give the Service's object
# labels and, for an address that is a pod, the pod's.
_OBJECT = r"{0}_(name|(label|labelpresent|annotation|annotationpresent)_\w+)"
_POD = (_OBJECT.format("pod") + r"|pod_(ip|container_(name|id|image|port_name|port_number|port_protocol|init)"
        r"|ready|phase|node_name|host_ip|uid|controller_kind|controller_name)")
META_LABELS = {
    "node": _OBJECT.format("node") + r"|node_provider_id|node_address_\w+",
    "pod": r"namespace|" + _POD,
    "endpoints": (r"namespace|" + _OBJECT.format("endpoints") + "|" + _OBJECT.format("service") + "|" + _POD
                  + r"|endpoint_(node_name|hostname|ready|port_name|port_protocol"
                    r"|address_target_kind|address_target_name)"),
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed (tests/run installs it: Debian's prometheus package, image/hostenv.py)"
    return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True)


def samples(text: str) -> dict[str, float]:
    """A metrics file's samples, by name{labels} as written."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


# ------------------------------------------------------------ the agent's file

RUN = {"role": "pi", "failed": "k3s", "steps": {
    "identify": {"outcome": "done", "seconds": 0.4},
    "token": {"outcome": "done", "seconds": 2.5},
    "k3s": {"outcome": "failed", "seconds": 31.0, "error": f"k3s refused token {TOKEN.decode()}",
            "hint": "journalctl -u k3s-agent"},
    "report": {"outcome": "done", "seconds": 1.2}}}


def test_the_agents_metrics_pass_promtool_and_say_each_step(tmp_path):
    layout = Layout(tmp_path)
    assert metrics.write(layout, RUN, "skolo-rack4", ended=1795000000.5)
    assert layout.metrics_file == tmp_path / "var/lib/rackboot/metrics/rackboot.prom"
    text = layout.metrics_file.read_text()
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked
    run = '{rack="skolo-rack4",role="pi"}'
    assert samples(text) == {
        **{f'rackboot_step_success{{rack="skolo-rack4",role="pi",step="{step}"}}': value
           for step, value in (("identify", 1), ("token", 1), ("k3s", 0), ("report", 1))},
        **{f'rackboot_step_duration_seconds{{rack="skolo-rack4",role="pi",step="{step}"}}': seconds
           for step, seconds in (("identify", 0.4), ("token", 2.5), ("k3s", 31.0), ("report", 1.2))},
        f"rackboot_last_run_success{run}": 0, f"rackboot_last_run_timestamp_seconds{run}": 1795000000.5}
    # Outcomes and times only: an error's text (here a token) stays in status.json.
    assert TOKEN.decode() not in text and "journalctl" not in text


def test_the_file_is_world_readable_and_replaced_whole(tmp_path):
    layout = Layout(tmp_path)
    metrics.write(layout, RUN, "skolo-rack4")
    metrics.write(layout, {"role": "pi", "failed": None, "steps": {"identify": {"outcome": "done", "seconds": 1.0}}},
                  "skolo-rack4")
    # node-exporter runs as nobody; what it reads is only the one .prom file,
    # never a staged one (firstboot.system.place renames it into place).
    assert oct(layout.metrics_dir.stat().st_mode & 0o777) == "0o755"
    assert oct(layout.metrics_file.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in layout.metrics_dir.iterdir()] == ["rackboot.prom"]
    text = layout.metrics_file.read_text()
    assert 'step="k3s"' not in text     # the earlier run's steps are gone
    assert samples(text)['rackboot_last_run_success{rack="skolo-rack4",role="pi"}'] == 1


def test_a_metrics_file_that_cannot_be_written_does_not_fail_the_run(tmp_path, caplog):
    layout = Layout(tmp_path).moving(state_dir=tmp_path / "state")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/metrics").write_text("in the way")
    assert metrics.write(layout, RUN, "skolo-rack4") is False
    assert "could not write the agent's metrics to" in caplog.text


def test_a_failed_run_leaves_its_failed_step_in_the_metrics(machine, monkeypatch):
    tmp_path, sent, sm, layout = machine
    assert agent.run("jumphost", layout) == 1       # two racks match: identify fails
    text = layout.metrics_file.read_text()
    assert layout.metrics_file == tmp_path / "state/metrics/rackboot.prom"
    assert promtool("check", "metrics", stdin=text).returncode == 0
    # No rack was identified: the label is empty (absent, to Prometheus).
    assert samples(text) == {
        'rackboot_step_success{rack="",role="jumphost",step="identify"}': 0,
        'rackboot_step_success{rack="",role="jumphost",step="report"}': 1,
        'rackboot_step_duration_seconds{rack="",role="jumphost",step="identify"}': pytest.approx(0, abs=5),
        'rackboot_step_duration_seconds{rack="",role="jumphost",step="report"}': pytest.approx(0, abs=5),
        'rackboot_last_run_success{rack="",role="jumphost"}': 0,
        'rackboot_last_run_timestamp_seconds{rack="",role="jumphost"}': pytest.approx(
            layout.metrics_file.stat().st_mtime, abs=5)}
    monkeypatch.setattr(identify, "rack_from_seed", lambda: "twin-b")   # the seed is attached
    assert agent.run("jumphost", layout) == 1       # the image has no k3s bundle
    got = samples(layout.metrics_file.read_text())
    assert {key: value for key, value in got.items() if key.startswith("rackboot_step_success")} == {
        f'rackboot_step_success{{rack="twin-b",role="jumphost",step="{step}"}}': value
        for step, value in (("identify", 1), ("serve", 1), ("token", 1), ("k3s", 0), ("report", 1))}
    assert TOKEN.decode() not in layout.metrics_file.read_text()


# ------------------------------------------------------- the rack's manifests

def manifests() -> list[dict]:
    return [doc for path in sorted(RACK_DIR.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def the(kind: str, name: str) -> dict:
    [found] = [d for d in manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def prometheus_pod() -> dict:
    return the("Deployment", "prometheus")["spec"]["template"]["spec"]


def prometheus_args() -> dict[str, str]:
    [container] = prometheus_pod()["containers"]
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def lay_out_config(into: Path) -> Path:
    """The prometheus pod's configuration directory as its volumes lay it out,
    under into; the path of its --config.file there."""
    config_file = Path(prometheus_args()["config.file"])
    [container] = prometheus_pod()["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_file.parent)]
    [volume] = [v for v in prometheus_pod()["volumes"] if v["name"] == mount["name"]]
    for source in volume["projected"]["sources"]:
        data = the("ConfigMap", source["configMap"]["name"])["data"]
        for key, text in data.items():
            (into / key).write_text(text)
    return into / config_file.name


def config() -> dict:
    return yaml.safe_load(the("ConfigMap", "prometheus-config")["data"]["prometheus.yml"])


def rules() -> list[dict]:
    [text] = the("ConfigMap", "prometheus-rules")["data"].values()
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def sd_problems(job: dict) -> list[str]:
    """What upstream's Kubernetes discovery would refuse in a job, or silently
    never give its relabelling (a meta label its role has not)."""
    problems = []
    for sd in job.get("kubernetes_sd_configs", []):
        problems += [f"{job['job_name']}: unknown field {key}" for key in set(sd) - SD_FIELDS]
        problems += [f"{job['job_name']}: unknown namespaces field {key}"
                     for key in set(sd.get("namespaces", {})) - SD_NAMESPACE_FIELDS]
        if sd.get("role") not in META_LABELS:
            problems.append(f"{job['job_name']}: role {sd.get('role')!r} (this config's roles: {sorted(META_LABELS)})")
            continue
        for relabel in job.get("relabel_configs", []):
            for label in relabel.get("source_labels", []):
                meta = label.removeprefix("__meta_kubernetes_")
                if label.startswith("__meta_") and not re.fullmatch(META_LABELS[sd["role"]], meta):
                    problems.append(f"{job['job_name']}: role {sd['role']} gives no {label}")
    return problems


def promtool_knows_kubernetes_discovery(tmp_path: Path) -> bool:
    probe = tmp_path / "probe.yml"
    probe.write_text("scrape_configs:\n  - job_name: probe\n    kubernetes_sd_configs: [{role: node}]\n")
    return promtool("check", "config", str(probe)).returncode == 0


def test_prometheus_config_passes_promtool(tmp_path):
    config_file = lay_out_config(tmp_path)
    jobs = config()["scrape_configs"]
    assert [problem for job in jobs for problem in sd_problems(job)] == []
    assert {sd["role"] for job in jobs for sd in job.get("kubernetes_sd_configs", [])} == {"node", "pod", "endpoints"}
    swapped = yaml.safe_load(config_file.read_text())
    for job in swapped["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None):
            job["static_configs"] = [{"targets": ["discovered.invalid:9100"]}]
    # The jobs that scrape through the API server name the service account's
    # files, which the pod has mounted (promtool looks for them): stand-ins here.
    (tmp_path / "serviceaccount").mkdir()
    for job in swapped["scrape_configs"]:
        for section, key in (("tls_config", "ca_file"), ("authorization", "credentials_file")):
            if key in job.get(section, {}):
                path = Path(job[section][key])
                assert path.parent == Path(SA_DIR), path
                (tmp_path / "serviceaccount" / path.name).write_text("stand-in\n")
                job[section][key] = str(tmp_path / "serviceaccount" / path.name)
    assert sorted(p.name for p in (tmp_path / "serviceaccount").iterdir()) == ["ca.crt", "token"]
    (tmp_path / "swapped.yml").write_text(yaml.safe_dump(swapped))
    checked = promtool("check", "config", str(tmp_path / "swapped.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout       # the rules beside it, by its rule_files
    if promtool_knows_kubernetes_discovery(tmp_path):
        checked = promtool("check", "config", str(config_file))
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_meta_label_the_role_does_not_give_is_refused():
    job = {"job_name": "typo", "kubernetes_sd_configs": [{"role": "pod", "namspaces": {}}],
           "relabel_configs": [{"source_labels": ["__meta_kubernetes_pod_lable_app"]},
                               {"source_labels": ["__meta_kubernetes_node_label_app"]},
                               {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]}]}
    assert sd_problems(job) == ["typo: unknown field namspaces",
                                "typo: role pod gives no __meta_kubernetes_pod_lable_app",
                                "typo: role pod gives no __meta_kubernetes_node_label_app"]


def test_rules_pass_promtool(tmp_path):
    lay_out_config(tmp_path)
    [rules_file] = tmp_path.glob("*.rules.yml")
    checked = promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0 and "SUCCESS: 5 rules found" in checked.stdout, checked.stdout + checked.stderr


def test_every_alert_carries_the_rack_and_takes_the_v1_api():
    assert config()["global"]["external_labels"]["rack"] == SKOLO.rack
    for rule in rules():
        assert rule["labels"]["rack"] == "{{ $externalLabels.rack }}", rule["alert"]
        assert "{{ $externalLabels.rack }}" in rule["annotations"]["description"], rule["alert"]
    # alert-to-pubsub takes the Alertmanager v1 API only (POST /api/v1/alerts):
    # a Prometheus 2.x, the last to send it.
    [alertmanager] = config()["alerting"]["alertmanagers"]
    assert alertmanager["api_version"] == "v1"
    assert re.fullmatch(r"quay\.io/prometheus/prometheus:v2\.\d+\.\d+", prometheus_pod()["containers"][0]["image"])


def test_alerts_go_to_the_alert_to_pubsub_service():
    [alertmanager] = config()["alerting"]["alertmanagers"]
    [[target]] = [group["targets"] for group in alertmanager["static_configs"]]
    host, port = target.split(":")
    service = the("Service", host)
    assert service["metadata"]["namespace"] == the("Deployment", "prometheus")["metadata"]["namespace"]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]


def test_node_exporter_reads_the_agents_metrics_directory():
    daemonset = the("DaemonSet", "node-exporter")
    pod = daemonset["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == args["collector.textfile.directory"]]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["path"] == str(MACHINE.metrics_dir) and mount["readOnly"] is True
    assert re.fullmatch(r"quay\.io/prometheus/node-exporter:v\d+\.\d+\.\d+", container["image"])
    assert pod["tolerations"] == [{"operator": "Exists"}]       # the jumphost and every Pi
    # prometheus's node-exporter job keeps these pods' port of that name.
    [job] = [j for j in config()["scrape_configs"] if j["job_name"] == "node-exporter"]
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep" and keep["regex"] == "{};{}".format(
        daemonset["spec"]["template"]["metadata"]["labels"]["app"], container["ports"][0]["name"])


def test_prometheus_may_discover_and_scrape_and_keeps_its_data():
    role = the("ClusterRole", "skolo-prometheus")
    [resources, non_resource] = role["rules"]
    assert set(resources["resources"]) == {"nodes", "nodes/proxy", "nodes/metrics", "endpoints", "pods", "services"}
    assert resources["verbs"] == ["get", "list", "watch"] and resources["apiGroups"] == [""]
    assert non_resource == {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    binding = the("ClusterRoleBinding", "skolo-prometheus")
    assert binding["roleRef"]["name"] == "skolo-prometheus"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": prometheus_pod()["serviceAccountName"],
                                    "namespace": "skolo"}]
    [container] = prometheus_pod()["containers"]
    [data] = [m for m in container["volumeMounts"] if m["mountPath"] == prometheus_args()["storage.tsdb.path"]]
    [volume] = [v for v in prometheus_pod()["volumes"] if v["name"] == data["name"]]
    claim = the("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["storageClassName"] == "local-path"       # k3s's own provisioner
    assert container["resources"]["requests"]


# ------------------------------------------------------- the alerts, firing
# promtool test rules: each alert fires when it should, not before its `for`,
# and not for the healthy series beside it. {rack}: the rack's external label.
ALERT_TESTS = """
- name: first-boot step failed
  interval: 1m
  input_series:
    - series: 'rackboot_step_success{{job="node-exporter",instance="10.42.1.7:9100",node="skia-rpi-001",rack="{rack}",role="pi",step="k3s"}}'
      values: '1 1 0 0'
    - series: 'rackboot_step_success{{job="node-exporter",instance="10.42.1.7:9100",node="skia-rpi-001",rack="{rack}",role="pi",step="identify"}}'
      values: '1 1 1 1'
    # A machine whose agent could not tell its rack: the alert still names it.
    - series: 'rackboot_step_success{{job="node-exporter",instance="10.42.2.3:9100",node="skia-rpi-004",role="pi",step="identify"}}'
      values: '1 1 1 0'
  alert_rule_test:
    - {{eval_time: 1m, alertname: FirstBootStepFailed, exp_alerts: []}}
    - eval_time: 3m
      alertname: FirstBootStepFailed
      exp_alerts:
        - exp_labels: {{job: node-exporter, instance: "10.42.1.7:9100", node: skia-rpi-001, rack: {rack}, role: pi,
                       step: k3s, category: infra, severity: critical}}
          exp_annotations:
            abbr: k3s - skia-rpi-001 - {rack}
            description: >-
              The first-boot agent on skia-rpi-001 (pi) in rack {rack} failed at step k3s. On that
              machine: python3 -m firstboot status; journalctl -u rackboot-firstboot.
        - exp_labels: {{job: node-exporter, instance: "10.42.2.3:9100", node: skia-rpi-004, rack: {rack}, role: pi,
                       step: identify, category: infra, severity: critical}}
          exp_annotations:
            abbr: identify - skia-rpi-004 - {rack}
            description: >-
              The first-boot agent on skia-rpi-004 (pi) in rack {rack} failed at step identify. On that
              machine: python3 -m firstboot status; journalctl -u rackboot-firstboot.

- name: app down
  interval: 1m
  input_series:
    - series: 'up{{job="apps",instance="10.42.0.9:20000",app="metadata-server",namespace="skolo",pod="metadata-server-7d4",node="skolo-rack4-jumphost"}}'
      values: '1 0x10'
    - series: 'up{{job="apps",instance="10.42.0.12:20000",app="router-backup",namespace="skolo",pod="router-backup-5f2",node="skolo-rack4-jumphost"}}'
      values: '1x10'
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skia-rpi-003",role="pi"}}'
      values: '0x10'
  alert_rule_test:
    - {{eval_time: 5m, alertname: AppDown, exp_alerts: []}}
    - eval_time: 6m
      alertname: AppDown
      exp_alerts:
        - exp_labels: {{job: apps, instance: "10.42.0.9:20000", app: metadata-server, namespace: skolo,
                       pod: metadata-server-7d4, node: skolo-rack4-jumphost, rack: {rack}, category: infra,
                       severity: critical}}
          exp_annotations:
            abbr: apps - 10.42.0.9:20000 - {rack}
            description: >-
              apps metadata-server at 10.42.0.9:20000 on node skolo-rack4-jumphost in rack {rack}
              has been down for more than 5 minutes.

- name: Pi node NotReady
  interval: 1m
  input_series:
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skia-rpi-002",role="pi"}}'
      values: '1 0x10'
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skia-rpi-001",role="pi"}}'
      values: '1x10'
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skolo-rack4-jumphost",role="jumphost"}}'
      values: '0x10'
  alert_rule_test:
    - {{eval_time: 5m, alertname: PiNodeNotReady, exp_alerts: []}}
    - eval_time: 6m
      alertname: PiNodeNotReady
      exp_alerts:
        - exp_labels: {{job: kubelet, instance: "kubernetes.default.svc:443", node: skia-rpi-002, role: pi,
                       rack: {rack}, category: infra, severity: critical}}
          exp_annotations:
            abbr: skia-rpi-002 - {rack}
            description: >-
              Pi skia-rpi-002 in rack {rack} has not answered through the k3s API server for 5
              minutes: the node is NotReady (kubectl describe node skia-rpi-002).

# The CA ends at 40 days (3456000 s): quiet at first, firing from 11 days on (under 30 days left).
- name: cluster CA expiring
  interval: 1d
  input_series:
    - series: 'rackboot_cluster_ca_expiry_timestamp_seconds{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",rack="{rack}"}}'
      values: '3456000x20'
  alert_rule_test:
    - {{eval_time: 9d, alertname: ClusterCaExpiringSoon, exp_alerts: []}}
    - eval_time: 12d
      alertname: ClusterCaExpiringSoon
      exp_alerts:
        - exp_labels: {{job: node-exporter, instance: "10.42.0.5:9100", node: skolo-rack4-jumphost, rack: {rack},
                       category: infra, severity: critical}}
          exp_annotations:
            abbr: cluster CA - {rack}
            description: >-
              The k3s cluster CA of rack {rack} ends in 28d 0h 0m 0s. Rotate it on the jumphost
              (k3s certificate rotate-ca) and store the new one as the rack's k3s.ca.

# / fills at 200 MB per 5 minutes from 35% free (empty within a day), /srv
# sits at 5% free; /boot is 80% free, a Pi's SD card fills like / and an NFS
# root is 1% free: none of those is the jumphost's local disk filling.
- name: jumphost disk filling
  interval: 5m
  input_series:
    - series: 'node_filesystem_avail_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sda2",fstype="ext4",mountpoint="/"}}'
      values: '35000000000-200000000x100'
    - series: 'node_filesystem_size_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sda2",fstype="ext4",mountpoint="/"}}'
      values: '100000000000x100'
    - series: 'node_filesystem_avail_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sdb1",fstype="xfs",mountpoint="/srv"}}'
      values: '5000000000x100'
    - series: 'node_filesystem_size_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sdb1",fstype="xfs",mountpoint="/srv"}}'
      values: '100000000000x100'
    - series: 'node_filesystem_avail_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sda1",fstype="ext4",mountpoint="/boot"}}'
      values: '800000000x100'
    - series: 'node_filesystem_size_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="/dev/sda1",fstype="ext4",mountpoint="/boot"}}'
      values: '1000000000x100'
    - series: 'node_filesystem_avail_bytes{{job="node-exporter",instance="10.42.1.7:9100",node="skia-rpi-001",device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"}}'
      values: '35000000000-200000000x100'
    - series: 'node_filesystem_size_bytes{{job="node-exporter",instance="10.42.1.7:9100",node="skia-rpi-001",device="/dev/mmcblk0p2",fstype="ext4",mountpoint="/"}}'
      values: '100000000000x100'
    - series: 'node_filesystem_avail_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="192.168.1.8:/srv/rackboot/pi-root",fstype="nfs",mountpoint="/mnt"}}'
      values: '1000000000x100'
    - series: 'node_filesystem_size_bytes{{job="node-exporter",instance="10.42.0.5:9100",node="skolo-rack4-jumphost",device="192.168.1.8:/srv/rackboot/pi-root",fstype="nfs",mountpoint="/mnt"}}'
      values: '100000000000x100'
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skolo-rack4-jumphost",role="jumphost"}}'
      values: '1x100'
    - series: 'up{{job="kubelet",instance="kubernetes.default.svc:443",node="skia-rpi-001",role="pi"}}'
      values: '1x100'
  alert_rule_test:
    - {{eval_time: 9m, alertname: JumphostDiskFilling, exp_alerts: []}}
    - eval_time: 20m
      alertname: JumphostDiskFilling
      exp_alerts:
        - exp_labels: {{job: node-exporter, instance: "10.42.0.5:9100", node: skolo-rack4-jumphost, device: /dev/sda2,
                       fstype: ext4, mountpoint: /, rack: {rack}, category: infra, severity: warning}}
          exp_annotations:
            abbr: / - skolo-rack4-jumphost - {rack}
            description: >-
              / on jumphost skolo-rack4-jumphost of rack {rack} is filling: 34.2% free, or on
              course to fill within a day.
        - exp_labels: {{job: node-exporter, instance: "10.42.0.5:9100", node: skolo-rack4-jumphost, device: /dev/sdb1,
                       fstype: xfs, mountpoint: /srv, rack: {rack}, category: infra, severity: warning}}
          exp_annotations:
            abbr: /srv - skolo-rack4-jumphost - {rack}
            description: >-
              /srv on jumphost skolo-rack4-jumphost of rack {rack} is filling: 5% free, or on
              course to fill within a day.
"""


def test_every_alert_fires_and_stays_quiet_when_healthy(tmp_path):
    lay_out_config(tmp_path)
    [rules_file] = tmp_path.glob("*.rules.yml")
    external_labels = config()["global"]["external_labels"]
    groups = yaml.safe_load(ALERT_TESTS.format(rack=external_labels["rack"]))
    for group in groups:
        group["external_labels"] = external_labels          # as prometheus.yml gives them
    tests = tmp_path / "alerts.test.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": groups}))
    fired = {case["alertname"] for group in groups for case in group["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in rules()}     # every alert is made to fire
    checked = promtool("test", "rules", str(tests))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
