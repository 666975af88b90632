"""When the rack's cluster CA runs out, said before it does.

k3s renews its leaf certificates by itself (at a restart within 90 days of
their end) but never its CAs: self-made ones last ten years, a rack's own
(k3s.ca, build.py make-ca) as long as they were made for. When a CA ends,
every kubelet and client of the rack fails TLS at once. So once the
jumphost's server is ready, its ready step reads the CA certificates k3s
serves from (server/tls: server, client, request-header and etcd CAs) and
records when the first of them ends; within WARN_DAYS it logs a warning and
the status shows it, and the agent's metrics carry the time
(rackboot_cluster_ca_expiry_timestamp_seconds: the rack's alert
ClusterCaExpiringSoon fires on it).
"""

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from firstboot.layout import Layout

log = logging.getLogger("rackboot.k3s-ca")

# What k3s signs with (pkg/daemons/control/deps CreateRuntimeCertFiles: the CAs it makes).
CA_FILES = ("server-ca.crt", "client-ca.crt", "request-header-ca.crt", "etcd/server-ca.crt", "etcd/peer-ca.crt")
WARN_DAYS = 90
HINT = ("rotate it before then with `k3s certificate rotate-ca` on the jumphost (k3s docs, 'Rotating Custom CA "
        "Certificates'), and with k3s.ca store the new files under the rack's reference too (build.py make-ca)")


def earliest_end(tls: Path) -> tuple[float, str] | None:
    """(Unix time, file) of the first CA certificate under tls to end; None without any."""
    from cryptography import x509
    earliest = None
    for name in CA_FILES:
        try:
            certificates = x509.load_pem_x509_certificates((tls / name).read_bytes())
        except (OSError, ValueError):     # not there (yet), or not PEM: k3s itself says more
            continue
        for certificate in certificates:
            end = certificate.not_valid_after_utc.timestamp()
            if earliest is None or end < earliest[0]:
                earliest = (end, name)
    return earliest


def check(layout: Layout, now: float | None = None) -> dict:
    """What the ready step records: when the cluster CA ends, and a warning
    within WARN_DAYS of it; {} when there is no CA to read."""
    found = earliest_end(layout.k3s_tls)
    if found is None:
        return {}
    end, name = found
    day = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d")
    result = {"cluster_ca_ends": day, "cluster_ca_end_seconds": end}
    days = (end - (time.time() if now is None else now)) / 86400
    if days < WARN_DAYS:
        warning = (f"the cluster CA ({layout.k3s_tls / name}) ends on {day}, "
                   + (f"in {days:.0f} days" if days >= 0 else "already") + f": {HINT}")
        log.warning("%s", warning)
        result["warning"] = warning
    return result
