#!/usr/bin/env python3
"""Benchmark: a joined two-Pi rack, and how many Pi boots one jumphost serves.

  rack    the virtual rack (tests/lib/vm.py): time from the jumphost's power-on to
          its "rack ready", and from the Pis' power-on to both joined; the
          bytes the jumphost's NFS server read for the two Pis' boots
          (/proc/net/rpc/nfsd, over ssh), per Pi
  tftp    real dnsmasq with the real TFTP tree (in a network namespace of
          its own), 1, 4 and 16 Pi 4 boot sequences fetched at once on the
          loopback: throughput, against the 1 GbE line rate (125 MB/s)

and from both, how many Pi boots a minute one jumphost's 1 GbE link could
carry (TFTP bytes + NFS bytes per boot, at line rate), against how many the
loopback TFTP measurement reaches. One run each; figures only, no verdict.

Run: sudo .venv/bin/python tests/bench/bench_rack.py [--image DIR] [--skip-rack]
     (about 12 minutes with a built image under TCG; --image reuses DIR/jumphost.img)
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot.profile import load_profiles  # noqa: E402
from image import jumphost, k3s_bundle, netboot, render, rootfs  # noqa: E402
from tests.doubles import k3s_standin_bundle  # noqa: E402
from tests.test_netboot import SEQUENCE, OPTIONAL, Dnsmasq  # noqa: E402
from tests.lib.vm import VirtualRack  # noqa: E402

LINE_RATE = 125e6          # 1 GbE in bytes per second
MB = 1e6


def nfsd_bytes_read(rack: VirtualRack) -> int:
    for line in rack.ssh("cat", "/proc/net/rpc/nfsd").splitlines():
        if line.startswith("io "):
            return int(line.split()[1])
    raise RuntimeError("no io line in the jumphost's /proc/net/rpc/nfsd")


def bench_rack(profile, image: Path, work: Path) -> dict:
    rack = VirtualRack(profile, image, work, b"bench-rack-token", prefix="bench-rack")
    figures = {}
    start = time.monotonic()

    def with_jumphost_ready(report):
        figures["jumphost_ready"] = time.monotonic() - start
        assert all(outcome == "done" for outcome in report["steps"].values()), report["errors"]
        before = nfsd_bytes_read(rack)
        pis_start = time.monotonic()
        for vm in rack.pis:
            vm.power_on()
        reports = [vm.report() for vm in rack.pis]
        figures["pis_joined"] = time.monotonic() - pis_start
        figures["pi_uptimes"] = [r["uptime"]["report"] for r in reports]
        assert all(r["steps"]["k3s"] == "done" for r in reports), [r["errors"] for r in reports]
        figures["nfs_bytes_per_pi"] = (nfsd_bytes_read(rack) - before) / len(rack.pis)

    try:
        rack.run(with_jumphost_ready)
    finally:
        rack.close()
    return figures


def bench_tftp(profile, tree: Path, work: Path) -> tuple[int, list[tuple[int, float]]]:
    rendered = render.render_rack(profile)
    conf = rendered[PurePosixPath("jumphost/rootfs/etc/dnsmasq.d/rackboot-netboot.conf")]
    names = [n for n in dict.fromkeys(SEQUENCE) if n not in OPTIONAL]
    serial = profile.pis[0].serial
    boot_bytes = sum((tree / n).stat().st_size for n in names)
    server = Dnsmasq(conf, tree, profile.netboot.tftp_root, work)
    results = []
    try:
        for clients in (1, 4, 16):
            argv = [*server.nsenter, sys.executable, "-m", "tests.lib.tftp_client", "127.0.0.1",
                    *[f"{serial}/{n}" for n in names]]
            began = time.monotonic()
            running = [subprocess.Popen([*argv, "--out", str(work / f"c{clients}-{i}")], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                       for i in range(clients)]
            for process in running:
                if process.wait() != 0:
                    raise RuntimeError(process.stderr.read().decode())
            results.append((clients, time.monotonic() - began))
    finally:
        server.stop()
    return boot_bytes, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a directory with the example rack's jumphost.img")
    parser.add_argument("--skip-rack", action="store_true", help="only the TFTP measurement")
    args = parser.parse_args()
    [profile] = load_profiles([REPO / "rack-profiles/example.yaml"])
    with tempfile.TemporaryDirectory(prefix="bench-rack-") as work:
        work = Path(work)
        pi_rootfs = rootfs.build(netboot.pi_rootfs_spec(rootfs.DEFAULT_RELEASE), rootfs.default_cache_dir())
        tree = netboot.write_tftp_tree(profile, render.render_rack(profile), netboot.boot_files(pi_rootfs), work)
        boot_bytes, tftp = bench_tftp(profile, tree, work)
        print(f"TFTP: one Pi 4 boot sequence is {boot_bytes / MB:.1f} MB "
              f"(firmware, config, device tree, cmdline, kernel, initramfs)")
        for clients, seconds in tftp:
            rate = clients * boot_bytes / seconds
            print(f"  {clients:2d} at once: {seconds:6.1f} s, {rate / MB:6.1f} MB/s = {rate / LINE_RATE:.2f}x 1 GbE, "
                  f"{60 * rate / boot_bytes:6.1f} Pi boots/min")
        tftp_boots_per_minute = max(60 * clients / seconds for clients, seconds in tftp)
        print("  (the Python TFTP clients share this host's CPUs with dnsmasq: a lower bound for dnsmasq)")
        if args.skip_rack:
            return 0
        image_dir = args.image
        if image_dir is None:
            image_dir = work / "image"
            bundle = k3s_standin_bundle.real_bundle() or k3s_standin_bundle.make(work / "k3s", profile.k3s.version)
            jumphost.build([profile], jumphost.ImageOptions(output=image_dir, k3s_bundles=(k3s_bundle.verify(bundle),)))
        rack = bench_rack(profile, image_dir / "jumphost.img", work)
        nfs = rack["nfs_bytes_per_pi"]
        print(f"virtual rack (QEMU TCG): jumphost rack ready {rack['jumphost_ready']:.0f} s after power-on; "
              f"two Pis joined {rack['pis_joined']:.0f} s after theirs "
              f"(their own uptime at report: {', '.join(f'{u:.0f} s' for u in rack['pi_uptimes'])})")
        per_boot = boot_bytes + nfs
        print(f"NFS: the jumphost read {nfs / MB:.1f} MB per Pi boot; with TFTP, {per_boot / MB:.1f} MB per boot")
        print(f"1 GbE line rate carries {60 * LINE_RATE / per_boot:.0f} Pi boots/min (TFTP + NFS bytes); "
              f"this jumphost's dnsmasq served the TFTP part of {tftp_boots_per_minute:.0f} boots/min on loopback")
    return 0


if __name__ == "__main__":
    sys.exit(main())
