"""The agent's last run as Prometheus metrics: a textfile for node-exporter's
textfile collector (Layout.metrics_file), which the rack's node-exporter
DaemonSet reads through a hostPath and the rack's prometheus scrapes and
alerts on (rack-profiles/kube/skolo-rack4/2*.yaml).

    rackboot_step_success{rack,role,step}            1 done, 0 failed
    rackboot_step_duration_seconds{rack,role,step}   how long it ran
    rackboot_last_run_success{rack,role}             1 when no step failed
    rackboot_last_run_timestamp_seconds{rack,role}   when that run ended
    rackboot_cluster_ca_expiry_timestamp_seconds{rack}   the jumphost's: when its cluster CA ends
                                                     (firstboot/k3s_ca_expiry.py)

Written once a run has ended, not after each step: a failed run's 0 stays
until a later run ends without it, so an alert on it does not flap while
systemd restarts the agent (Restart=on-failure) and the new run is on its way.
Steps the run never reached have no series. The file says only outcomes and
times (never an error's text: status.json keeps that), and it is replaced
atomically (firstboot.system.place; node-exporter reads only names ending in
.prom, and the staged file's does not). World-readable: node-exporter runs as
nobody.
"""

import logging
import math
import time

from firstboot.layout import Layout
from firstboot.system import place

log = logging.getLogger("rackboot.metrics")

# (name, help) of the gauges, in the order the file lists them.
STEP_SUCCESS = ("rackboot_step_success", "Whether the first-boot agent's step succeeded in its last run "
                "(1 done, 0 failed); steps not reached have no series.")
STEP_DURATION = ("rackboot_step_duration_seconds", "How long the step ran in the agent's last run.")
RUN_SUCCESS = ("rackboot_last_run_success", "Whether the agent's last run ended with every step done.")
RUN_TIMESTAMP = ("rackboot_last_run_timestamp_seconds", "When the agent's last run ended, in Unix time.")
CA_END = ("rackboot_cluster_ca_expiry_timestamp_seconds", "When the first of the rack's cluster CA certificates "
          "ends, in Unix time (the jumphost's, read once its k3s server was ready).")


def _label_value(value: str) -> str:
    """A label value in the text exposition format's escaping."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_label_value(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else "NaN"


def _family(metric: tuple[str, str], samples: list[tuple[str, float]]) -> list[str]:
    name, help_text = metric
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f"{name}{labels} {_number(value)}" for labels, value in samples)]


def render(status: dict, rack: str, ended: float) -> str:
    """The textfile for a run's status (state.py's status.json), of rack (empty
    when the run could not tell which), ended at Unix time ended."""
    role = str(status.get("role") or "")
    run = _labels(rack=rack, role=role)
    finished = [(name, record) for name, record in status.get("steps", {}).items()
                if record.get("outcome") in ("done", "failed")]
    lines = _family(STEP_SUCCESS, [(_labels(rack=rack, role=role, step=name), record["outcome"] == "done")
                                   for name, record in finished])
    lines += _family(STEP_DURATION, [(_labels(rack=rack, role=role, step=name), record.get("seconds", math.nan))
                                     for name, record in finished])
    lines += _family(RUN_SUCCESS, [(run, not status.get("failed") and bool(finished))])
    lines += _family(RUN_TIMESTAMP, [(run, ended)])
    ca_end = ((status.get("steps", {}).get("ready") or {}).get("result") or {}).get("cluster_ca_end_seconds")
    if isinstance(ca_end, (int, float)):
        lines += _family(CA_END, [(_labels(rack=rack), ca_end)])
    return "\n".join(lines) + "\n"


def write(layout: Layout, status: dict, rack: str | None, ended: float | None = None) -> bool:
    """Replace the metrics file with the run's; False (logged) when it cannot
    be written: a full disk must not turn into a failed run, and the rack's
    disk alert says so."""
    text = render(status, rack or "", time.time() if ended is None else ended)
    try:
        layout.metrics_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        layout.metrics_dir.chmod(0o755)
        place(text.encode(), layout.metrics_file, 0o644)
    except OSError as err:
        log.warning("could not write the agent's metrics to %s: %s", layout.metrics_file, err)
        return False
    return True
