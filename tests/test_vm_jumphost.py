"""VM tier: the example rack's jumphost image, booted in QEMU with OVMF (TCG).

The guest judges itself: the first-boot agent writes its report (identity,
cloud-init outcome, failed units, host key fingerprints) to a virtio-serial
port, and these tests read that report. Each boot's serial log is kept under
tests/artifacts/.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from firstboot.profile import load_profiles
from image import jumphost, qemu, seed
from tests.doubles.secret_manager import SecretManagerDouble

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
PROFILE = REPO / "rack-profiles" / "example.yaml"
BOOT_TIMEOUT = 900

pytestmark = pytest.mark.vm


def _missing_capability() -> str | None:
    if os.geteuid() != 0:
        return "building an image needs root (mmdebstrap, owner-preserving unpack)"
    for tool in ("mmdebstrap", "genimage", "qemu-system-x86_64", "bmaptool"):
        if not shutil.which(tool):
            return f"{tool} is not installed (tests/run installs it)"
    if not qemu.OVMF_CODE.exists():
        return "OVMF firmware is not installed"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    reason = _missing_capability()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("image")
    [profile] = load_profiles([PROFILE])
    outputs = jumphost.build([profile], jumphost.ImageOptions(output=out))
    return profile, out, outputs


TOKEN = b"K10rackboot-vm-test::server:token-that-must-not-leak"


@pytest.fixture
def secret_manager():
    """The rack's token in a Secret Manager double on the host's loopback; the
    guest reaches it at the rack router's address (QEMU maps it to the host)."""
    double = SecretManagerDouble()
    double.add("rackboot-example", "k3s-node-token", TOKEN)
    double.start()
    yield double
    double.stop()


def boot(profile, image: Path, name: str, agent_env: dict | None = None, with_seed: bool = True) -> dict:
    """Boot a fresh copy of the image; return the guest's report."""
    files = qemu.BootFiles(ARTIFACTS / name)
    qemu.prepare(files)
    disk = files.workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    seed_image = seed.make_seed(profile, files.workdir, agent_env) if with_seed else None
    try:
        return qemu.boot_until_report(qemu.qemu_argv(profile, disk, seed_image, files), files, BOOT_TIMEOUT)
    finally:
        disk.unlink(missing_ok=True)   # keep the logs, not 2 GB of disk


def test_outputs_are_flashable(built):
    profile, out, outputs = built
    names = sorted(p.name for p in outputs)
    assert names == ["jumphost.img", "jumphost.img.bmap", "jumphost.img.sha256"]
    subprocess.run(["sha256sum", "--check", "--quiet", "jumphost.img.sha256"], cwd=out, check=True)
    table = subprocess.run(["sfdisk", "--json", str(out / "jumphost.img")], capture_output=True,
                           text=True, check=True).stdout
    assert '"label": "gpt"' in table and '"name": "esp"' in table and '"name": "rackboot-root"' in table
    assert "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in table   # EFI system partition type


def _root_filesystem(image: Path, workdir: Path) -> Path:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)
    [root] = [p for p in table["partitiontable"]["partitions"] if p.get("name") == "rackboot-root"]
    target = workdir / "root.ext4"
    subprocess.run(["dd", f"if={image}", f"of={target}", "bs=512", f"skip={root['start']}",
                    f"count={root['size']}", "conv=sparse", "status=none"], check=True)
    return target


def _debugfs(filesystem: Path, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, str(filesystem)], capture_output=True,
                          text=True, check=True).stdout


def test_image_holds_no_machine_state_and_the_whole_agent(built, tmp_path):
    """Read the root filesystem itself: what makes a jumphost unique must be
    absent, and what the agent needs must be there."""
    _, out, _ = built
    root = _root_filesystem(out / "jumphost.img", tmp_path)
    assert "Size: 0" in _debugfs(root, "stat /etc/machine-id")
    assert "ssh_host_" not in _debugfs(root, "ls -l /etc/ssh")
    assert "File not found" in subprocess.run(["debugfs", "-R", "stat /var/lib/cloud", str(root)],
                                              capture_output=True, text=True).stderr
    assert "rackboot-firstboot.service" in _debugfs(root, "ls -l /etc/systemd/system/multi-user.target.wants")
    for path in ("/usr/lib/rackboot/firstboot/identify.py", "/usr/lib/rackboot/rack-profiles/example.yaml",
                 "/usr/lib/rackboot/rack-profiles/schema.json", "/usr/lib/rackboot/rack-profiles/kube/example/10-hello.yaml",
                 "/usr/share/rackboot/racks/example/jumphost/seed/user-data",
                 "/usr/lib/rackboot/site-packages/google/cloud/secretmanager_v1/__init__.py",
                 "/usr/lib/rackboot/site-packages/google/cloud/storage/__init__.py",
                 "/usr/lib/rackboot/site-packages/google/cloud/kms_v1/__init__.py"):
        assert "Type: regular" in _debugfs(root, f"stat {path}"), path


def test_two_boots_of_one_image(built, secret_manager):
    """Seeded boots: cloud-init clean, no failed unit, rack identified, the
    token fetched by the image's own Secret Manager client, and two jumphosts
    flashed from the same image get different ssh host keys."""
    profile, out, _ = built
    port = secret_manager.address.rsplit(":", 1)[1]
    env = {"SECRET_MANAGER_EMULATOR_HOST": f"{profile.network.router}:{port}"}
    reports = [boot(profile, out / "jumphost.img", f"jumphost-boot-{n}", env) for n in (1, 2)]
    for n, report in enumerate(reports, start=1):
        assert report["identity"] == {"rack": "example", "role": "jumphost",
                                      "node": "jumphost-example", "source": "seed"}
        assert report["cloud_init"]["status"] == "done", report["cloud_init"]
        assert report["cloud_init"]["errors"] == []
        assert report["failed_units"] == []
        assert report["steps"] == {"identify": "done", "token": "done"}, report["errors"]
        assert len(report["ssh_host_keys"]) == 3
        assert TOKEN not in (ARTIFACTS / f"jumphost-boot-{n}" / "serial.log").read_bytes()
    assert secret_manager.calls == ["projects/rackboot-example/secrets/k3s-node-token/versions/latest"] * 2
    first, second = (r["ssh_host_keys"] for r in reports)
    assert set(first.values()).isdisjoint(second.values())


def test_unseeded_jumphost_recognises_its_network(built):
    """No seed and no kernel argument: the rack network (subnet + router as
    gateway) is the only thing that identifies it."""
    profile, out, _ = built
    report = boot(profile, out / "jumphost.img", "jumphost-unseeded", with_seed=False)
    assert report["identity"] == {"rack": "example", "role": "jumphost",
                                  "node": "jumphost-example", "source": "network"}
    # Without a seed there are no credentials: the token step fails and says why.
    assert report["steps"] == {"identify": "done", "token": "failed"}
    assert report["errors"]["token"].startswith("sm://rackboot-example/k3s-node-token: no Google credentials")
    assert report["cloud_init"]["status"] == "done" and report["cloud_init"]["errors"] == []
    assert report["failed_units"] == []
    assert sorted(report["ssh_host_keys"]) == ["ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key.pub",
                                               "ssh_host_rsa_key.pub"]
