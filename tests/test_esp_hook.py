"""The jumphost's kernel hook (image/jumphost-esp/usr/lib/rackboot/esp-kernel)
run as Debian runs it, over a scratch tree: a fake ESP with systemd-boot's
loader directory, a /boot with kernels and initramfs images, and the kernel
command line. What a real dpkg -i and reboot do with it is the VM tier's
(tests/test_vm_jumphost.py)."""

import os
import subprocess
from pathlib import Path

import pytest

from image import disk, esp_kernel

TOOL = esp_kernel.HOOKS / esp_kernel.TOOL
VERSION = "6.1.0-56-amd64"
NEWER = "6.1.0-57-amd64"


@pytest.fixture
def scratch(tmp_path):
    esp, boot = tmp_path / "esp", tmp_path / "boot"
    disk.esp_tree(esp, _file(tmp_path / "systemd-bootx64.efi", "loader"))
    boot.mkdir()
    for version in (VERSION, NEWER):
        _file(boot / f"vmlinuz-{version}", f"kernel {version}")
        _file(boot / f"initrd.img-{version}", f"initramfs {version}")
    _file(tmp_path / "cmdline", disk.KERNEL_CMDLINE + "\n")
    return tmp_path


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def hook(scratch: Path, *args: str, program: Path = TOOL, **env) -> subprocess.CompletedProcess:
    environment = {"PATH": os.environ["PATH"], "RACKBOOT_ESP": str(scratch / "esp"),
                   "RACKBOOT_BOOT": str(scratch / "boot"), "RACKBOOT_CMDLINE": str(scratch / "cmdline"), **env}
    return subprocess.run(["sh", str(program), *args], env=environment, capture_output=True, text=True)


def tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text(errors="replace")
            for p in sorted(directory.rglob("*")) if p.is_file()}


def entry(scratch: Path, version: str) -> dict[str, str]:
    text = (scratch / "esp/loader/entries" / f"rackboot-{version}.conf").read_text()
    return dict(line.split(" ", 1) for line in text.splitlines())


def test_a_kernel_goes_onto_the_esp_under_versioned_names_with_an_entry_of_its_own(scratch):
    result = hook(scratch, "add", VERSION, f"/boot/vmlinuz-{VERSION}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""      # hooks may run under debconf: stdout is not theirs
    fields = entry(scratch, VERSION)
    assert fields["version"] == VERSION and fields["sort-key"] == "rackboot"
    assert fields["options"] == disk.KERNEL_CMDLINE
    esp = tree(scratch / "esp")
    assert esp[fields["linux"].lstrip("/")] == f"kernel {VERSION}"
    assert esp[fields["initrd"].lstrip("/")] == f"initramfs {VERSION}"
    assert fields["linux"].startswith(f"/rackboot/{VERSION}/vmlinuz-")
    assert sorted(esp) == sorted(["EFI/BOOT/BOOTX64.EFI", "loader/loader.conf",
                                  f"loader/entries/rackboot-{VERSION}.conf",
                                  fields["linux"].lstrip("/"), fields["initrd"].lstrip("/")])
    assert esp["loader/loader.conf"].splitlines()[0] == "default rackboot-*"


def test_a_new_initramfs_gets_a_new_name_and_the_old_one_goes_only_after_the_entry_switched(scratch):
    hook(scratch, "add", VERSION)
    before = entry(scratch, VERSION)
    _file(scratch / "boot" / f"initrd.img-{VERSION}", "initramfs made anew")
    # update-initramfs's post-update.d hook: VERSION and the initramfs's path.
    result = hook(scratch, "add", VERSION, f"/boot/initrd.img-{VERSION}")
    assert result.returncode == 0, result.stderr
    after = entry(scratch, VERSION)
    assert after["linux"] == before["linux"] and after["initrd"] != before["initrd"]
    esp = tree(scratch / "esp")
    assert esp[after["initrd"].lstrip("/")] == "initramfs made anew"
    assert before["initrd"].lstrip("/") not in esp
    assert not [name for name in esp if name.endswith(".new")]


def test_the_same_kernel_again_changes_nothing(scratch):
    hook(scratch, "add", VERSION)
    files = {p: p.stat().st_mtime_ns for p in (scratch / "esp/rackboot").rglob("*") if p.is_file()}
    assert hook(scratch, "add", VERSION).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (scratch / "esp/rackboot").rglob("*") if p.is_file()} == files


def test_two_kernels_two_entries_and_removing_one_leaves_the_other(scratch):
    hook(scratch, "add", VERSION)
    hook(scratch, "add", NEWER)
    older = tree(scratch / "esp")
    assert {f"loader/entries/rackboot-{v}.conf" for v in (VERSION, NEWER)} <= set(older)
    # The kernel's postrm runs its hooks for remove, and again for purge.
    result = hook(scratch, "remove", NEWER, f"/boot/vmlinuz-{NEWER}", DEB_MAINT_PARAMS="remove")
    assert result.returncode == 0, result.stderr
    esp = tree(scratch / "esp")
    assert not [name for name in esp if NEWER in name]
    assert {name: text for name, text in older.items() if NEWER not in name} == esp
    assert hook(scratch, "remove", NEWER, DEB_MAINT_PARAMS="purge").returncode == 0
    assert tree(scratch / "esp") == esp


def test_the_last_kernel_keeps_its_entry(scratch):
    hook(scratch, "add", VERSION)
    before = tree(scratch / "esp")
    result = hook(scratch, "remove", VERSION, DEB_MAINT_PARAMS="remove")
    assert result.returncode == 0 and "the only kernel" in result.stderr
    assert tree(scratch / "esp") == before


@pytest.mark.parametrize("action, params", [("add", "upgrade 6.1.190-1"), ("add", "abort-upgrade"),
                                            ("remove", "upgrade 6.1.192-3"), ("remove", "'purge'"),
                                            ("add", "'remove'")])
def test_maintainer_script_phases_other_than_configure_and_remove_do_nothing(scratch, action, params):
    hook(scratch, "add", VERSION)
    hook(scratch, "add", NEWER)
    before = tree(scratch / "esp")
    _file(scratch / "boot" / f"initrd.img-{VERSION}", "initramfs made anew")
    result = hook(scratch, action, NEWER if action == "remove" else VERSION, DEB_MAINT_PARAMS=params)
    assert result.returncode == 0, result.stderr
    assert tree(scratch / "esp") == before


def test_single_quoted_configure_acts(scratch):
    result = hook(scratch, "add", VERSION, DEB_MAINT_PARAMS="'configure'")
    assert result.returncode == 0, result.stderr
    assert (scratch / "esp/loader/entries" / f"rackboot-{VERSION}.conf").exists()


@pytest.mark.parametrize("version", ["", "../../EFI/BOOT", "6.1/../x", "amd64-6.1", "6.1 x", "6.1\nx", "6.1;x",
                                     "6.1$(x)", "-6.1", "6.1..0", "6" * 101, "6.1*"])
def test_a_version_that_is_not_one_is_refused_and_nothing_is_written(scratch, version):
    before = tree(scratch / "esp")
    for action in ("add", "remove"):
        result = hook(scratch, action, version, "/boot/vmlinuz")
        assert result.returncode == 2, (action, result)
        assert "kernel version" in result.stderr and "argument 2" in result.stderr
        assert tree(scratch / "esp") == before
    assert not (scratch / "esp/rackboot").exists()


@pytest.mark.parametrize("args", [(), ("add",), ("install", VERSION), ("add", VERSION, "/boot/x", "more")])
def test_wrong_arguments_are_refused(scratch, args):
    result = hook(scratch, *args)
    assert result.returncode == 2 and "usage" in result.stderr, result
    assert not (scratch / "esp/rackboot").exists()


def test_a_kernel_not_installed_is_refused(scratch):
    result = hook(scratch, "add", "6.1.0-99-amd64")
    assert result.returncode == 2 and f"{scratch}/boot/vmlinuz-6.1.0-99-amd64 is missing" in result.stderr
    (scratch / "boot" / f"initrd.img-{VERSION}").unlink()
    result = hook(scratch, "add", VERSION)
    assert result.returncode == 2 and f"initrd.img-{VERSION} is missing" in result.stderr
    assert not (scratch / "esp/rackboot").exists()


def test_an_esp_that_is_not_mounted_is_refused(scratch):
    """/boot/efi without the ESP mounted is an empty directory of the root:
    a kernel copied there would never boot."""
    empty = scratch / "not-mounted"
    empty.mkdir()
    for action in ("add", "remove"):
        result = hook(scratch, action, VERSION, RACKBOOT_ESP=str(empty))
        assert result.returncode == 1 and "is the EFI system partition mounted?" in result.stderr
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("cmdline", ["", "\n", "root=x\nrw\n", "root=x\trw\n"])
def test_a_kernel_command_line_that_is_not_one_line_is_refused(scratch, cmdline):
    _file(scratch / "cmdline", cmdline)
    result = hook(scratch, "add", VERSION)
    assert result.returncode == 1 and str(scratch / "cmdline") in result.stderr, result
    assert not list((scratch / "esp/loader/entries").iterdir())


def test_debians_three_hooks_run_the_script_with_their_arguments():
    expected = {"etc/kernel/postinst.d/zz-rackboot-esp": "add", "etc/kernel/postrm.d/zz-rackboot-esp": "remove",
                "etc/initramfs/post-update.d/zz-rackboot-esp": "add"}
    for path, action in expected.items():
        lines = (esp_kernel.HOOKS / path).read_text().splitlines()
        assert lines[0] == "#!/bin/sh" and lines[-1] == f'exec /{esp_kernel.TOOL} {action} "$@"', path


def test_the_image_build_lays_the_hooks_and_puts_its_kernel_on_the_esp(tmp_path):
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    _file(root / "boot" / f"vmlinuz-{VERSION}", "the image's kernel")
    _file(root / "boot" / f"initrd.img-{VERSION}", "the image's initramfs")
    esp_kernel.install_hooks(root, disk.KERNEL_CMDLINE)
    for path in ("usr/lib/rackboot/esp-kernel", "etc/kernel/postinst.d/zz-rackboot-esp"):
        assert os.stat(root / path).st_mode & 0o777 == 0o755, path
    assert (root / "etc/kernel/cmdline").read_text() == disk.KERNEL_CMDLINE + "\n"
    disk.esp_tree(tmp_path / "esp", _file(tmp_path / "systemd-bootx64.efi", "loader"))
    assert esp_kernel.put_kernel(root, tmp_path / "esp") == VERSION
    scratch = tmp_path
    fields = entry(scratch, VERSION)
    assert (tmp_path / "esp" / fields["linux"].lstrip("/")).read_text() == "the image's kernel"
    assert fields["options"] == disk.KERNEL_CMDLINE
