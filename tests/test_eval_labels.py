"""``srn eval labels``: a model on one's own labelled photos (srn.evaluation.labels), and the format
of an annotation file told from the file (srn.data.formats.detect_format)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from srn.cli import main
from srn.data.formats import FaceRecord, detect_format
from srn.errors import AnnotationError
from srn.evaluation.evaluator import LabelsEvaluator, build_evaluator
from srn.evaluation.labels import IOU_RANGE, read_detection_records

from .test_train import write_synthetic_faces


def _records():
    # Image a: faces A (10 px) and B (50 px); image b: face C (40 px) and an ignored face.
    return [FaceRecord("x/a.jpg", torch.tensor([[0.0, 0, 10, 10], [100, 100, 150, 150]]), torch.tensor([False, False])),
            FaceRecord("y/b.jpg", torch.tensor([[200.0, 200, 240, 240], [0, 0, 30, 30]]), torch.tensor([False, True]))]


def test_labels_evaluator_hand_worked():
    evaluator = LabelsEvaluator(_records(), thresholds=(0.75,))
    assert evaluator.image_ids() == ["x/a.jpg", "y/b.jpg"]
    evaluator.process(["x/a.jpg"], [(np.array([[400.0, 400, 412, 412], [0, 0, 10, 10], [100, 100, 150, 150], [1, 0, 11, 10]]),
                                     np.array([0.95, 0.9, 0.8, 0.7]))])
    # On the ignored face (counts neither way), and C found only at IoU 2/3 = 32*40/(2*1600 - 32*40) (x shifted by 8).
    evaluator.process(["y/b.jpg"], [(np.array([[0.0, 0, 30, 30], [208, 200, 248, 240]]), np.array([0.99, 0.6]))])
    result = evaluator.evaluate()
    # all, at IoU 0.5: F T T F T over 3 faces -> recall 0 1/3 2/3 2/3 1, precision 0 1/2 2/3 1/2 3/5;
    # VOC AP = 1/3 * 2/3 + 1/3 * 2/3 + 1/3 * 3/5 = 29/45
    assert result.by_size["all"]["ap50"] == pytest.approx(29 / 45)
    # IoU 0.50..0.65 (4 thresholds) as at 0.5; 0.70..0.95: C is missed -> F T T F F: AP 4/9
    assert result.by_size["all"]["ap50_95"] == pytest.approx((4 * 29 / 45 + 6 * 4 / 9) / 10)
    assert result.metrics["recall@0.75"] == pytest.approx(2 / 3) and result.metrics["precision@0.75"] == pytest.approx(2 / 3)
    assert (result.num_images, result.num_faces, result.num_ignored, result.num_detections, result.num_missing) == (2, 3, 1, 6, 0)
    # Per size: "<16" holds A (and the 12 px false positive); ">=64" no face.
    assert result.by_size["<16"]["faces"] == 1 and result.by_size["<16"]["ap50"] == pytest.approx(0.5)
    assert result.by_size[">=64"]["faces"] == 0 and math.isnan(result.by_size[">=64"]["ap50"])
    assert len(IOU_RANGE) == 10 and IOU_RANGE[-1] == 0.95
    summary = json.loads(result.to_json(curves=False))
    assert summary["by_size"][">=64"]["ap50"] is None and "pr_curve" not in summary
    evaluator.reset()
    assert evaluator.evaluate().num_missing == 2


def test_detect_format_from_suffix_and_content(tmp_path):
    (tmp_path / "a.json").write_text('{"images": []}')
    (tmp_path / "coco.txt").write_text('  {"images": []}')
    (tmp_path / "list.txt").write_text("a.jpg\n1\n1 2 3 4\n")
    (tmp_path / "fddb.txt").write_text("2002/08/11/big/img_591\n1\n123.5 85.5 1.26 269.6 161.2 1\n")
    (tmp_path / "x.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    assert [detect_format(tmp_path / n) for n in ("a.json", "coco.txt", "list.txt", "fddb.txt")] == ["coco", "coco", "wider", "fddb"]
    with pytest.raises(AnnotationError, match=r"x.mat: a MATLAB .mat file, not a face list"):
        detect_format(tmp_path / "x.mat")


def _coco_of(labels: Path, size: int = 128) -> Path:
    """The WIDER list ``labels`` as a COCO JSON beside it."""
    from srn.data.formats import parse_wider_file

    images, annotations = [], []
    for index, record in enumerate(parse_wider_file(labels)):
        images.append({"id": index, "file_name": record.image_path, "width": size, "height": size})
        for box in record.boxes.tolist():
            annotations.append({"id": len(annotations), "image_id": index, "category_id": 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "iscrowd": 0})
    path = labels.parent / "faces.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "face"}]}))
    return path


def test_srn_eval_labels_on_synthetic_photos(tmp_path, small_weights, capsys):
    """A WIDER list and the same labels as COCO JSON (format told from the file) give the same
    numbers; the predictions it writes evaluate again through --detections to the same numbers."""
    labels = write_synthetic_faces(tmp_path / "photos", count=4, size=128)
    coco = _coco_of(labels)
    common = ["--weights", small_weights, "--device", "cpu", "--workers", "0"]
    assert main(["eval", "labels", "--annotations", str(labels), "--out", str(tmp_path / "w"), "--json", str(tmp_path / "w.json"), *common]) == 0
    table = capsys.readouterr().out
    assert "AP@0.5" in table and ">=64" in table
    assert main(["eval", "labels", "--images", str(labels.parent), "--annotations", str(coco), "--out", str(tmp_path / "c"), *common]) == 0
    from_list = json.loads((tmp_path / "w" / "report.json").read_text())
    from_coco = json.loads((tmp_path / "c" / "report.json").read_text())
    assert from_list["metrics"] == from_coco["metrics"] and from_list["num_faces"] == from_coco["num_faces"] > 0
    assert json.loads((tmp_path / "w.json").read_text())["metrics"] == from_list["metrics"]
    assert (tmp_path / "w" / "labels.png").stat().st_size > 1000
    written = read_detection_records(tmp_path / "w" / "detections.jsonl")
    assert sorted(written) == sorted(f"face_{i:03d}.png" for i in range(4))
    assert main(["eval", "labels", "--annotations", str(labels), "--detections", str(tmp_path / "w" / "detections.jsonl"),
                 "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "report.json").read_text())["metrics"] == from_list["metrics"]


def test_srn_eval_labels_matches_srn_detect_records_by_path_suffix(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub/a.jpg\n1\n10 10 40 40\n")
    records = tmp_path / "faces.jsonl"
    records.write_text(json.dumps({"image": "/data/photos/sub/a.jpg", "faces": [{"box": [10, 10, 50, 50], "score": 0.9}]}) + "\n")
    evaluator = build_evaluator("labels", [labels])
    evaluator.load_predictions([records])
    assert evaluator.evaluate().metrics["ap50"] == pytest.approx(1.0)


def test_failed_eval_leaves_no_empty_folder(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("a.jpg\n1\n10 10 40 40\n")
    bad = tmp_path / "faces.jsonl"
    bad.write_text('{"image": "a.jpg", "faces": [{"box": [1, 2], "score": 0.5}]}\n')
    assert main(["eval", "labels", "--annotations", str(labels), "--detections", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "faces.jsonl, line 1: image 'a.jpg': each face must be" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # The output folders are made before detection; a run that fails then removes them again.
    assert main(["eval", "labels", "--annotations", str(labels), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert "none of the 1 annotated images is there" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # A benchmark given a WIDER list says which command reads it.
    assert main(["eval", "pascal", "--images", str(tmp_path), "--annotations", str(labels)]) == 2
    assert "srn eval labels --annotations FILE" in capsys.readouterr().err
    assert main(["eval", "wider", "--images", str(tmp_path), "--annotations", str(labels)]) == 2
    assert "srn eval labels --annotations LIST" in capsys.readouterr().err


def test_a_json_given_as_training_list_is_read_as_coco(tmp_path):
    from srn.config import DatasetSpec
    from srn.data.build import read_records

    labels = write_synthetic_faces(tmp_path / "p", count=2, size=64)
    records, root = read_records(DatasetSpec(annotations=str(_coco_of(labels, size=64)), images=str(labels.parent)))
    assert [r.image_path for r in records] == ["face_000.png", "face_001.png"] and root == labels.parent


def test_srn_eval_labels_on_real_photos(shared_dir, tmp_path):
    """The shipped model on 12 labelled real photos (WIDER val, 416 px): a real AP, and the ">=64"
    faces found better than the "<16" ones."""
    source = shared_dir / "data" / "widerface" / "val_subset"
    lines = (source / "labels_416.txt").read_text().splitlines()
    kept, index, images = [], 0, 0
    while index < len(lines) and images < 12:
        count = int(lines[index + 1])
        kept += lines[index: index + 2 + count]
        index += 2 + max(count, 1) if count == 0 else 2 + count
        images += 1
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(kept) + "\n")
    assert main(["eval", "labels", "--images", str(source), "--annotations", str(labels), "--device", "cpu", "--workers", "0",
                 "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_images"] == 12 and report["num_faces"] > 100
    assert 0.05 < report["metrics"]["ap50"] < 1 and report["metrics"]["ap50_95"] < report["metrics"]["ap50"]
