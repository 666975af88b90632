"""The mmdebstrap hooks (image/rootfs.py): shell text that mmdebstrap runs
under sh with the chroot as $1 (and its special hooks, copy-out, split as sh
splits words). Every path in them is quoted: a cache directory or checkout
with a space or a quote in its name must neither break the build nor become
shell words. Rendered and run here as mmdebstrap runs them, with no build."""

import shlex
import subprocess
from pathlib import Path

import pytest

from image import rootfs

ODD = "a dir with 'quotes' and $HOME; `x`"


def hook_text(hook: str) -> tuple[str, str]:
    """--KIND-hook=TEXT -> (KIND, TEXT)."""
    option, text = hook.split("=", 1)
    return option.removeprefix("--").removesuffix("-hook"), text


def run_hook(text: str, chroot: Path) -> None:
    """As mmdebstrap runs a hook with shell metacharacters: sh -c TEXT exec CHROOT."""
    subprocess.run(["sh", "-c", text, "exec", str(chroot)], check=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def odd(tmp_path) -> Path:
    path = tmp_path / ODD
    path.mkdir()
    return path


def test_paths_come_back_intact_from_shlex_split(odd):
    preseed = odd / "preseed"
    preseed.mkdir()
    staging = odd / ".rootfs-bookworm-arm64-0123"
    spec = rootfs.RootfsSpec("bookworm", "arm64", ("python3",), initramfs_modules="netboot",
                             copy_out=("/usr/lib/raspi-firmware", "/usr/lib/linux-image-*"), preseed_dir=preseed)
    words = [shlex.split(hook_text(hook)[1]) for hook in rootfs.mmdebstrap_hooks(spec, staging)]
    assert f"{preseed}/." in words[0]
    assert ["copy-out", "/boot", str(staging)] in words
    [copied] = [w for w in words if str(staging / "copied") in w]
    assert copied[-1] == f"{staging}/copied/"
    assert any(rootfs.TOOL_DIVERTED in w for w in words)


def test_hooks_do_what_they_say_in_an_odd_directory(odd):
    preseed = odd / "preseed"
    (preseed / "etc/initramfs-tools/scripts").mkdir(parents=True)
    (preseed / "etc/initramfs-tools/scripts/rackboot").write_text("#!/bin/sh\n")
    chroot = odd / "chroot"
    (chroot / "usr/lib/linux-image-6.1/broadcom").mkdir(parents=True)
    (chroot / "usr/lib/linux-image-6.1/broadcom/bcm2711-rpi-4-b.dtb").write_text("dtb")
    (chroot / "usr/lib/raspi-firmware").mkdir(parents=True)
    (chroot / "usr/lib/raspi-firmware/start4.elf").write_text("elf")
    staging = odd / "staging"
    staging.mkdir()
    spec = rootfs.RootfsSpec("bookworm", "arm64", ("python3",), initramfs_modules="netboot",
                             copy_out=("/usr/lib/raspi-firmware", "/usr/lib/linux-image-*"), preseed_dir=preseed)
    hooks = [hook_text(hook) for hook in rootfs.mmdebstrap_hooks(spec, staging)]
    setup = [text for kind, text in hooks if kind == "setup"]
    copy_out = [text for kind, text in hooks if kind == "customize" and "copied" in text]
    for text in setup + copy_out:
        run_hook(text, chroot)
    assert (chroot / "etc/initramfs-tools/scripts/rackboot").read_text() == "#!/bin/sh\n"
    assert (chroot / "etc/initramfs-tools/conf.d/rackboot").read_text() == "MODULES=netboot\n"
    assert (staging / "copied/raspi-firmware/start4.elf").read_text() == "elf"
    assert (staging / "copied/linux-image-6.1/broadcom/bcm2711-rpi-4-b.dtb").read_text() == "dtb"
    assert sorted(p.name for p in odd.iterdir()) == ["chroot", "preseed", "staging"]   # nothing written beside


@pytest.mark.parametrize("path", ["/usr/lib/a b", "usr/lib/x", "/usr/lib/$(id)", "/usr/lib/x;rm"])
def test_copy_out_takes_plain_paths_only(tmp_path, path):
    spec = rootfs.RootfsSpec("bookworm", "arm64", ("python3",), copy_out=(path,))
    with pytest.raises(ValueError, match="copy_out"):
        rootfs.mmdebstrap_hooks(spec, tmp_path)
