#!/usr/bin/env python
"""Curation speed and memory: curate a corpus once and print images per second and peak memory.

Peak memory is this process's largest resident set while it curates (its peak is reset first,
Linux only), next to its resident set before: curation keeps every film's hash and metadata in
memory until duplicates and patient groups are known. The image workers each hold one image at a
time and are not measured. Run it on two corpus sizes to see how memory grows with the corpus:

    .venv/bin/python scripts/benchmark_curation.py                     # the shared corpus, covid-vs-normal
    .venv/bin/python scripts/benchmark_curation.py --synthetic 1000    # 1,000 synthetic 1024 px films per class
    .venv/bin/python scripts/benchmark_curation.py --synthetic 4000 --workers 2

Synthetic films (``--synthetic N``, cartoons, not medical data) are written as a class-per-folder
source of 1024 x 1024 PNGs in a temporary directory first; that time is not counted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import covid_cxr

covid_cxr.quiet_import_warnings(__name__)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from covid_cxr.data import curate, features, synthetic  # noqa: E402
from covid_cxr.data.testing import REAL_DATA, REAL_SOURCE_DIRS  # noqa: E402

ADULT_SOURCES = ("cohen", "rsna", "radiography")  # what quality_benchmark.py curates for covid-vs-normal


def write_synthetic_source(root: str, per_class: int, size: int = 1024, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for finding, folder in ((features.COVID, "COVID"), (features.NORMAL, "NORMAL")):
        os.makedirs(os.path.join(root, folder))
        for i in range(per_class):
            pixels = synthetic.draw_radiograph(finding, synthetic.random_anatomy(rng), rng, (size, size))
            Image.fromarray(pixels, mode="L").save(os.path.join(root, folder, f"{i:06d}.png"))


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024  # kB


def reset_peak() -> float:
    """Resets this process's peak resident set size (VmHWM) and returns the current one, in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


BENCHMARK_KEY = "benchmark-key-0123456789abcdef0123"  # throwaway: the output is deleted; MIN_KEY_CHARS long


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="curate N synthetic 1024 px films per class instead of the shared corpus")
    parser.add_argument("--workers", type=int, default=None, help="image worker processes (default: curate's)")
    args = parser.parse_args(argv)
    if args.synthetic < 0:
        parser.error(f"--synthetic must be 0 or more, got {args.synthetic}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            source_root = os.path.join(tmp, "source")
            write_synthetic_source(source_root, args.synthetic)
            sources, corpus = {"folder": source_root}, f"synthetic, {2 * args.synthetic} films of 1024 x 1024"
        else:
            if not REAL_DATA.is_dir():
                parser.error(f"the shared corpus is not at {REAL_DATA}; pass --synthetic N")
            sources = {name: str(REAL_DATA / REAL_SOURCE_DIRS[name]) for name in ADULT_SOURCES}
            corpus = f"shared corpus ({', '.join(sources)})"
        before = reset_peak()
        started = time.perf_counter()
        summary = curate.curate(sources, os.path.join(tmp, "out"), "covid-vs-normal", key=BENCHMARK_KEY,
                                workers=args.workers, progress=False)
        seconds = time.perf_counter() - started
        peak = round(_status_mib("VmHWM"))
        before = round(before)
        inputs = summary["accepted"] + summary["rejected"]
        written = sum(os.path.getsize(os.path.join(tmp, "out", f)) for f in os.listdir(os.path.join(tmp, "out")))
    print(f"corpus: {corpus}")
    print(f"inputs {inputs} (accepted {summary['accepted']}, rejected {summary['rejected']}) in {seconds:.1f} s: "
          f"{inputs / seconds:.1f} images/s")
    print(f"curated output {written / 2**20:.1f} MiB")
    print(f"resident memory of this process: {before} MiB before curating, peak {peak} MiB while curating "
          f"(+{peak - before} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
