#!/usr/bin/env python3
"""Benchmark: validate + render the 300-Pi profile.

Prints seconds per run and the ratio to a baseline measured in the same run:
parsing the same YAML with PyYAML's SafeLoader alone, the least any tool that
reads the profile must pay. Run: .venv/bin/python tests/bench/bench_render.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from firstboot.profile import load_profiles  # noqa: E402
from image import render  # noqa: E402

PROFILE = REPO / "rack-profiles" / "big-rack.yaml"
ROUNDS = 7


def timed(func) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        baseline = timed(lambda: yaml.load(PROFILE.read_text(), Loader=yaml.SafeLoader))
        validate = timed(lambda: load_profiles([PROFILE]))
        profiles = load_profiles([PROFILE])
        render_only = timed(lambda: render.render(profiles, Path(out)))
        both = timed(lambda: render.render(load_profiles([PROFILE]), Path(out)))
        files = sum(1 for p in Path(out).rglob("*") if p.is_file())
    print(f"profile: {PROFILE.name} ({len(profiles[0].pis)} Pis, {files} files rendered), median of {ROUNDS}")
    print(f"baseline  yaml.safe_load only     {baseline * 1000:8.1f} ms   1.0x")
    print(f"validate  load_profiles           {validate * 1000:8.1f} ms {validate / baseline:6.1f}x")
    print(f"render    render (to disk)        {render_only * 1000:8.1f} ms {render_only / baseline:6.1f}x")
    print(f"total     validate + render       {both * 1000:8.1f} ms {both / baseline:6.1f}x")


if __name__ == "__main__":
    main()
