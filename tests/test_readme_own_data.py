"""The README's "Your own data" block runs, line by line, on generated photos: a WIDER-style list and a
COCO JSON, from labels to a fine-tuned model, its detections and its evaluation. The training lines
get overrides that make them two small steps (the block's own settings are the preset's)."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from srn.cli import main

from .test_eval_labels import _coco_of
from .test_train import write_synthetic_faces

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = ["data.size=96", "data.workers=0", "train.batch_size=2", "train.batch_per_device=2", "train.max_iters=2",
         "train.device=cpu", "train.amp=false", "train.tensorboard=false", "train.eval_max_size=96", "train.calibrate_fraction=0.25"]


def _block() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Your own data"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def _split(labels: Path, name: str, keep) -> Path:
    lines, out, index = labels.read_text().splitlines(), [], 0
    image = 0
    while index < len(lines):
        count = int(lines[index + 1])
        if keep(image):
            out += lines[index: index + 2 + count]
        index += 2 + count
        image += 1
    path = labels.parent / name
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.mark.slow
def test_readme_own_data_block_runs(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    labels = write_synthetic_faces(photos, count=12, size=96)
    train, val = _split(labels, "train.txt", lambda i: i < 8), _split(labels, "val.txt", lambda i: i >= 8)
    for source, name in ((train, "train.json"), (val, "val.json")):
        _coco_of(source, size=96).rename(photos / name)
    labels.unlink()
    monkeypatch.chdir(tmp_path)
    commands = _block()
    assert len(commands) >= 6 and all(c.startswith("srn ") for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "train":
            argv += QUICK
        elif argv[0] in ("eval", "detect", "calibrate"):
            argv += ["--device", "cpu"] + (["--workers", "0"] if argv[0] != "detect" else [])
        code = main(argv)
        if argv[0] == "calibrate":
            # The 4 generated validation photos may hold no true detection of a 2-step model: then the
            # command says so in one line (exit 2) and writes nothing.
            assert code in (0, 2), command
            assert (code == 0) == os.path.exists("mine_calibrated.pt")
        else:
            assert code == 0, command
    assert json.loads(Path("mine.json").read_text())["num_faces"] > 0
    assert Path("runs/mine/model.pt").is_file() and Path("runs/coco/model.pt").is_file()
    assert Path("eval_coco/report.json").is_file() and Path("faces.jsonl").is_file()
