"""The jumphost's kernels on its EFI system partition, kept there by the
machine itself: Debian's kernel and initramfs hooks (image/jumphost-esp/,
laid over the root) run /usr/lib/rackboot/esp-kernel whenever a kernel
package is installed or removed or an initramfs is made anew, and the image
build runs the same script once to put the image's own kernel on the ESP.
So the image and every later kernel update share one layout (the script's
header describes it), and the next boot runs the newest kernel.
"""

import os
import re
import shutil
from pathlib import Path

from firstboot.commands import run
from firstboot.errors import RackbootError

HOOKS = Path(__file__).parent / "jumphost-esp"
TOOL = Path("usr/lib/rackboot/esp-kernel")
CMDLINE = Path("etc/kernel/cmdline")    # kernel-install's name for it; the script reads it for every entry
KERNEL_NAME = re.compile(r"vmlinuz-(?P<version>[0-9][0-9A-Za-z.+~_-]*)")


def install_hooks(tree: Path, cmdline: str) -> None:
    """The script, its three Debian hooks and the kernel command line, into tree."""
    for source in sorted(p for p in HOOKS.rglob("*") if p.is_file()):
        path = tree / source.relative_to(HOOKS)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        # Every file here is a program; the checkout's modes may not say so.
        os.chmod(path, 0o755)
    (tree / CMDLINE).write_text(cmdline + "\n")


def kernel_version(tree: Path) -> str:
    """The version of the one kernel in tree's /boot."""
    versions = [m["version"] for p in sorted((tree / "boot").glob("vmlinuz-*"))
                if (m := KERNEL_NAME.fullmatch(p.name))]
    if len(versions) != 1:
        raise RackbootError(f"expected one kernel in {tree / 'boot'}, found {versions or 'none'}",
                            hint="rebuild the root filesystem with --no-cache")
    return versions[0]


def put_kernel(tree: Path, esp: Path) -> str:
    """tree's kernel and initramfs onto the ESP tree esp (which has its
    loader already), as the machine's own hook would; its version."""
    version = kernel_version(tree)
    run(["sh", tree / TOOL, "add", version],
        env={"RACKBOOT_ESP": str(esp), "RACKBOOT_BOOT": str(tree / "boot"),
             "RACKBOOT_CMDLINE": str(tree / CMDLINE)})
    return version
