"""VM tier: the example rack's jumphost image, booted in QEMU with OVMF (TCG).

The image carries a k3s bundle: the stand-in's (tests/doubles/k3s_standin.py),
or real k3s when RACKBOOT_K3S_BUNDLE names one. The guest judges itself: the
first-boot agent writes its report (identity, steps, cloud-init outcome,
failed units, host key fingerprints) to a virtio-serial port, and these tests
read that report. One boot is also inspected from outside while it runs: ssh
in as the profile's admin, take k3s's kubeconfig, and read the applied
objects back through a forwarded API port, as attach.sh did. Each boot's
serial log is kept under tests/artifacts/.
"""

import dataclasses
import subprocess

import pytest
import yaml

from tests.doubles.secret_manager import SecretManagerDouble
from tests.lib.vm import (ALL_DONE, ARTIFACTS, boot, debugfs, dump_file, file_type, free_port, root_filesystem,
                      squashfs_entries)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def built(example_image):
    return example_image


TOKEN = b"rackboot-vm-test-token-that-must-not-leak"


@pytest.fixture
def secret_manager():
    """The rack's token in a Secret Manager double on the host's loopback; the
    guest reaches it at the rack router's address (QEMU maps it to the host)."""
    double = SecretManagerDouble()
    double.add("rackboot-example", "k3s-node-token", TOKEN)
    double.start()
    yield double
    double.stop()


def test_outputs_are_flashable(built):
    profile, out, outputs = built
    names = sorted(p.name for p in outputs)
    assert names == ["jumphost.img", "jumphost.img.bmap", "jumphost.img.sha256"]
    subprocess.run(["sha256sum", "--check", "--quiet", "jumphost.img.sha256"], cwd=out, check=True)
    table = subprocess.run(["sfdisk", "--json", str(out / "jumphost.img")], capture_output=True,
                           text=True, check=True).stdout
    assert '"label": "gpt"' in table and '"name": "esp"' in table and '"name": "rackboot-root"' in table
    assert "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in table   # EFI system partition type


def test_image_holds_no_machine_state_and_the_whole_agent(built, tmp_path):
    """Read the root filesystem itself: what makes a jumphost unique must be
    absent, and what the agent needs must be there."""
    _, out, _ = built
    root = root_filesystem(out / "jumphost.img", tmp_path)
    assert "Size: 0" in debugfs(root, "stat /etc/machine-id")
    assert "ssh_host_" not in debugfs(root, "ls -l /etc/ssh")
    assert "File not found" in subprocess.run(["debugfs", "-R", "stat /var/lib/cloud", str(root)],
                                              capture_output=True, text=True).stderr
    assert "rackboot-firstboot.service" in debugfs(root, "ls -l /etc/systemd/system/multi-user.target.wants")
    for path in ("/usr/lib/rackboot/firstboot/identify.py", "/usr/lib/rackboot/rack-profiles/example.yaml",
                 "/usr/lib/rackboot/rack-profiles/schema.json", "/usr/lib/rackboot/rack-profiles/kube/example/10-hello.yaml",
                 "/usr/share/rackboot/racks/example/jumphost/seed/user-data",
                 "/usr/lib/rackboot/site-packages/google/cloud/secretmanager_v1/__init__.py",
                 "/usr/lib/rackboot/site-packages/google/cloud/storage/__init__.py",
                 "/usr/lib/rackboot/site-packages/google/cloud/kms_v1/__init__.py",
                 "/usr/lib/rackboot/site-packages/kubernetes/dynamic/client.py",
                 "/usr/lib/rackboot/k3s/v1.31.4+k3s1/k3s",
                 "/usr/lib/rackboot/k3s/v1.31.4+k3s1/k3s-airgap-images-amd64.tar.zst",
                 # The Pis' netboot: shared boot files, the NFS root with the agent and arm64 k3s.
                 "/usr/lib/rackboot/pi-boot/vmlinuz", "/usr/lib/rackboot/pi-boot/start4.elf",
                 "/usr/share/rackboot/racks/example/tftp/cmdline.txt",
                 # The Pis' root: a squashfs of its own, never a directory of this filesystem.
                 "/usr/lib/rackboot/pi-root.squashfs"):
        assert file_type(root, path) == "regular", path
    assert file_type(root, "/usr/share/rackboot/racks/example/tftp/0a1b2c01/start4.elf") == "symlink"
    # Its mount point is empty here (the export's mp option never exports it); the unit is enabled.
    assert file_type(root, "/srv/rackboot/pi-root") == "directory"
    entries = [line.split("/")[5] for line in debugfs(root, "ls -p /srv/rackboot/pi-root").splitlines()
               if line.startswith("/")]
    assert sorted(entries) == [".", ".."], entries
    unit = "srv-rackboot-pi\\x2droot.mount"
    assert file_type(root, f"/etc/systemd/system/local-fs.target.wants/{unit}") == "symlink"
    assert "What=/usr/lib/rackboot/pi-root.squashfs" in debugfs(root, f"cat /etc/systemd/system/{unit}")
    pi_root = squashfs_entries(dump_file(root, "/usr/lib/rackboot/pi-root.squashfs", tmp_path / "pi-root.squashfs"))
    for path in ("/usr/lib/rackboot/firstboot/join.py", "/usr/lib/rackboot/k3s/v1.31.4+k3s1/k3s-arm64"):
        assert pi_root[path]["mode"].startswith("-"), path
    assert pi_root["/"]["mode"] == "drwxr-xr-x" and pi_root["/"]["owner"] == "0/0"
    assert pi_root["/etc/shadow"]["owner"] == "0/42" and pi_root["/etc/shadow"]["mode"] == "-rw-r-----"
    # Only the Pis' architecture of the bundle in their root; no machine state there either.
    assert not [path for path in pi_root if "k3s-airgap-images-amd64" in path]
    assert pi_root["/etc/machine-id"]["size"] == 0


def test_two_boots_of_one_image_reach_rack_ready(built, secret_manager, tmp_path):
    """Seeded boots: cloud-init clean, no failed unit, rack identified, the
    token fetched by the image's own Secret Manager client, k3s installed and
    ready, the rack's YAML applied; two jumphosts flashed from the same image
    get different ssh host keys. The first boot is read from outside."""
    profile, out, _ = built
    port = secret_manager.address.rsplit(":", 1)[1]
    env = {"SECRET_MANAGER_EMULATOR_HOST": f"{profile.network.router}:{port}"}
    key = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    admin = dataclasses.replace(profile, jumphost=dataclasses.replace(
        profile.jumphost, ssh_authorized_keys=(key.with_suffix(".pub").read_text().strip(),)))
    ssh_port, api_port = free_port(), free_port()
    seen = {}

    def read_back(report):
        ssh = ["ssh", "-i", str(key), "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "rackboot@127.0.0.1"]
        kubeconfig = yaml.safe_load(subprocess.run([*ssh, "sudo", "cat", "/etc/rancher/k3s/k3s.yaml"],
                                                   capture_output=True, text=True, check=True, timeout=120).stdout)
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{api_port}"
        from kubernetes import config
        from kubernetes.dynamic import DynamicClient
        dyn = DynamicClient(config.new_client_from_config_dict(kubeconfig))
        def get(api_version, kind, name, namespace=None):
            return dyn.get(dyn.resources.get(api_version=api_version, kind=kind), name=name, namespace=namespace)
        seen["configmap"] = get("v1", "ConfigMap", "rack-info", "rack-apps").to_dict()
        seen["service"] = get("v1", "Service", "metadata", "rack-apps").to_dict()
        seen["node"] = get("v1", "Node", "jumphost-example").to_dict()
        seen["status"] = subprocess.run([*ssh, "sudo", "env", "PYTHONPATH=/usr/lib/rackboot", "python3", "-m",
                                         "firstboot", "status"], capture_output=True, text=True, timeout=120).stdout
        seen["k3s_journal"] = subprocess.run([*ssh, "sudo", "journalctl", "-u", "k3s", "-u", "rackboot-firstboot",
                                              "--no-pager"], capture_output=True, text=True, timeout=120).stdout

    reports = [boot(admin, out / "jumphost.img", "jumphost-boot-1", env, while_running=read_back,
                    ssh_port=ssh_port, api_port=api_port),
               boot(profile, out / "jumphost.img", "jumphost-boot-2", env)]
    for n, report in enumerate(reports, start=1):
        assert report["identity"] == {"rack": "example", "role": "jumphost",
                                      "node": "jumphost-example", "source": "seed"}
        assert report["cloud_init"]["status"] == "done", report["cloud_init"]
        assert report["cloud_init"]["errors"] == []
        assert report["failed_units"] == []
        assert report["steps"] == ALL_DONE, report["errors"]
        assert len(report["ssh_host_keys"]) == 3
        assert TOKEN not in (ARTIFACTS / f"jumphost-boot-{n}" / "serial.log").read_bytes()
    assert secret_manager.calls == ["projects/rackboot-example/secrets/k3s-node-token/versions/latest"] * 2
    first, second = (r["ssh_host_keys"] for r in reports)
    assert set(first.values()).isdisjoint(second.values())
    # Read back from outside the guest.
    assert seen["configmap"]["data"] == {"rack": "example", "owner": "rackboot"}
    assert seen["configmap"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rackboot"
    assert seen["service"]["spec"]["ports"][0]["port"] == 80
    assert seen["node"]["metadata"]["labels"]["rackboot.dev/rack"] == "example"
    assert seen["node"]["metadata"]["labels"]["example.dev/owner"] == "lab-team"
    assert "apply      done" in seen["status"] and "failed" not in seen["status"]
    assert TOKEN.decode() not in seen["k3s_journal"] + seen["status"]
    assert "step apply: done" in seen["k3s_journal"]


def test_unseeded_jumphost_recognises_its_network(built):
    """No seed and no kernel argument: the rack network (subnet + router as
    gateway) is the only thing that identifies it."""
    profile, out, _ = built
    report = boot(profile, out / "jumphost.img", "jumphost-unseeded", with_seed=False)
    assert report["identity"] == {"rack": "example", "role": "jumphost",
                                  "node": "jumphost-example", "source": "network"}
    # Without a seed there are no credentials: the token step fails and says why.
    assert report["steps"] == {"identify": "done", "serve": "done", "token": "failed", "k3s": "skipped", "ready": "skipped",
                               "apply": "skipped"}
    assert report["errors"]["token"].startswith("sm://rackboot-example/k3s-node-token: no Google credentials")
    assert report["cloud_init"]["status"] == "done" and report["cloud_init"]["errors"] == []
    assert report["failed_units"] == []
    assert sorted(report["ssh_host_keys"]) == ["ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key.pub",
                                               "ssh_host_rsa_key.pub"]
