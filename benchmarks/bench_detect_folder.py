"""``srn detect DIR`` on real photos, as images per second, in one of two comparisons.

``--compare old-loop`` (the default): the streamed loop (decoding in DataLoader workers) against the
loop it replaced (commit 21d7b02, which decoded each batch in the main process before running it),
with the shipped model and ``--threads 1``. The old loop runs from ``git archive 21d7b02`` unpacked
in a temporary folder.

``--compare defaults``: the decoding workers and network threads that ``srn detect`` picks from the
cores by default (no ``--workers``, no ``--threads``, no ``OMP_NUM_THREADS``) against the defaults
they replaced (``--workers min(4, cores)`` with torch's one thread per core) and against fixed
settings, all on this tree.

Every variant runs as the user runs it, one ``python -m srn detect`` process per measurement,
startup and model loading included, on the same copied photos. Repeats are interleaved so that
load from other processes on the machine falls on every variant alike; the table gives the median
of each and the ratio to the first variant's median, from the same run.

    python benchmarks/bench_detect_folder.py --photos ../shared/data/faces --count 100 --repeats 3 \\
        --out benchmarks/results/detect_folder.md
    python benchmarks/bench_detect_folder.py --compare defaults --count 30 --repeats 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "21d7b02"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def pick_photos(source: Path, count: int, into: Path) -> list[Path]:
    """Every ``len/count``-th photo of ``source`` in sorted order (spread over its sub-collections),
    copied into ``into``."""
    found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(found) < count:
        sys.exit(f"{source}: {len(found)} photos, fewer than --count {count}")
    step = len(found) / count
    picked = [found[int(i * step)] for i in range(count)]
    into.mkdir(parents=True)
    copies = []
    for number, path in enumerate(picked):
        copy = into / f"{number:03d}_{path.name}"
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


def unpack_commit(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "srn"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(command: list[str], pythonpath: Path, cwd: Path, threads_env: bool = True) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    if not threads_env:  # let srn detect (or torch) choose its threads
        env.pop("OMP_NUM_THREADS")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def decode_seconds(photos: list[Path]) -> float:
    """Seconds to decode every photo once in this process: the most that decoding in workers can
    take off the main process's path."""
    sys.path.insert(0, str(REPO))
    from srn.data.image_io import read_image

    start = time.perf_counter()
    for photo in photos:
        read_image(photo)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "faces")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the table (markdown) here")
    parser.add_argument("--compare", choices=("old-loop", "defaults"), default="old-loop", help="what to compare (see above)")
    args = parser.parse_args()
    if args.compare == "defaults":
        compare_defaults(args)
        return

    weights = REPO / "srn" / "assets" / "srn_mobilenet_v2.pt"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = pick_photos(args.photos, args.count, tmp / "photos")
        old = unpack_commit(OLD_COMMIT, tmp / "old")
        common = [str(tmp / "photos"), "--weights", str(weights), "--device", "cpu", "--threads", "1",
                  "--batch-size", str(args.batch_size)]
        variants = {
            f"old loop ({OLD_COMMIT}), decoding in the main process": (old, ["--out", str(tmp / "old.json")]),
            "new, --workers 0 (decoding in the main process)": (REPO, ["--out", str(tmp / "w0.json"), "--workers", "0"]),
            "new, --workers 1": (REPO, ["--out", str(tmp / "w1.json"), "--workers", "1"]),
            "new, --workers 2": (REPO, ["--out", str(tmp / "w2.json"), "--workers", "2"]),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, (root, extra) in variants.items():
                times[name].append(timed([sys.executable, "-m", "srn", "detect", *common, *extra], root, tmp))
        # Whether every loop found the same detections (the old commit's post-processing may differ).
        reference = [(r["image"], r["faces"]) for r in json.loads((tmp / "old.json").read_text())]
        same = {}
        for key in ("w0", "w1", "w2"):
            records = [(r["image"], r["faces"]) for r in json.loads((tmp / f"{key}.json").read_text())]
            same[key] = sum(a == b for a, b in zip(records, reference)) if len(records) == len(reference) else 0
        faces = sum(len(f) for _, f in reference)
        decode = decode_seconds(photos)

    base = statistics.median(times[next(iter(times))])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {len(photos) / median:.2f} | {base / median:.2f}x |")
    command = " ".join(["python", "benchmarks/bench_detect_folder.py", "--photos", str(args.photos), "--count", str(args.count),
                        "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)])
    table = "\n".join([
        "# `srn detect DIR`: decoding in DataLoader workers against the old loop",
        "",
        f"{len(photos)} real photos picked evenly from the sorted list of `{args.photos.name}/` (longer side at most 512 px; "
        f"the old loop found {faces} faces), the shipped model, `--threads 1 --batch-size {args.batch_size} --device cpu`, "
        f"one `python -m srn detect` process per measurement (startup and model loading included), median of {args.repeats} "
        "interleaved repeats; ratios are to the old loop in the same run. Images whose records equal the old loop's: "
        + ", ".join(f"{key.replace('w', '--workers ')}: {n} of {len(reference)}" for key, n in same.items()) + ".",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work while this ran), "
        f"Python {platform.python_version()}.",
        "",
        f"Decoding the {len(photos)} photos once, in one process, takes {100 * decode / base:.1f}% "
        "of the old loop's wall time: the most that decoding in workers can save here, where the network dominates.",
        "",
        "| loop | images/s | vs old loop |",
        "|---|---|---|",
        *rows,
        "",
        f"Command: `{command}`",
        "",
    ])
    print(table)
    if args.out:
        args.out.write_text(table)


def compare_defaults(args: argparse.Namespace) -> None:
    """The default workers and threads against the old defaults and fixed settings (see the module doc)."""
    sys.path.insert(0, str(REPO))
    from srn.cli.common import available_cores, default_threads, default_workers

    cores = available_cores()
    workers = default_workers()
    weights = REPO / "srn" / "assets" / "srn_mobilenet_v2.pt"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = pick_photos(args.photos, args.count, tmp / "photos")
        common = [str(tmp / "photos"), "--weights", str(weights), "--device", "cpu", "--batch-size", str(args.batch_size),
                  "--out", str(tmp / "faces.jsonl")]
        old_workers = min(4, os.cpu_count() or 1)
        variants = {
            f"old defaults: --workers {old_workers}, torch's {cores} threads": ["--workers", str(old_workers), "--threads", str(cores)],
            f"new defaults (here --workers {workers} --threads {default_threads(workers)})": [],
            f"--workers 0 --threads {cores}": ["--workers", "0", "--threads", str(cores)],
            "--workers 1 --threads 1": ["--workers", "1", "--threads", "1"],
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, extra in variants.items():
                times[name].append(timed([sys.executable, "-m", "srn", "detect", *common, *extra], REPO, tmp, threads_env=False))
    base = statistics.median(times[next(iter(times))])
    rows = [f"| {name} | {len(photos) / statistics.median(v):.2f} | {base / statistics.median(v):.2f}x | "
            f"{', '.join(f'{t:.1f}' for t in v)} |" for name, v in times.items()]
    command = " ".join(["python", "benchmarks/bench_detect_folder.py", "--compare", "defaults", "--photos", str(args.photos),
                        "--count", str(args.count), "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)])
    table = "\n".join([
        f"{len(photos)} real photos picked evenly from `{args.photos.name}/`, the shipped model, `--batch-size {args.batch_size} "
        f"--device cpu --out faces.jsonl`, no OMP_NUM_THREADS; one `python -m srn detect` process per measurement "
        f"(startup and model loading included), median of {args.repeats} interleaved repeats; ratios to the old defaults.",
        "",
        f"Machine: {platform.machine()}, {cores} cores available, Python {platform.python_version()}.",
        "",
        "| settings | images/s | vs old defaults | seconds per run |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Command: `{command}`",
        "",
    ])
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
