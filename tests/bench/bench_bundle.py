#!/usr/bin/env python3
"""Benchmark: the 300-Pi profile's rack bundle (issue 14's goal: at most 2 s).

Prints, median of ROUNDS runs:
  - `./build.py bundle big-rack.yaml -o DIR --revision 1` as an operator runs
    it (a new process: interpreter start, checks, render, TFTP tree, digest);
  - the same in one process: load and check the profile, write the bundle;
  - verifying it as the agent does at every boot (every entry hashed, digest).
Run: .venv/bin/python tests/bench/bench_bundle.py
"""

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from firstboot import bundle  # noqa: E402
from firstboot.profile import load_profiles  # noqa: E402
from image import bundle_build  # noqa: E402

PROFILE = REPO / "rack-profiles" / "big-rack.yaml"
ROUNDS = 5


def timed(func) -> float:
    """The median seconds of func(round) (each round writes a directory of its own)."""
    samples = []
    for round_number in range(ROUNDS):
        start = time.perf_counter()
        func(round_number)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rackboot-bench-bundle-") as work:
        work = Path(work)
        command = [sys.executable, str(REPO / "build.py"), "bundle", str(PROFILE), "--revision", "1", "-o"]
        cli = timed(lambda n: subprocess.run([*command, str(work / f"cli-{n}")], check=True,
                                             stdin=subprocess.DEVNULL, capture_output=True))
        written = timed(lambda n: bundle_build.write(load_profiles([PROFILE])[0], work / f"lib-{n}" / "big-rack", 1,
                                                     None))
        made = bundle.verify(work / "lib-0" / "big-rack")
        verify = timed(lambda n: bundle.verify(work / f"lib-{n}" / "big-rack", "big-rack", 1))
        size = sum(p.stat().st_size for p in made.directory.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"profile: {PROFILE.name}, bundle of {len(made.entries)} entries, {size / 1024:.0f} KiB of files, "
          f"median of {ROUNDS}")
    print(f"build.py bundle (new process)     {cli:6.2f} s   (goal: at most 2 s)")
    print(f"load profile + write bundle       {written:6.2f} s")
    print(f"verify (the agent, every boot)    {verify:6.2f} s")


if __name__ == "__main__":
    main()
