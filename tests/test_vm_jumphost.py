"""VM tier: the example rack's jumphost image, booted in QEMU with OVMF (TCG).

The image carries a k3s bundle: the stand-in's (tests/doubles/k3s_standin.py),
or real k3s when RACKBOOT_K3S_BUNDLE names one. The guest judges itself: the
first-boot agent writes its report (identity, steps, cloud-init outcome,
failed units, host key fingerprints) to a virtio-serial port, and these tests
read that report. One jumphost lives through several boots of its own disk
(tests/lib/vm.py's Jumphost): a power cut in its k3s step, the boot that
finishes the run, and a reboot that must change nothing; it is also
inspected from outside while it runs: ssh in as the profile's admin, take
k3s's kubeconfig, and read the applied objects back through a forwarded API
port, as attach.sh did. Each boot's serial log is kept under tests/artifacts/.
"""

import base64
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from firstboot import state
from firstboot.layout import MACHINE
from tests.doubles.secret_manager import SecretManagerDouble
from image import rootfs
from tests.lib.vm import (ALL_DONE, ARTIFACTS, Jumphost, admin_copy, admin_ssh, api_client, boot, debugfs, dump_file, file_type,
                          free_port, root_filesystem, squashfs_entries)

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
    profile, out, _ = built
    k3s_version = profile.k3s.version            # the bundle the image was built with (tests/conftest.py)
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
                 f"/usr/lib/rackboot/k3s/{k3s_version}/k3s",
                 f"/usr/lib/rackboot/k3s/{k3s_version}/k3s-airgap-images-amd64.tar.zst",
                 # The Pis' netboot: shared boot files, the NFS root with the agent and arm64 k3s.
                 "/usr/lib/rackboot/pi-boot/vmlinuz", "/usr/lib/rackboot/pi-boot/start4.elf",
                 "/usr/share/rackboot/racks/example/tftp/cmdline.txt",
                 # The Pis' root: a squashfs of its own, never a directory of this filesystem.
                 "/usr/lib/rackboot/pi-root.squashfs",
                 # Kernel updates reach the ESP: the hook and the command line its entries carry.
                 "/usr/lib/rackboot/esp-kernel", "/etc/kernel/postinst.d/zz-rackboot-esp",
                 "/etc/kernel/postrm.d/zz-rackboot-esp", "/etc/initramfs/post-update.d/zz-rackboot-esp",
                 "/etc/kernel/cmdline"):
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
    for path in ("/usr/lib/rackboot/firstboot/join.py", f"/usr/lib/rackboot/k3s/{k3s_version}/k3s-arm64"):
        assert pi_root[path]["mode"].startswith("-"), path
    assert pi_root["/"]["mode"] == "drwxr-xr-x" and pi_root["/"]["owner"] == "0/0"
    assert pi_root["/etc/shadow"]["owner"] == "0/42" and pi_root["/etc/shadow"]["mode"] == "-rw-r-----"
    # Only the Pis' architecture of the bundle in their root; no machine state there either.
    assert not [path for path in pi_root if "k3s-airgap-images-amd64" in path]
    assert pi_root["/etc/machine-id"]["size"] == 0


def applied_objects(status: dict) -> list[tuple[str, str, str, str]]:
    """What the agent's apply step recorded it applied, as (apiVersion, kind,
    namespace, name): its "Kind ns/name" list, with apiVersions from its inventory."""
    result = status["steps"]["apply"]["result"]
    api_versions = dict((kind, api_version) for api_version, kind in result["inventory"])
    objects = []
    for entry in result["applied"]:
        kind, _, where = entry.partition(" ")
        namespace, _, name = where.rpartition("/")
        objects.append((api_versions[kind], kind, namespace, name))
    return objects


def datastore_view(dyn, objects) -> dict:
    """uid and resourceVersion of each object, read through the API: the
    same after a reboot only if the datastore was kept and nothing wrote to them."""
    view = {}
    for api_version, kind, namespace, name in objects:
        meta = dyn.get(dyn.resources.get(api_version=api_version, kind=kind), name=name,
                       namespace=namespace or None).metadata
        view[f"{kind} {namespace}/{name}"] = (meta.uid, meta.resourceVersion)
    return view


# An object of the test's own, made through the API during a boot: the datastore must keep it as it was.
TEST_OBJECT = ("v1", "ConfigMap", "default", "made-by-the-vm-test")
# The agent's step results that say what a run changed, on a machine where nothing needed changing.
NOTHING_CHANGED = {"serve": [], "token": False, "k3s": []}


def test_two_jumphosts_of_one_image_through_a_power_cut_a_reboot_and_without_a_seed(built, secret_manager, tmp_path):
    """One image flashed twice. The first jumphost boots with its seed:
    cloud-init clean, no failed unit, rack identified, the token fetched by
    the image's own Secret Manager client, k3s installed and ready, the
    rack's YAML applied. Its power is cut in its first boot's k3s step (QEMU
    killed once the console shows the token step done); its next boot from
    the same disk finishes the run, and is read from outside: ssh in, take
    k3s's kubeconfig, read the applied objects back and make one of the
    test's own through a forwarded API port. Then it reboots (systemctl
    reboot) from the same disk: that boot changes nothing (the agent's steps
    say so), k3s is started once, by systemd at boot, and never restarted,
    and the datastore is kept (every object keeps its uid and
    resourceVersion). On that running jumphost a kernel package is
    installed with dpkg -i, and it reboots: the next boot runs the new
    kernel (see kernel_update_reached_the_esp); the package is then purged
    and the ESP is as before.

    The second jumphost boots with no seed and no kernel argument: the rack
    network (subnet + router as gateway) is the only thing that identifies
    it, and it gets ssh host keys of its own. (A seeded jumphost's one
    uninterrupted first boot to rack ready is the virtual rack's:
    tests/test_vm_rack.py.)"""
    profile, out, _ = built
    port = secret_manager.address.rsplit(":", 1)[1]
    env = {"SECRET_MANAGER_EMULATOR_HOST": f"{profile.network.router}:{port}"}
    key = tmp_path / "admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # The profile's own keys stay in the seed; the test's is one more.
    admin = dataclasses.replace(profile, jumphost=dataclasses.replace(profile.jumphost, ssh_authorized_keys=(
        *profile.jumphost.ssh_authorized_keys, key.with_suffix(".pub").read_text().strip())))
    ssh_port, api_port = free_port(), free_port()
    seen = {}

    def ssh(*command, check=True, timeout=120):
        return admin_ssh(key, ssh_port, *command, check=check, timeout=timeout)

    def agent_status():
        return json.loads(ssh("sudo", "cat", str(state.status_path(MACHINE))))

    def read_back(report):
        dyn = api_client(ssh, api_port)
        def get(api_version, kind, name, namespace=None):
            return dyn.get(dyn.resources.get(api_version=api_version, kind=kind), name=name, namespace=namespace)
        seen["configmap"] = get("v1", "ConfigMap", "rack-info", "rack-apps").to_dict()
        seen["service"] = get("v1", "Service", "metadata", "rack-apps").to_dict()
        seen["node"] = get("v1", "Node", "jumphost-example").to_dict()
        seen["status"] = ssh("sudo", "env", "PYTHONPATH=/usr/lib/rackboot", "python3", "-m", "firstboot", "status",
                             check=False)
        seen["k3s_journal"] = ssh("sudo", "journalctl", "-u", "k3s", "-u", "rackboot-firstboot", "--no-pager",
                                  check=False)
        seen["applied"] = applied_objects(agent_status())
        api_version, kind, namespace, name = TEST_OBJECT
        dyn.create(dyn.resources.get(api_version=api_version, kind=kind), namespace=namespace,
                   body={"apiVersion": api_version, "kind": kind, "metadata": {"name": name},
                         "data": {"made": "before the reboot"}})
        seen["before_reboot"] = datastore_view(dyn, [*seen["applied"], TEST_OBJECT])
        seen["node_uid"] = seen["node"]["metadata"]["uid"]
        jumphost.reboot(ssh)

    def read_after_reboot(report):
        dyn = api_client(ssh, api_port)
        seen["after_reboot"] = datastore_view(dyn, [*seen["applied"], TEST_OBJECT])
        seen["node_uid_after_reboot"] = dyn.get(dyn.resources.get(api_version="v1", kind="Node"),
                                                name="jumphost-example").metadata.uid
        seen["status_after_reboot"] = agent_status()
        seen["k3s_unit"] = ssh("systemctl", "show", "k3s.service", "-p", "ActiveState,NRestarts")
        seen["k3s_this_boot"] = ssh("sudo", "journalctl", "-b", "-u", "k3s", "--no-pager", "-o", "cat")
        seen["kernel_update"] = install_another_kernel(ssh, lambda path, target: admin_copy(key, ssh_port, path, target))
        jumphost.reboot(ssh)

    def read_new_kernel(report):
        seen["new_kernel_boot"] = booted_kernel(ssh)
        seen["kernel_purged"] = purge_kernel(ssh, seen["kernel_update"]["package"])

    jumphost = Jumphost(admin, out / "jumphost.img", tmp_path / "jumphost-1", env, ssh_port=ssh_port,
                        api_port=api_port)
    try:
        cut_console = jumphost.power_cut_at("jumphost-1-power-cut", "step token: done")
        reports = [jumphost.boot("jumphost-1-after-power-cut", read_back)]
        rebooted = jumphost.boot("jumphost-1-rebooted", read_after_reboot)
        new_kernel = jumphost.boot("jumphost-1-new-kernel", read_new_kernel)
    finally:
        jumphost.remove()
    unseeded = boot(profile, out / "jumphost.img", "jumphost-unseeded", with_seed=False)
    for name, report in (("jumphost-1-after-power-cut", reports[0]), ("jumphost-1-rebooted", rebooted),
                         ("jumphost-1-new-kernel", new_kernel)):
        console = ARTIFACTS / name / "serial.log"
        assert report["identity"] == {"rack": "example", "role": "jumphost",
                                      "node": "jumphost-example", "source": "seed"}, console
        assert report["cloud_init"]["status"] == "done", (report["cloud_init"], console)
        assert report["cloud_init"]["errors"] == [], console
        assert report["failed_units"] == [], console
        assert report["steps"] == ALL_DONE, (report["errors"], console)
        assert len(report["ssh_host_keys"]) == 3, console
    for name in ("jumphost-1-power-cut", "jumphost-1-after-power-cut", "jumphost-1-rebooted", "jumphost-1-new-kernel"):
        assert TOKEN not in (ARTIFACTS / name / "serial.log").read_bytes(), name
    # One fetch in each boot of the seeded jumphost (the power cut came after its token step).
    assert secret_manager.calls == ["projects/rackboot-example/secrets/k3s-node-token/versions/latest"] * 4
    first = reports[0]["ssh_host_keys"]
    assert set(first.values()).isdisjoint(unseeded["ssh_host_keys"].values())
    unseeded_identifies_itself_by_its_network(unseeded)
    # Read back from outside the guest.
    assert seen["configmap"]["data"] == {"rack": "example", "owner": "rackboot"}
    assert seen["configmap"]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rackboot"
    assert seen["service"]["spec"]["ports"][0]["port"] == 80
    assert seen["node"]["metadata"]["labels"]["rackboot.dev/rack"] == "example"
    assert seen["node"]["metadata"]["labels"]["example.dev/owner"] == "lab-team"
    assert "apply      done" in seen["status"] and "failed" not in seen["status"]
    assert TOKEN.decode() not in seen["k3s_journal"] + seen["status"]
    assert "step apply: done" in seen["k3s_journal"]

    # The power cut came in the first boot's k3s step: the token step was done, the k3s step was not.
    cut_log = ARTIFACTS / "jumphost-1-power-cut" / "serial.log"
    assert "step token: done" in cut_console and "step k3s:" not in cut_console, f"see {cut_log}"
    # The reboot from the same disk: the same machine, and its run changed nothing.
    rebooted_log = ARTIFACTS / "jumphost-1-rebooted" / "serial.log"
    assert rebooted["ssh_host_keys"] == first, rebooted_log
    results = {name: record.get("result", {}) for name, record in seen["status_after_reboot"]["steps"].items()}
    changed = {name: result["changed"] for name, result in results.items() if "changed" in result}
    assert changed == NOTHING_CHANGED, (results, f"see {rebooted_log}")
    assert results["k3s"]["started"] != "restarted", (results["k3s"], f"see {rebooted_log}")
    assert results["apply"]["placement"]["changed"] is False and results["apply"]["pruned"] == [], results["apply"]
    assert applied_objects(seen["status_after_reboot"]) == seen["applied"]
    # k3s: started once, by systemd at boot; never stopped or restarted, by the agent or by Restart=.
    unit = dict(line.split("=", 1) for line in seen["k3s_unit"].split())
    assert unit == {"ActiveState": "active", "NRestarts": "0"}, (unit, f"see {rebooted_log}")
    k3s_lines = seen["k3s_this_boot"].splitlines()
    assert len([line for line in k3s_lines if line.startswith("Started k3s.service")]) == 1, \
        (seen["k3s_this_boot"], f"see {rebooted_log}")
    assert not [line for line in k3s_lines if line.startswith(("Stopping k3s.service", "Stopped k3s.service"))], \
        (seen["k3s_this_boot"], f"see {rebooted_log}")
    # The datastore was kept: every object as it was, the test's own included, and the same Node.
    assert {name for _, _, _, name in seen["applied"]} >= {"rack-apps", "rack-info", "metadata"}
    assert seen["after_reboot"] == seen["before_reboot"], f"see {rebooted_log}"
    assert seen["node_uid_after_reboot"] == seen["node_uid"]
    kernel_update_reached_the_esp(seen["kernel_update"], seen["new_kernel_boot"], seen["kernel_purged"])
    assert new_kernel["ssh_host_keys"] == first, ARTIFACTS / "jumphost-1-new-kernel" / "serial.log"


def unseeded_identifies_itself_by_its_network(report: dict) -> None:
    """A jumphost booted with no seed and no kernel argument: the rack network
    (subnet + router as gateway) is the only thing that identifies it."""
    console = ARTIFACTS / "jumphost-unseeded" / "serial.log"
    assert report["identity"] == {"rack": "example", "role": "jumphost",
                                  "node": "jumphost-example", "source": "network"}, console
    # Without a seed there are no credentials: the token step fails and says why.
    assert report["steps"] == {"identify": "done", "serve": "done", "token": "failed", "k3s": "skipped", "ready": "skipped",
                               "apply": "skipped"}, console
    assert report["errors"]["token"].startswith("sm://rackboot-example/k3s-node-token: no Google credentials")
    assert report["cloud_init"]["status"] == "done" and report["cloud_init"]["errors"] == [], console
    assert report["failed_units"] == [], console
    assert sorted(report["ssh_host_keys"]) == ["ssh_host_ecdsa_key.pub", "ssh_host_ed25519_key.pub",
                                               "ssh_host_rsa_key.pub"]


# systemd-boot's EFI variables (the Boot Loader Interface): LoaderEntrySelected
# names the entry it booted.
LOADER_VARIABLES = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def debian_package(release: str, name: str, version: str) -> Path:
    """name=version for amd64 from Debian's archive for release (where
    mmdebstrap took the image's packages), downloaded once into the rackboot
    cache with an apt state of its own (the host's sources and release play
    no part)."""
    cache = rootfs.default_cache_dir() / "test-packages"
    target = cache / f"{name}_{version}_amd64.deb"
    if target.exists():
        return target
    apt = cache / f"apt-{release}"
    for directory in (apt / "lists/partial", apt / "cache/archives/partial"):
        directory.mkdir(parents=True, exist_ok=True)
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (apt / "sources.list").write_text(
        f"deb [signed-by={keyring}] http://deb.debian.org/debian {release} main\n"
        f"deb [signed-by={keyring}] http://deb.debian.org/debian-security {release}-security main\n")
    options = ["-o", f"Dir::Etc::SourceList={apt / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/nonexistent",
               "-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
               "-o", "APT::Architecture=amd64", "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]
    subprocess.run(["apt-get", "-q", *options, "update"], check=True, capture_output=True)
    subprocess.run(["apt-get", "-q", *options, "download", f"{name}={version}"], cwd=cache, check=True,
                   capture_output=True)
    return target


def esp_state(ssh) -> dict:
    """The ESP as the running jumphost has it: what is mounted at /boot/efi,
    its loader entries (file name -> fields) and the kernel files."""
    listing = ssh("sudo", "find", "/boot/efi/loader/entries", "/boot/efi/rackboot", "-type", "f").split()
    entries = {path.rsplit("/", 1)[1]: dict(line.split(" ", 1) for line in ssh("sudo", "cat", path).splitlines())
               for path in listing if path.startswith("/boot/efi/loader/entries/")}
    return {"mount": ssh("findmnt", "-n", "-o", "FSTYPE", "/boot/efi").strip(), "entries": entries,
            "files": sorted(path for path in listing if path.startswith("/boot/efi/rackboot/"))}


def booted_kernel(ssh) -> dict:
    """What this boot runs: the kernel's own release string, its command line,
    the entry systemd-boot says it booted, and the ESP."""
    variable = ssh("sudo", "base64", "-w0", f"/sys/firmware/efi/efivars/LoaderEntrySelected-{LOADER_VARIABLES}")
    selected = base64.b64decode(variable)[4:].decode("utf-16-le").rstrip("\0")   # 4 bytes of attributes
    return {"release": ssh("uname", "-r").strip(), "cmdline": ssh("cat", "/proc/cmdline").strip(),
            "entry": selected, "esp": esp_state(ssh)}


def install_another_kernel(ssh, copy) -> dict:
    """dpkg -i, on the running jumphost, of a kernel that is not the image's:
    Debian's cloud flavour of the image's own kernel (same source package and
    version, another build), whose `uname -r` differs. A kernel binary
    reports the release it was built with, so the image's own kernel
    repackaged under another version would still report the old one:
    only another real kernel shows that the next boot ran the new one."""
    before = booted_kernel(ssh)
    running = before["release"]
    assert running.endswith("-amd64"), running
    cloud = running.removesuffix("amd64") + "cloud-amd64"
    package_version = ssh("dpkg-query", "-W", "-f='${Version}'", f"linux-image-{running}").strip()
    release = ssh("sed", "-n", "s/^VERSION_CODENAME=//p", "/etc/os-release").strip()
    deb = debian_package(release, f"linux-image-{cloud}", package_version)
    copy(deb, f"/var/tmp/{deb.name}")
    output = ssh("sudo", "env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", f"/var/tmp/{deb.name}", "2>&1",
                 check=False, timeout=3600)
    return {"running": running, "cloud": cloud, "package": f"linux-image-{cloud}", "before": before,
            "dpkg": output, "after": esp_state(ssh)}


def purge_kernel(ssh, package: str) -> dict:
    """dpkg --purge of the running kernel (debconf's noninteractive frontend
    answers linux-base's question about removing the running kernel)."""
    output = ssh("sudo", "env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "--purge", package, "2>&1",
                 check=False, timeout=3600)
    return {"dpkg": output, "esp": esp_state(ssh)}


def kernel_update_reached_the_esp(update: dict, booted: dict, purged: dict) -> None:
    """The image's ESP, mounted at /boot/efi, has one entry for the image's
    kernel, which the boot before the update ran. Installing a kernel
    package put it on the ESP (versioned files, an entry of its own) beside
    the image's; the next boot ran it: its `uname -r`, systemd-boot's
    LoaderEntrySelected and its /proc/cmdline (the initramfs the loader
    passed) all name the new entry's. Purging it took its entry and files
    off and left the image's entry as it was."""
    running, cloud = update["running"], update["cloud"]
    old_entry, new_entry = f"rackboot-{running}.conf", f"rackboot-{cloud}.conf"
    console = ARTIFACTS / "jumphost-1-new-kernel" / "serial.log"
    before = update["before"]
    assert before["esp"]["mount"] == "vfat", before
    assert before["entry"] == old_entry and list(before["esp"]["entries"]) == [old_entry], before
    image_entry = before["esp"]["entries"][old_entry]
    assert f"esp-kernel: {cloud} is on the EFI system partition" in update["dpkg"], update["dpkg"]
    after = update["after"]
    assert sorted(after["entries"]) == sorted([old_entry, new_entry]), (after, update["dpkg"])
    assert after["entries"][old_entry] == image_entry
    installed = after["entries"][new_entry]
    assert installed["version"] == cloud and installed["options"] == image_entry["options"], installed
    for field in ("linux", "initrd"):
        assert installed[field].startswith(f"/rackboot/{cloud}/"), installed
        assert f"/boot/efi{installed[field]}" in after["files"], (installed, after["files"])
    assert booted["release"] == cloud, (booted, f"see {console}")
    assert booted["entry"] == new_entry, (booted, f"see {console}")
    # systemd-boot also puts the initramfs it passed on the command line (initrd=\path), as 252 does.
    words = booted["cmdline"].split()
    given = [word.removeprefix("initrd=") for word in words if word.startswith("initrd=")]
    assert [word for word in words if not word.startswith("initrd=")] == installed["options"].split(), booted
    assert given in ([], [installed["initrd"].replace("/", "\\")]), booted
    assert booted["esp"] == after, booted
    assert f"esp-kernel: {cloud} is off the EFI system partition" in purged["dpkg"], purged["dpkg"]
    assert purged["esp"] == before["esp"], (purged, before)
