#!/usr/bin/env python3
"""Benchmark: first boot to "rack ready" against a bare cloud-init boot of the
same image, one run each (needs root to build the image; QEMU TCG).

Both boots use the example rack's image (with the k3s stand-in bundle, or
real k3s with RACKBOOT_K3S_BUNDLE=DIR) and its seed, from fresh copies, with
the image's own kernel, initrd and command line passed by QEMU so that the
baseline can add one argument:

  bare        systemd.mask=rackboot-firstboot.service: cloud-init alone; done
              when cloud-init prints "finished" on the serial console
  rack ready  the agent's run: identify, token (Secret Manager double on the
              host), k3s, ready, apply; done when its report arrives

Prints host wall-clock seconds from QEMU start for each, their ratio, and the
guest's own uptimes (cloud-init finished, report sent) from the agent run.

Run: sudo .venv/bin/python tests/bench/bench_firstboot.py [--image DIR]
     (about 4 minutes with a built image; --image reuses DIR/jumphost.img)
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot.profile import load_profiles  # noqa: E402
from image import disk, jumphost, k3s_bundle, qemu, seed  # noqa: E402
from image import progress  # noqa: E402
from tests.doubles import k3s_standin_bundle  # noqa: E402
from tests.doubles.secret_manager import SecretManagerDouble  # noqa: E402

TIMEOUT = 900


def extract_boot_files(image: Path, work: Path) -> tuple[Path, Path]:
    """The kernel and initrd from the image's ESP (mtools reads FAT in place)."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                                      check=True).stdout)
    [esp] = [p for p in table["partitiontable"]["partitions"] if p.get("name") == "esp"]
    offset = esp["start"] * 512
    files = []
    for name in ("vmlinuz", "initrd.img"):
        target = work / name
        subprocess.run(["mcopy", "-n", "-i", f"{image}@@{offset}", f"::rackboot/{name}", str(target)], check=True)
        files.append(target)
    return files[0], files[1]


def timed_boot(profile, image: Path, work: Path, name: str, cmdline: str, agent_env: dict,
               done) -> tuple[float, dict | None]:
    files = qemu.BootFiles(work / name)
    qemu.prepare(files)
    copy = files.workdir / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
    kernel, initrd = extract_boot_files(image, files.workdir)
    seed_image = seed.make_seed(profile, files.workdir, agent_env)
    argv = qemu.qemu_argv(profile, copy, seed_image, files) + [
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
    start = time.monotonic()
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as proc:
        try:
            while time.monotonic() - start < TIMEOUT:
                result = done(files)
                if result is not None:
                    return time.monotonic() - start, result
                if proc.poll() is not None:
                    raise SystemExit(f"QEMU exited early; see {files.serial_log}")
                time.sleep(0.5)
            raise SystemExit(f"{name}: not done within {TIMEOUT} s; see {files.serial_log}")
        finally:
            proc.terminate()
            proc.wait()


def cloud_init_finished(files) -> dict | None:
    text = files.serial_log.read_text(errors="replace") if files.serial_log.exists() else ""
    return {} if re.search(r"Cloud-init v\. \S+ finished at", text) else None


def agent_report(files) -> dict | None:
    text = files.status_log.read_text() if files.status_log.exists() else ""
    return json.loads(text.split("\n", 1)[0]) if "\n" in text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a directory holding an already built jumphost.img")
    args = parser.parse_args()
    progress.setup()
    [profile] = load_profiles([REPO / "rack-profiles/example.yaml"])
    with tempfile.TemporaryDirectory(prefix="rackboot-bench-") as work:
        work = Path(work)
        out = args.image
        if out is None:
            out = work / "image"
            bundle = k3s_standin_bundle.real_bundle() or k3s_standin_bundle.make(work / "k3s", profile.k3s.version)
            jumphost.build([profile], jumphost.ImageOptions(output=out, k3s_bundles=(k3s_bundle.verify(bundle),)))
        image = out / jumphost.IMAGE_NAME
        sm = SecretManagerDouble()
        sm.add("rackboot-example", "k3s-node-token", b"bench-rack-token")
        sm.start()
        env = {"SECRET_MANAGER_EMULATOR_HOST": f"{profile.network.router}:{sm.address.rsplit(':', 1)[1]}"}
        try:
            bare, _ = timed_boot(profile, image, work, "bare", disk.KERNEL_CMDLINE
                                 + " systemd.mask=rackboot-firstboot.service", env, cloud_init_finished)
            ready, report = timed_boot(profile, image, work, "agent", disk.KERNEL_CMDLINE, env, agent_report)
        finally:
            sm.stop()
    steps = report["steps"]
    print(f"bare cloud-init boot, QEMU start to cloud-init finished: {bare:6.1f} s  (1.00x)")
    print(f"agent boot, QEMU start to rack ready (report):           {ready:6.1f} s  ({ready / bare:.2f}x)")
    uptime = report.get("uptime", {})
    print(f"  guest uptime: cloud-init finished {uptime.get('cloud_init_finished')} s, "
          f"report {uptime.get('report')} s; steps: {steps}")
    if any(v != "done" for v in steps.values()):
        print(f"  not rack ready: {report.get('errors')}")
        sys.exit(1)


if __name__ == "__main__":
    main()
