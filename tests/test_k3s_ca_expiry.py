"""A warning before the rack's cluster CA ends (firstboot/k3s_ca_expiry.py):
the jumphost's ready step reads the CA certificates k3s signs with, records
when the first ends, warns within 90 days, and the agent's metrics carry it
(the rack's ClusterCaExpiringSoon alert: tests/test_monitoring.py). Pure."""

import datetime
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firstboot import agent, k3s_ca_expiry, metrics, state
from firstboot.layout import Layout
from tests.test_monitoring import promtool, samples

NOW = datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc)


def ca_pem(name: str, ends_in_days: float) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(NOW - datetime.timedelta(days=3650))
                   .not_valid_after(NOW + datetime.timedelta(days=ends_in_days))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


def lay_out(layout: Layout, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = layout.k3s_tls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_the_first_ca_to_end_is_recorded_and_warned_of_within_90_days(tmp_path, caplog):
    layout = Layout(tmp_path)
    assert k3s_ca_expiry.check(layout, NOW.timestamp()) == {}          # no CA yet: nothing to say
    lay_out(layout, {"server-ca.crt": ca_pem("k3s-server-ca", 3000), "client-ca.crt": ca_pem("k3s-client-ca", 60),
                     "request-header-ca.crt": b"not PEM", "etcd/server-ca.crt": ca_pem("etcd-server-ca", 400),
                     "server-ca.key": b"-----BEGIN EC PRIVATE KEY-----\n", "client-kubelet.crt": ca_pem("leaf", 1)})
    with caplog.at_level(logging.WARNING):
        result = k3s_ca_expiry.check(layout, NOW.timestamp())
    assert result["cluster_ca_ends"] == "2027-01-26"
    assert abs(result["cluster_ca_end_seconds"] - (NOW.timestamp() + 60 * 86400)) < 2
    assert result["warning"] == (f"the cluster CA ({layout.k3s_tls / 'client-ca.crt'}) ends on 2027-01-26, in 60 "
                                 f"days: {k3s_ca_expiry.HINT}")
    assert caplog.messages == [result["warning"]]
    # Long before: recorded, no warning.
    earlier = k3s_ca_expiry.check(layout, (NOW - datetime.timedelta(days=365)).timestamp())
    assert "warning" not in earlier and earlier["cluster_ca_ends"] == "2027-01-26"
    # After: it says so.
    later = k3s_ca_expiry.check(layout, (NOW + datetime.timedelta(days=61)).timestamp())
    assert ", already: rotate it" in later["warning"]


def test_the_status_and_the_metrics_carry_it(tmp_path):
    layout = Layout(tmp_path)
    lay_out(layout, {"server-ca.crt": ca_pem("k3s-server-ca", 30)})
    ready = {"outcome": "done", "seconds": 4.0, "result": k3s_ca_expiry.check(layout, NOW.timestamp())}
    status = {"role": "jumphost", "started": "2026-11-27T07:00:00Z", "failed": None,
              "steps": {"identify": {"outcome": "done", "seconds": 0.5}, "ready": ready}}
    state.save(layout, status)
    described = agent.describe_status(layout)
    assert f"warning: the cluster CA ({layout.k3s_tls / 'server-ca.crt'}) ends on 2026-12-27, in 30 days" in described
    text = metrics.render(status, "skolo-rack4", 1795000000.0)
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked
    ends = samples(text)['rackboot_cluster_ca_expiry_timestamp_seconds{rack="skolo-rack4"}']
    assert abs(ends - (NOW.timestamp() + 30 * 86400)) < 2
    # A Pi's run (no ready result of a jumphost) has no such series.
    del status["steps"]["ready"]
    assert "rackboot_cluster_ca_expiry" not in metrics.render(status, "skolo-rack4", 1795000000.0)
