"""The evaluator protocol (reset / process / evaluate): the same numbers as each benchmark's function,
and a registry by name that ``srn eval`` and the trainer's evaluation hook use."""

import math

import numpy as np
import pytest
import torch

from srn.errors import ConfigError
from srn.evaluation.evaluator import EVALUATORS, EvaluatorOptions, FaceboxEvaluator, FddbEvaluator, WiderEvaluator, build_evaluator
from srn.evaluation.facebox import FaceboxImage, evaluate_facebox
from srn.evaluation.fddb import evaluate_fddb
from srn.evaluation.widerface import SETTINGS, WiderGroundTruth, evaluate


def _wider_gt():
    boxes = (np.array([[10, 10, 20, 20], [50, 50, 30, 30]]), np.array([[0, 0, 40, 40]]), np.zeros((0, 4), dtype=np.int64))
    keep = {s: (np.array([True, s != "easy"]), np.array([True]), np.zeros(0, dtype=bool)) for s in SETTINGS}
    return WiderGroundTruth((("0--Parade", "a"), ("0--Parade", "b"), ("1--Handshaking", "c")), boxes, keep)


def test_registry_names_every_benchmark_and_refuses_others():
    assert list(EVALUATORS) == ["wider", "fddb", "afw", "pascal", "labels"]
    with pytest.raises(ConfigError, match="unknown benchmark 'coco'; choose one of wider, fddb, afw, pascal, labels"):
        build_evaluator("coco", [])


def test_wider_evaluator_gives_the_functions_numbers_and_resets():
    gt = _wider_gt()
    evaluator = WiderEvaluator(gt)
    assert evaluator.image_ids() == ["0--Parade/a", "0--Parade/b", "1--Handshaking/c"]
    assert evaluator.image_files() == ["0--Parade/a.jpg", "0--Parade/b.jpg", "1--Handshaking/c.jpg"]
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [48.0, 52.0, 80.0, 79.0], [100.0, 100.0, 120.0, 130.0]])
    scores = torch.tensor([0.9, 0.8, 0.3])
    evaluator.process(["0--Parade/a"], [(boxes, scores)])
    evaluator.process(["0--Parade/b"], [(boxes[:1] * 1.5, scores[:1])])
    got = evaluator.evaluate()
    rows = {("0--Parade", "a"): np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores].astype(np.float64),
            ("0--Parade", "b"): np.c_[boxes[:1, :2] * 1.5, (boxes[:1, 2:] - boxes[:1, :2]) * 1.5, scores[:1]].astype(np.float64)}
    expected = evaluate(rows, gt)
    assert got.to_json() == expected.to_json()
    assert got.metrics == {f"ap_{s}": expected.ap[s] for s in SETTINGS}
    evaluator.reset()
    assert evaluator.evaluate().num_missing == 3


def test_fddb_evaluator_gives_the_functions_numbers():
    ellipses = {"2002/a": np.array([[30.0, 20.0, 0.0, 50.0, 50.0]]), "2002/b": np.array([[10.0, 8.0, 0.5, 20.0, 20.0]])}
    evaluator = FddbEvaluator(ellipses, height_scale=1.2)
    assert evaluator.image_files() == ["2002/a.jpg", "2002/b.jpg"]
    boxes, scores = np.array([[30.0, 20.0, 70.0, 80.0], [0.0, 0.0, 5.0, 5.0]]), np.array([0.9, 0.2])
    evaluator.process(["2002/a"], [(boxes, scores)])
    got = evaluator.evaluate()
    expected = evaluate_fddb({"2002/a": np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores]}, ellipses, height_scale=1.2)
    assert got.to_json() == expected.to_json()
    assert set(got.metrics) == {"tpr_at_1000", "tpr_at_1000_continuous"}


def test_facebox_evaluator_from_training_records_scores_ap():
    from srn.data.formats import FaceRecord

    records = [FaceRecord("x/one.jpg", torch.tensor([[10.0, 10.0, 50.0, 60.0]]), torch.tensor([False])),
               FaceRecord("y/two.jpg", torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]]), torch.tensor([False, True]))]
    evaluator = FaceboxEvaluator.from_records(records)
    assert evaluator.image_files() == ["x/one.jpg", "y/two.jpg"]
    evaluator.process(["x/one.jpg", "y/two.jpg"], [(torch.tensor([[10.0, 10.0, 50.0, 60.0]]), torch.tensor([0.9])),
                                                  (torch.tensor([[40.0, 40.0, 60.0, 60.0]]), torch.tensor([0.8]))])
    result = evaluator.evaluate()
    annotations = {"one": FaceboxImage("x/one.jpg", (), np.array([[10.0, 10.0, 50.0, 60.0]]), np.array([False])),
                   "two": FaceboxImage("y/two.jpg", (), np.array([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]]), np.array([False, True]))}
    expected = evaluate_facebox({"one": (np.array([[10.0, 10.0, 50.0, 60.0]]), np.array([0.9])),
                                 "two": (np.array([[40.0, 40.0, 60.0, 60.0]]), np.array([0.8]))}, annotations)
    assert result.to_json() == expected.to_json()
    # One of two counted faces found, the other detection on an ignored face: AP 0.5.
    assert result.metrics == {"ap": 0.5}
    with pytest.raises(ConfigError, match="two images are named 'one'"):
        FaceboxEvaluator.from_records(records + [FaceRecord("z/one.png", torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))])


def test_written_predictions_read_back_to_the_same_numbers(tmp_path):
    evaluator = WiderEvaluator(_wider_gt())
    evaluator.process(["0--Parade/a", "1--Handshaking/c"], [(np.array([[10.0, 10.0, 30.0, 30.0], [5.0, 5.0, 9.0, 9.0]]), np.array([0.5, 0.25])),
                                                          (np.zeros((0, 4)), np.zeros(0))])
    before = evaluator.evaluate()
    evaluator.load_predictions([evaluator.write_predictions(tmp_path / evaluator.predictions_name)])
    after = evaluator.evaluate()
    assert after.to_json() == before.to_json() and not math.isnan(after.ap["hard"])


def test_build_evaluator_reads_the_ground_truth_and_options(tmp_path):
    ellipses = tmp_path / "fold-ellipseList.txt"
    ellipses.write_text("2002/a\n1\n30.0 20.0 0.0 50.0 50.0 1\n")
    evaluator = build_evaluator("fddb", [ellipses], EvaluatorOptions(height_scale=1.2))
    assert isinstance(evaluator, FddbEvaluator) and evaluator.height_scale == 1.2
    assert evaluator.image_ids() == ["2002/a"] and evaluator.predictions_name == "detections.txt"
