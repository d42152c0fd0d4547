"""Every wrong input of ``srn eval`` is one line on stderr and exit 2; every parser of a benchmark file
either succeeds or raises an SRNError, whatever bytes it is given.

The bad files are built in ``tmp_path`` from the real files of ../shared/data.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from srn.cli import main
from srn.errors import SRNError
from srn.evaluation import facebox, fddb, widerface

SETTING_FILES = ("wider_easy_val.mat", "wider_medium_val.mat", "wider_hard_val.mat")
GT_FILES = ("wider_face_val.mat", *SETTING_FILES)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The message of the one error line that the command ends with, exit code 2."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("srn eval: error: "), err
    return lines[0][len("srn eval: error: ") :]


@pytest.fixture(scope="module")
def data(shared_dir: Path) -> Path:
    folder = shared_dir / "data"
    for sub in ("widerface/eval_gt", "fddb/FDDB-folds", "afw_pascal/annotations"):
        if not (folder / sub).is_dir():
            pytest.skip(f"{folder / sub} is absent")
    return folder


@pytest.fixture(scope="module")
def case1(shared_dir: Path) -> Path:
    folder = shared_dir / "reference" / "wider_eval_case1" / "predictions"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


def gt_copy(data: Path, folder: Path, replace: dict[str, bytes | Path | None] | None = None) -> Path:
    """A ground-truth folder of links to the real files; ``replace`` swaps files (None: leave it out)."""
    folder.mkdir()
    replace = replace or {}
    for name in GT_FILES:
        if name not in replace:
            os.symlink((data / "widerface" / "eval_gt" / name).resolve(), folder / name)
        elif isinstance(replace[name], bytes):
            (folder / name).write_bytes(replace[name])
        elif replace[name] is not None:
            shutil.copy(replace[name], folder / name)
    return folder


def one_prediction(case1: Path, folder: Path) -> tuple[Path, Path]:
    """A submission folder holding one real prediction file: (folder, file)."""
    source = case1 / "0--Parade" / "0_Parade_Parade_0_102.txt"
    (folder / "0--Parade").mkdir(parents=True)
    return folder, Path(shutil.copy(source, folder / "0--Parade" / source.name))


# --------------------------------------------------------------------------- WIDER FACE --gt-dir


def test_gt_dir_missing_or_a_file(capsys, data, case1, tmp_path):
    preds, _ = one_prediction(case1, tmp_path / "preds")
    missing = tmp_path / "nowhere"
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(missing), "--out", str(tmp_path / "ev")) == (
        f"{missing}: no such ground-truth folder"
    )
    a_file = data / "widerface" / "eval_gt" / "wider_face_val.mat"
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(a_file), "--out", str(tmp_path / "ev")) == (
        f"{a_file}: is a file, not a ground-truth folder"
    )
    assert not (tmp_path / "ev").exists()  # nothing is created for a run that cannot start


def test_gt_dir_missing_a_mat_file(capsys, data, case1, tmp_path):
    preds, _ = one_prediction(case1, tmp_path / "preds")
    gt = gt_copy(data, tmp_path / "gt", {"wider_hard_val.mat": None})
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(gt)) == (
        f"{gt / 'wider_hard_val.mat'}: no such WIDER FACE ground-truth file"
    )


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        # cut in its second compressed variable: scipy's stream runs dry
        ("wider_face_val.mat", lambda real: real[:30000], "not a readable MATLAB .mat file (could not read bytes)"),
        ("wider_medium_val.mat", lambda real: real[:100], "not a readable MATLAB .mat file (100 bytes: shorter than a MAT-file header)"),
        # bytes 126-127 of a MAT header say the version; "ab" is none
        ("wider_face_val.mat", lambda real: b"a" * 200, "not a readable MATLAB .mat file (Unknown mat file type, version 97, 97)"),
    ],
)
def test_gt_dir_with_a_corrupt_mat(capsys, data, case1, tmp_path, name, make, reason):
    preds, _ = one_prediction(case1, tmp_path / "preds")
    real = (data / "widerface" / "eval_gt" / name).read_bytes()
    gt = gt_copy(data, tmp_path / "gt", {name: make(real)})
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(gt)) == f"{gt / name}: {reason}"


@pytest.mark.parametrize(
    ("name", "source", "reason"),
    [
        ("wider_face_val.mat", "afw_pascal/annotations/anno2.mat",
         "not a WIDER FACE ground-truth .mat (no variable 'event_list'; it holds anno)"),
        ("wider_face_val.mat", "afw_pascal/annotations/new_annotations_AFW.mat",
         "not a WIDER FACE ground-truth .mat (no variable 'event_list'; it holds Annotations)"),
        # the main file has no gt_list: it cannot stand for a setting
        ("wider_hard_val.mat", "widerface/eval_gt/wider_face_val.mat",
         "not a WIDER FACE ground-truth .mat (no variable 'gt_list'; it holds blur_label_list, event_list, "
         "expression_label_list, face_bbx_list, file_list, illumination_label_list, invalid_label_list, "
         "occlusion_label_list, pose_label_list)"),
    ],
)
def test_gt_dir_with_a_mat_of_another_kind(capsys, data, case1, tmp_path, name, source, reason):
    preds, _ = one_prediction(case1, tmp_path / "preds")
    gt = gt_copy(data, tmp_path / "gt", {name: data / source})
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(gt)) == f"{gt / name}: {reason}"


# --------------------------------------------------------------------------- WIDER FACE predictions


def test_subset_with_no_matching_prediction_is_an_error(capsys, data, tmp_path):
    preds = tmp_path / "preds"
    (preds / "0--Parade").mkdir(parents=True)
    (preds / "0--Parade" / "not_an_image.txt").write_text("not_an_image\n0\n")
    (preds / "0--Parade" / "nor_this.txt").write_text("nor_this\n0\n")
    gt = str(data / "widerface" / "eval_gt")
    # read_predictions lists files in the order of the file system: name whichever came first
    first = next(iter(widerface.read_predictions(preds)))
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", gt, "--subset", "--out", str(tmp_path / "ev")) == (
        f"{preds}: no prediction file matches an image of the ground truth (2 prediction files are for images "
        f"that are not in the ground truth, e.g. {preds / first[0] / first[1]}.txt)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_error(capsys, "wider", "--pred-dir", str(empty), "--gt-dir", gt, "--subset", "--out", str(tmp_path / "ev")) == (
        f"{empty}: no prediction file matches an image of the ground truth (it holds no <event>/<image>.txt file)"
    )
    assert not (tmp_path / "ev" / "report.json").exists()


def test_full_set_with_no_matching_prediction_warns(capsys, data, tmp_path):
    preds = tmp_path / "preds"
    (preds / "0--Parade").mkdir(parents=True)
    (preds / "0--Parade" / "not_an_image.txt").write_text("not_an_image\n0\n")
    code, out, err = run(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(data / "widerface" / "eval_gt"),
                         "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert err.splitlines() == [
        f"srn eval: warning: {preds}: no prediction file matches an image of the ground truth (1 prediction file is "
        f"for images that are not in the ground truth, e.g. {preds / '0--Parade' / 'not_an_image.txt'}); every image "
        "counts as having no detections"
    ]
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["ap"] == {"easy": 0.0, "medium": 0.0, "hard": 0.0}


def test_unmatched_prediction_files_are_reported(capsys, data, case1, tmp_path):
    preds, _ = one_prediction(case1, tmp_path / "preds")
    (preds / "0--Parade" / "not_an_image.txt").write_text("not_an_image\n0\n")
    code, out, err = run(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(data / "widerface" / "eval_gt"),
                         "--subset", "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert err.splitlines() == [
        "srn eval: warning: 1 prediction file is for images that are not in the ground truth, "
        f"e.g. {preds / '0--Parade' / 'not_an_image.txt'} (not evaluated)"
    ]
    assert "NOT official" in out


def test_malformed_prediction_line(capsys, data, case1, tmp_path):
    preds, path = one_prediction(case1, tmp_path / "preds")
    lines = path.read_text().splitlines()
    lines[3] = "1 2 three 4 0.5"
    path.write_text("\n".join(lines) + "\n")
    assert one_error(capsys, "wider", "--pred-dir", str(preds), "--gt-dir", str(data / "widerface" / "eval_gt")) == (
        f"{path}, line 4: not a number: 'three'"
    )


def test_pred_dir_missing(capsys, data, tmp_path):
    assert one_error(capsys, "wider", "--pred-dir", str(tmp_path / "none"), "--gt-dir", str(data / "widerface" / "eval_gt")) == (
        f"{tmp_path / 'none'}: no such prediction folder"
    )


# --------------------------------------------------------------------------- FDDB


@pytest.fixture()
def fold(data: Path) -> Path:
    return data / "fddb" / "FDDB-folds" / "FDDB-fold-01-ellipseList.txt"


def detections_of(ellipse_file: Path, path: Path) -> Path:
    """Each ellipse's bounding box as an FDDB detection file."""
    records = {}
    for name, e in fddb.read_fddb_ellipses(ellipse_file).items():
        boxes = np.column_stack([e[:, 3] - e[:, 1], e[:, 4] - e[:, 0], e[:, 3] + e[:, 1], e[:, 4] + e[:, 0]])
        records[name] = (boxes, np.full(len(e), 0.9))
    return fddb.write_fddb_detections(path, records)


def test_fddb_same_ellipse_file_twice(capsys, fold, tmp_path):
    dets = detections_of(fold, tmp_path / "dets.txt")
    assert one_error(capsys, "fddb", "--annotations", str(fold), str(fold), "--detections", str(dets)) == (
        f"{fold}: appears twice in the list of ellipse files"
    )


def test_fddb_image_annotated_in_two_files(capsys, data, fold, tmp_path):
    dets = detections_of(fold, tmp_path / "dets.txt")
    sfd = data / "fddb" / "FDDB_annotation_ellipseList_new_SFD.txt"
    assert one_error(capsys, "fddb", "--annotations", str(fold), str(sfd), "--detections", str(dets)) == (
        f"{sfd}:1: image 2002/08/11/big/img_591 is annotated twice (also in {fold})"
    )


def test_fddb_detections_of_another_fold(capsys, data, fold, tmp_path):
    dets = detections_of(data / "fddb" / "FDDB-folds" / "FDDB-fold-02-ellipseList.txt", tmp_path / "fold02.txt")
    first = dets.read_text().splitlines()[0]
    assert one_error(capsys, "fddb", "--annotations", str(fold), "--detections", str(dets), "--out", str(tmp_path / "ev")) == (
        f"{dets}: no detection entry is for an annotated image (e.g. {first} is not in the annotations: "
        "detections of another fold?)"
    )


def test_fddb_partly_matching_detections_warn(capsys, data, fold, tmp_path):
    ours = detections_of(fold, tmp_path / "fold01.txt")
    other = detections_of(data / "fddb" / "FDDB-folds" / "FDDB-fold-02-ellipseList.txt", tmp_path / "fold02.txt")
    first = other.read_text().splitlines()[0]
    code, out, err = run(capsys, "fddb", "--annotations", str(fold), "--detections", str(ours), str(other),
                         "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert err.splitlines() == [
        f"srn eval: warning: {ours}, {other}: 285 detection entries are for images that are not annotated "
        f"(ignored), e.g. {first}"
    ]
    assert out.startswith("FDDB (290 images, ")


@pytest.mark.parametrize(
    ("line", "text", "reason"),
    [
        (3, "44.4 31.2 1.4 100.5", "expected 5 or 6 numbers per ellipse line, got 4"),
        (3, "44.4 31.2 x 100.5 96.8 1", "not a number: 'x'"),
        (2, "one", "expected the ellipse count of '2002/08/11/big/img_591', got 'one'"),
    ],
)
def test_fddb_malformed_ellipse_line(capsys, fold, tmp_path, line, text, reason):
    dets = detections_of(fold, tmp_path / "dets.txt")
    lines = fold.read_text().splitlines()
    lines[line - 1] = text
    bad = tmp_path / "ellipses.txt"
    bad.write_text("\n".join(lines) + "\n")
    assert one_error(capsys, "fddb", "--annotations", str(bad), "--detections", str(dets)) == f"{bad}:{line}: {reason}"


def test_fddb_malformed_detection_line(capsys, fold, tmp_path):
    dets = detections_of(fold, tmp_path / "dets.txt")
    lines = dets.read_text().splitlines()
    lines[2] = "1 2 3 0.5"
    dets.write_text("\n".join(lines) + "\n")
    assert one_error(capsys, "fddb", "--annotations", str(fold), "--detections", str(dets)) == (
        f"{dets}, line 3: expected 5 numbers per detection line, got 4"
    )


def test_fddb_missing_files(capsys, fold, tmp_path):
    assert one_error(capsys, "fddb", "--annotations", str(tmp_path / "e.txt"), "--detections", str(fold)) == (
        f"{tmp_path / 'e.txt'}: no such FDDB ellipse list"
    )
    assert one_error(capsys, "fddb", "--annotations", str(fold), "--detections", str(tmp_path / "d.txt")) == (
        f"{tmp_path / 'd.txt'}: no such FDDB detection file"
    )


# --------------------------------------------------------------------------- AFW / PASCAL Face


@pytest.fixture()
def afw(data: Path) -> Path:
    return data / "afw_pascal" / "annotations" / "new_annotations_AFW.mat"


def afw_detections(afw: Path) -> dict:
    return {k: {"boxes": v.boxes.tolist(), "scores": [0.9] * len(v.boxes)} for k, v in facebox.load_facebox_annotations(afw).items()}


def test_afw_annotations_of_another_kind(capsys, data, afw, tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(afw_detections(afw)))
    anno2 = data / "afw_pascal" / "annotations" / "anno2.mat"
    assert one_error(capsys, "afw", "--annotations", str(anno2), "--detections", str(dets)) == (
        f"{anno2}: not a face-eval re-annotation .mat (no variable 'Annotations'; it holds anno)"
    )
    truncated = tmp_path / "afw.mat"
    truncated.write_bytes(afw.read_bytes()[:5000])
    assert one_error(capsys, "afw", "--annotations", str(truncated), "--detections", str(dets)) == (
        f"{truncated}: not a readable MATLAB .mat file (could not read bytes)"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        # the missing comma: line 2, before the '"' of "scores", the 42nd character
        ('{\n  "1004109301": {"boxes": [[1, 2, 3, 4]] "scores": [0.5]}\n}\n', "line 2: not JSON (Expecting ',' delimiter, column 42)"),
        ("[1, 2, 3]", 'expected a JSON object {image: {"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}}, got a JSON list'),
        ('{"1004109301": [1, 2, 3, 4]}',
         'image \'1004109301\': expected {"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}, got a JSON list'),
        ('{"1004109301": {"boxes": [[1, 2, 3]], "scores": [0.5]}}',
         "image '1004109301': each box must be 4 numbers [x1, y1, x2, y2], got 3 numbers"),
        ('{"1004109301": {"boxes": [[1, 2, 3, 4], [5, 6, 7, 8]], "scores": [0.5]}}', "image '1004109301': 2 boxes but 1 scores"),
        ('{"1004109301": {"boxes": [[1, 2, 3, "x"]], "scores": [0.5]}}', "image '1004109301': boxes must be a list of numbers"),
        ('{"1004109301": {"boxes": [[1, 2, 3, 4]], "scores": [NaN]}}', "image '1004109301': scores hold a non-finite number"),
    ],
)
def test_afw_bad_detections_file(capsys, afw, tmp_path, content, reason):
    dets = tmp_path / "dets.json"
    dets.write_text(content)
    separator = ", " if reason.startswith("line ") else ": "
    assert one_error(capsys, "afw", "--annotations", str(afw), "--detections", str(dets)) == f"{dets}{separator}{reason}"


def test_afw_detections_matching_no_annotation(capsys, afw, tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"zzz.jpg": {"boxes": [[0, 0, 9, 9]], "scores": [0.9]}}))
    assert one_error(capsys, "afw", "--annotations", str(afw), "--detections", str(dets), "--out", str(tmp_path / "ev")) == (
        f"{dets}: no image of it is in {afw} (e.g. 'zzz')"
    )


def test_afw_partly_matching_detections_warn(capsys, afw, tmp_path):
    detections = afw_detections(afw)
    detections["zzz.jpg"] = {"boxes": [[0, 0, 9, 9]], "scores": [0.1]}
    del detections["1004109301"]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(detections))
    code, out, err = run(capsys, "afw", "--annotations", str(afw), "--detections", str(dets), "--out", str(tmp_path / "ev"))
    assert code == 0, err
    assert err.splitlines() == [
        f"srn eval: warning: {dets}: 1 of 205 images are not in {afw} (their detections count as false positives), e.g. 'zzz'",
        f"srn eval: warning: 1 of 205 annotated images have no entry in {dets} (counted as no detections)",
    ]


# --------------------------------------------------------------------------- output paths, before detection


@pytest.fixture()
def no_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a detector is built or run: output paths are checked before."""
    from srn.evaluation import run as eval_run

    def boom(*args, **kwargs):
        raise AssertionError("detection ran before the output paths were checked")

    monkeypatch.setattr(eval_run, "eval_detector", boom)
    monkeypatch.setattr(eval_run, "detect_images", boom)


def test_out_that_is_a_file_fails_before_detection(capsys, afw, tmp_path, no_detection):
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out.txt"
    out.write_text("x")
    assert one_error(capsys, "afw", "--images", str(images), "--annotations", str(afw), "--out", str(out)) == (
        f"{out}: is a file, not a folder"
    )


def test_json_that_is_a_folder_fails_before_detection(capsys, data, afw, fold, tmp_path, no_detection):
    images = tmp_path / "images"
    images.mkdir()
    folder = tmp_path / "summary"
    folder.mkdir()
    assert one_error(capsys, "afw", "--images", str(images), "--annotations", str(afw), "--out", str(tmp_path / "ev"),
                     "--json", str(folder)) == f"{folder}: is a folder; give a file name"
    assert one_error(capsys, "fddb", "--images", str(images), "--annotations", str(fold), "--out", str(tmp_path / "ev"),
                     "--json", str(folder)) == f"{folder}: is a folder; give a file name"
    assert one_error(capsys, "wider", "--images", str(images), "--gt-dir", str(data / "widerface" / "eval_gt"),
                     "--out", str(tmp_path / "ev"), "--json", str(folder)) == f"{folder}: is a folder; give a file name"


def test_outputs_that_are_inputs(capsys, afw, tmp_path):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(afw_detections(afw)))
    assert one_error(capsys, "afw", "--annotations", str(afw), "--detections", str(dets), "--out", str(tmp_path / "ev"),
                     "--json", str(dets)) == f"{dets}: is also an input; refusing to overwrite it"


def test_missing_image_folder(capsys, afw, tmp_path, no_detection):
    assert one_error(capsys, "afw", "--images", str(tmp_path / "none"), "--annotations", str(afw)) == (
        f"{tmp_path / 'none'}: no such image folder"
    )


# --------------------------------------------------------------------------- every parser, any bytes


CASES = 50


def mutations(real: bytes, rng: random.Random, flips: bool = True) -> list[bytes]:
    """Random byte strings, truncations of ``real`` at random offsets, and (``flips``) copies of
    ``real`` with a few random bytes overwritten."""
    out = []
    for i in range(CASES):
        kind = i % (3 if flips else 2)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(1, 600)))
        elif kind == 1:
            out.append(real[: rng.randrange(1, len(real))])
        else:
            data = bytearray(real)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
    return out


def succeeds_or_srn_error(parse: Callable[[Path], object], path: Path, cases: list[bytes]) -> int:
    """Feed every case to ``parse``: anything but success or an SRNError fails; returns the errors."""
    errors = 0
    for data in cases:
        path.write_bytes(data)
        try:
            parse(path)
        except SRNError as exc:
            assert "\n" not in str(exc)
            errors += 1
    return errors


def test_prediction_reader_takes_any_bytes(case1, tmp_path):
    real = (case1 / "0--Parade" / "0_Parade_Parade_0_102.txt").read_bytes()
    cases = mutations(real, random.Random(0))
    assert succeeds_or_srn_error(widerface.read_prediction_file, tmp_path / "p.txt", cases) > 0


def test_ground_truth_reader_takes_any_bytes(data, tmp_path):
    # No byte flips here: scipy's MAT reader can crash the interpreter on some of them.
    rng = random.Random(1)
    for name in ("wider_face_val.mat", "wider_hard_val.mat"):
        gt = gt_copy(data, tmp_path / name.replace(".mat", ""), {name: b""})
        cases = mutations((data / "widerface" / "eval_gt" / name).read_bytes(), rng, flips=False)[: CASES // 2]
        assert succeeds_or_srn_error(lambda _: widerface.load_wider_gt(gt, settings=("hard",)), gt / name, cases) == len(cases)


def test_fddb_readers_take_any_bytes(fold, tmp_path):
    rng = random.Random(2)
    assert succeeds_or_srn_error(fddb.read_fddb_ellipses, tmp_path / "e.txt", mutations(fold.read_bytes(), rng)) > 0
    real = detections_of(fold, tmp_path / "real.txt").read_bytes()
    assert succeeds_or_srn_error(fddb.read_fddb_detections, tmp_path / "d.txt", mutations(real, rng)) > 0


def test_facebox_readers_take_any_bytes(afw, tmp_path):
    rng = random.Random(3)
    cases = mutations(afw.read_bytes(), rng, flips=False)
    assert succeeds_or_srn_error(facebox.load_facebox_annotations, tmp_path / "a.mat", cases) == len(cases)
    real = json.dumps(afw_detections(afw)).encode()
    assert succeeds_or_srn_error(facebox.read_facebox_detections, tmp_path / "d.json", mutations(real, rng)) > 0


# --------------------------------------------------------------------------- detection runs


@pytest.fixture(scope="module")
def eval_images(tmp_path_factory) -> list[Path]:
    """Five small photos of different sizes, with a text file and a folder among them."""
    import PIL.Image

    photo = PIL.Image.open(Path(__file__).resolve().parents[2] / "docs" / "astronaut.png").convert("RGB")
    root = tmp_path_factory.mktemp("eval_images")
    paths = []
    for i in range(5):
        path = root / f"img_{i}.png"
        photo.crop((100, 0, 100 + 96 + 16 * i, 96 + 8 * i)).save(path)
        paths.append(path)
    (root / "notes.jpg").write_text("not an image\n")
    (root / "folder.jpg").mkdir()
    return [paths[0], root / "notes.jpg", *paths[1:3], root / "folder.jpg", *paths[3:]]


@pytest.mark.parametrize("workers", [0, 1])
def test_detection_runs_decode_in_the_stream_and_unreadable_images_fail_alone(small_weights, eval_images, workers, one_thread):
    from srn.evaluation.run import detect_images, eval_detector

    detector = eval_detector(small_weights, "cpu", batch_size=2, max_size=256)
    results, failures = detect_images(detector, eval_images, workers=workers)
    readable = [p for p in eval_images if p.suffix == ".png"]
    assert list(results) == readable  # in input order, keyed by the paths given
    assert failures == [
        f"{eval_images[1]}: not a decodable image (unrecognised format, looks like text)",
        f"{eval_images[4]}: is a directory, not an image file",
    ]
    # The same numbers as full batches of the readable images: a failed file leaves no hole in a batch.
    for start in range(0, len(readable), 2):
        for path, faces in zip(readable[start : start + 2], detector.detect(readable[start : start + 2])):
            assert torch.equal(results[path][0], faces.boxes) and torch.equal(results[path][1], faces.scores)

    tta, tta_failures = detect_images(detector, eval_images, tta=True, tta_max_size=256, workers=workers)
    assert list(tta) == readable and tta_failures == failures



# --------------------------------------------------------------------------- runs that detect


def test_a_detection_run_never_reads_back_an_earlier_runs_prediction_files(capsys, data, case1, small_weights, tmp_path):
    import PIL.Image

    # One real val image (a photo under its name), and an output folder where an earlier run left a
    # perfect prediction file for another image.
    images = tmp_path / "images" / "0--Parade"
    images.mkdir(parents=True)
    photo = PIL.Image.open(Path(__file__).resolve().parents[2] / "docs" / "astronaut.png").convert("RGB")
    photo.resize((128, 128)).save(images / "0_Parade_Parade_0_102.jpg")
    out = tmp_path / "ev"
    stale = out / "predictions" / "0--Parade" / "0_Parade_marchingband_1_465.txt"
    stale.parent.mkdir(parents=True)
    shutil.copy(case1 / "0--Parade" / "0_Parade_marchingband_1_465.txt", stale)
    code, _, err = run(capsys, "wider", "--images", str(tmp_path / "images"), "--gt-dir", str(data / "widerface" / "eval_gt"),
                       "--out", str(out), "--weights", small_weights, "--device", "cpu", "--workers", "0", "--max-size", "256")
    assert code == 0, err
    assert not stale.exists()  # the folder holds this run's files only
    assert [p.name for p in (out / "predictions").rglob("*.txt")] == ["0_Parade_Parade_0_102.txt"]
    report = json.loads((out / "report.json").read_text())
    assert report["num_missing"] == report["num_images"] - 1


@pytest.mark.parametrize("scale", ["nan", "inf", "-1", "0"])
def test_fddb_height_scale_must_be_finite_and_positive(capsys, scale, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["eval", "fddb", "--detections", str(tmp_path / "d.txt"), "--annotations", str(tmp_path / "a.txt"),
              "--height-scale", scale])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"srn eval: error: argument --height-scale: must be in (0, 10], got {scale}\n"


def test_fddb_detections_with_a_byte_order_mark_lose_no_image(capsys, data, tmp_path):
    fold = data / "fddb" / "FDDB-folds" / "FDDB-fold-01-ellipseList.txt"
    names = [line for line in fold.read_text().splitlines() if line.startswith("20")][:2]
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    text = "".join(f"{name}\n1\n10 20 30 40 0.9\n" for name in names)
    plain.write_text(text)
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert fddb.read_fddb_detections(marked).keys() == fddb.read_fddb_detections(plain).keys() == set(names)
    bad = tmp_path / "underscore.txt"
    bad.write_text(f"{names[0]}\n1_0\n" + "10 20 30 40 0.9\n" * 10)
    assert one_error(capsys, "fddb", "--detections", str(bad), "--annotations", str(fold), "--out", str(tmp_path / "o")) == (
        f"{bad}, line 2: expected the detection count of '{names[0]}', got '1_0'"
    )
