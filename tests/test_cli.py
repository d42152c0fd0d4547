import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from srn.cli import main



@pytest.fixture(scope="session")
def weights(small_weights):
    return small_weights


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "event_a").mkdir()
    PIL.Image.fromarray(rgb(60, 80, 1)).save(folder / "event_a" / "one.jpg")
    PIL.Image.fromarray(rgb(50, 70, 2)).save(folder / "event_a" / "two.png")
    PIL.Image.fromarray(rgb(64, 64, 3)).save(folder / "three.png")
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_detect_json_folder(capsys, weights, photos):
    code, out, err = run(capsys, "detect", str(photos), "--weights", weights, "--device", "cpu", "--score-thresh", "0")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]  # several images: JSON Lines, one compact record each
    assert [r["image"].split("/")[-1] for r in records] == ["one.jpg", "two.png", "three.png"]
    assert (records[0]["width"], records[0]["height"]) == (80, 60)
    face = records[0]["faces"][0]
    assert len(face["box"]) == 4 and 0 <= face["score"] <= 1


def test_detect_csv_glob_and_wider(capsys, weights, photos, tmp_path):
    out_csv = tmp_path / "faces.csv"
    code, _, err = run(capsys, "detect", str(photos / "event_a" / "*.*"), "--weights", weights, "--device", "cpu",
                       "--score-thresh", "0", "--format", "csv", "--out", str(out_csv))
    assert code == 0, err
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "image,width,height,x1,y1,x2,y2,score"
    assert {line.split(",")[0].split("/")[-1] for line in lines[1:]} == {"one.jpg", "two.png"}

    wider = tmp_path / "wider"
    code, _, err = run(capsys, "detect", str(photos / "event_a"), "--weights", weights, "--device", "cpu",
                       "--score-thresh", "0", "--format", "wider", "--out", str(wider))
    assert code == 0, err
    text = (wider / "event_a" / "one.txt").read_text().splitlines()
    assert text[0] == "one" and int(text[1]) == len(text) - 2 > 0
    x, y, w, h, s = map(float, text[2].split())
    assert w > 0 and h > 0 and 0 <= s <= 1


def test_save_vis(capsys, weights, photos, tmp_path):
    code, _, err = run(capsys, "detect", str(photos / "three.png"), "--weights", weights, "--device", "cpu",
                       "--score-thresh", "0", "--save-vis", str(tmp_path / "vis"))
    assert code == 0, err
    drawn = np.asarray(PIL.Image.open(tmp_path / "vis" / "three.png"))  # the input's own name and format
    assert drawn.shape == (64, 64, 3)
    assert not np.array_equal(drawn, rgb(64, 64, 3))


def _bad_and_odd_files(folder):
    """Every awkward input of the issue; returns the names that must fail."""
    (folder / "zero.jpg").write_bytes(b"")
    good = folder / "good.jpg"
    PIL.Image.fromarray(rgb(40, 40, 4)).save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "notes.png").write_text("not an image at all")
    PIL.Image.fromarray(rgb(40, 48, 5)[..., 0]).save(folder / "gray.png")
    PIL.Image.fromarray(np.dstack([rgb(40, 48, 6), np.full((40, 48), 128, np.uint8)])).save(folder / "rgba.png")
    PIL.Image.fromarray(rgb(40, 48, 7)).convert("P").save(folder / "palette.png")
    PIL.Image.fromarray((rgb(40, 48, 8)[..., 0].astype(np.uint16) * 257)).save(folder / "sixteen.png")
    PIL.Image.fromarray(rgb(40, 48, 9)).convert("CMYK").save(folder / "cmyk.jpg")
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    PIL.Image.fromarray(rgb(30, 50, 10)).save(folder / "rotated.jpg", exif=exif)
    PIL.Image.fromarray(rgb(1, 1, 11)).save(folder / "tiny.png")
    return {"zero.jpg", "truncated.jpg", "notes.png"}


def test_bad_input_fails_per_file_and_the_rest_completes(capsys, weights, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    failing = _bad_and_odd_files(folder)
    out = tmp_path / "out.json"
    code, _, err = run(capsys, "detect", str(folder), "--weights", weights, "--device", "cpu", "--out", str(out), "--batch-size", "3")
    assert code == 1
    assert "3 of 11 files failed" in err
    for name in failing:
        line = next(l for l in err.splitlines() if name in l)
        assert line.strip().startswith(str(folder / name) + ":")
    assert "Traceback" not in err
    records = {r["image"].split("/")[-1]: r for r in json.loads(out.read_text())}
    assert set(records) == {"good.jpg", "gray.png", "rgba.png", "palette.png", "sixteen.png", "cmyk.jpg", "rotated.jpg", "tiny.png"}
    assert (records["rotated.jpg"]["width"], records["rotated.jpg"]["height"]) == (30, 50)  # EXIF applied
    assert (records["tiny.png"]["width"], records["tiny.png"]["height"]) == (1, 1)


@pytest.mark.slow
def test_huge_image_is_downscaled_not_oom(capsys, weights, tmp_path):
    path = tmp_path / "huge.png"
    PIL.Image.new("L", (20000, 20000), 90).save(path)
    code, out, err = run(capsys, "detect", str(path), "--weights", weights, "--device", "cpu", "--max-size", "256")
    assert code == 0, err
    record = json.loads(out)
    assert (record["width"], record["height"]) == (20000, 20000)


def test_usage_errors_are_one_line(capsys, weights, tmp_path):
    code, _, err = run(capsys, "detect", str(tmp_path / "missing.jpg"), "--weights", weights)
    assert code == 2 and err.strip() == f"srn detect: error: {tmp_path / 'missing.jpg'}: no such file or folder"
    PIL.Image.fromarray(rgb(8, 8)).save(tmp_path / "a.png")
    code, _, err = run(capsys, "detect", str(tmp_path / "a.png"), "--weights", str(tmp_path / "nope.pt"))
    assert code == 2 and err == f"srn detect: error: {tmp_path / 'nope.pt'}: no such weights file\n"
    code, _, err = run(capsys, "detect", str(tmp_path / "a.png"), "--weights", weights, "--format", "wider")
    assert code == 2 and "--format wider needs --out DIR" in err


def test_console_entry_point_runs(weights, photos):
    result = subprocess.run(
        [sys.executable, "-m", "srn", "detect", str(photos / "three.png"), "--weights", weights, "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and json.loads(result.stdout)["image"].endswith("three.png")


def test_eval_wider_existing_predictions(capsys, shared_dir, tmp_path):
    summary = tmp_path / "summary.json"
    code, out, err = run(capsys, "eval", "wider", "--pred-dir", str(shared_dir / "reference/wider_eval_case1/predictions"),
                         "--gt-dir", str(shared_dir / "data/widerface/eval_gt"), "--out", str(tmp_path / "ev"), "--json", str(summary))
    assert code == 0, err
    assert "66 of 3226 images have no prediction file" in err
    ap = json.loads(summary.read_text())["ap"]
    # the official MATLAB evaluator's answer for this case (EXPECTED.md)
    assert ap == pytest.approx({"easy": 0.678934, "medium": 0.695847, "hard": 0.525187}, abs=1e-4)
    assert (tmp_path / "ev" / "wider.png").stat().st_size > 0


def test_eval_afw_with_the_annotations_as_detections(capsys, shared_dir, tmp_path):
    from srn.evaluation.facebox import load_facebox_annotations

    mat = shared_dir / "data/afw_pascal/annotations/new_annotations_AFW.mat"
    detections = {k: {"boxes": v.boxes.tolist(), "scores": [0.9] * len(v.boxes)} for k, v in load_facebox_annotations(mat).items()}
    (tmp_path / "det.json").write_text(json.dumps(detections))
    code, out, err = run(capsys, "eval", "afw", "--detections", str(tmp_path / "det.json"), "--annotations", str(mat),
                         "--out", str(tmp_path / "afw"))
    assert code == 0, err
    assert "AFW (205 images, 474 faces): AP 1.0000" in out


def test_eval_bad_prediction_file_names_file_and_line(capsys, shared_dir, tmp_path):
    event = tmp_path / "preds" / "0--Parade"
    event.mkdir(parents=True)
    (event / "0_Parade_Parade_0_102.txt").write_text("0_Parade_Parade_0_102\n2\n1 2 3 4 0.9\n1 2 three 4 0.5\n")
    code, _, err = run(capsys, "eval", "wider", "--pred-dir", str(tmp_path / "preds"), "--gt-dir", str(shared_dir / "data/widerface/eval_gt"))
    assert code == 2
    assert "0_Parade_Parade_0_102.txt" in err and "line 4" in err and "Traceback" not in err
