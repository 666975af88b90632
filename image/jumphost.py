"""The hot-swappable jumphost image: one x86-64 disk image for every rack.

    render -> rootfs (cached) -> unpack -> install rackboot -> strip machine state
           -> [the Pis' root as a squashfs with its mount unit, TFTP trees (image/netboot.py)]
           -> ESP + ext4 root (on a rebuild: the cached OS tree's, plus the build's layer,
              image/ext4_layer.py), written into the disk image -> GPT (sfdisk)
           -> sha256 and bmap in one pass (image/flashing.py), [zstd]

The image carries every rack it serves (profiles, their Kubernetes YAML and
their rendered files) and no machine-specific state: a jumphost learns its
rack at first boot (firstboot/identify.py) and makes its own machine-id and
ssh host keys.
"""

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firstboot.profile import RackProfile
from image import (atomic, bundle_seal, disk, esp_kernel, ext4_layer, netboot, payload, progress, render,
                   reproducible, rootfs, tree_cache)
from firstboot.commands import run

IMAGE_NAME = "jumphost.img"
UNITS = ("rackboot-firstboot.service",)    # the image's own, for every rack (payload.shared_units)

CLOUD_CFG = """\
# rackboot: cloud-init reads only a NoCloud seed (a CIDATA disk or USB stick),
# or runs with no datasource, and renders networking for systemd-networkd.
datasource_list: [NoCloud, None]
# The image runs in C.UTF-8, which needs no generated locale; Debian's default
# (en_US.UTF-8) would need the locales package, which minbase lacks.
# cc_locale skips itself for a false-y string.
locale: "false"
# Without a seed cloud-init would also make a DSA host key, which OpenSSH
# no longer accepts.
ssh_genkeytypes: [ed25519, ecdsa, rsa]
system_info:
  network:
    renderers: [networkd]
"""

FSTAB = f"""\
PARTLABEL={disk.ROOT_LABEL} / ext4 defaults,noatime 0 1
PARTLABEL=esp /boot/efi vfat defaults,nofail,umask=0077 0 2
"""


@dataclass(frozen=True)
class ImageOptions:
    output: Path
    release: str = rootfs.DEFAULT_RELEASE
    cache_dir: Path = rootfs.default_cache_dir()
    use_cache: bool = True
    compress: bool = False
    k3s_bundles: tuple = ()     # image.k3s_bundle.Bundle, verified: one per k3s version the racks want


def _configure(tree: Path) -> None:
    (tree / "etc/cloud/cloud.cfg.d/90-rackboot.cfg").write_text(CLOUD_CFG)
    payload.make_ssh_host_keys_at_boot(tree)
    (tree / "etc/fstab").write_text(FSTAB)
    (tree / "boot/efi").mkdir(parents=True, exist_ok=True)
    esp_kernel.install_hooks(tree, disk.KERNEL_CMDLINE)
    (tree / "etc/hostname").write_text("rackboot\n")
    run(["systemctl", f"--root={tree}", "enable",
         "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service"])


def os_tree(base: rootfs.Rootfs, k3s_bundles: tuple, tree: Path) -> None:
    """What every rack's image has: Debian, the agent, k3s (each version its
    racks want), configuration (image/tree_cache.py)."""
    run(["tar", "-xf", base.tarball, "-C", tree, "--numeric-owner"])
    payload.install_agent(tree, "amd64")
    for bundle in k3s_bundles:
        payload.install_k3s(bundle, tree)
    _configure(tree)
    payload.strip_machine_state(tree)


def install_racks(profiles: list[RackProfile], rendered: dict, tree: Path) -> None:
    """What is the racks' own: profiles, rendered files, the agent's unit."""
    payload.install_profiles(profiles, tree)
    payload.install_racks(rendered, tree)
    payload.install_units(rendered, tree, "jumphost", UNITS)
    run(["systemctl", f"--root={tree}", "enable", *UNITS])


def build(profiles: list[RackProfile], options: ImageOptions) -> list[Path]:
    """The image of profiles' racks in options.output, the same bytes for the
    same inputs (image/reproducible.py)."""
    epoch = reproducible.source_date_epoch()
    with reproducible.epoch_in_environment(epoch):
        return _build(profiles, options, epoch)


def _build(profiles: list[RackProfile], options: ImageOptions, epoch: int) -> list[Path]:
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    with progress.step("render every rack's files"):
        env = render.environment()
        rendered = {p.rack: render.render_rack(p, env) for p in profiles}
    spec = rootfs.RootfsSpec(options.release, "amd64", rootfs.JUMPHOST_PACKAGES)
    with progress.step("root filesystem"):
        base = rootfs.build(spec, options.cache_dir, options.use_cache)
    pi_spec, pi_rootfs = netboot.pi_rootfs_spec(options.release), None
    if any(p.pis for p in profiles):
        with progress.step("Pi root filesystem (arm64)"):
            pi_rootfs = rootfs.build(pi_spec, options.cache_dir, options.use_cache)
    with tempfile.TemporaryDirectory(dir=output, prefix=".jumphost-") as work, contextlib.ExitStack() as layers:
        work = Path(work)
        tree = work / "tree"
        cache = options.cache_dir if options.use_cache else None
        with progress.step("unpack and install rackboot"):
            inputs = tree_cache.os_tree_inputs(base.tarball, "amd64", options.k3s_bundles)
            _, os_layers = layers.enter_context(tree_cache.prepared_layers(
                cache, "jumphost", inputs, tree, lambda target: os_tree(base, options.k3s_bundles, target)))
            install_racks(profiles, rendered, tree)
        if pi_rootfs is not None:
            with progress.step("the Pis' netboot: NFS root (squashfs) and TFTP trees"):
                netboot.install_into_image(profiles, rendered, pi_rootfs, tree, options.k3s_bundles, cache)
        bundle_seal.seal_racks(profiles, tree / payload.RACKS_DIR)    # each rack's tree: its bundle
        disk.esp_tree(work / "esp", tree / "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
        esp_kernel.put_kernel(tree, work / "esp")
        stamp = reproducible.Stamp(epoch, image_inputs(options, [spec, pi_rootfs and pi_spec], tree))
        disk.assemble(tree, work / "esp", work / "disk", work / IMAGE_NAME, stamp, ext4_layer.root_maker(os_layers))
        made = [work / IMAGE_NAME, *disk.flashing_files(work / IMAGE_NAME, options.compress)]
        return atomic.move_into(made, output)


def image_inputs(options: ImageOptions, specs: list, tree: Path) -> str:
    """The digest the image's UUIDs derive from: its root filesystems'
    package sets, the agent and builder code, the racks' sealed bundles
    (profiles and every rendered file) and the k3s bundle."""
    return reproducible.inputs_digest({
        "rootfs": [spec.key() for spec in specs if spec is not None],
        "agent": reproducible.REPO / "firstboot", "builder": reproducible.REPO / "image",
        "racks": tree / payload.RACKS_DIR,
        "k3s": [(bundle.version, sorted(bundle.files.items())) for bundle in options.k3s_bundles],
    })
