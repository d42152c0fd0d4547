"""The second, upscaled pass (:class:`srn.ZoomPass`): what it adds to the first pass, and what it never does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from srn import Detector, ZoomPass
from srn.errors import ConfigError
from srn.postprocess import Detections

SELFIE = "data/demo/images/Tencent__data_worlds-largest-selfie.jpg"


def dets(*rows: tuple[float, float, float, float, float]) -> Detections:
    table = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return Detections(table[:, :4], table[:, 4])


def test_merge_adds_the_small_faces_of_the_second_pass_only():
    zoom = ZoomPass(size=1536, max_face=32)
    first = dets((100, 100, 200, 220, 0.9), (10, 10, 30, 34, 0.5))
    second = dets(
        (300, 40, 320, 62, 0.7),   # 20 x 22: a small face the first pass missed, kept
        (400, 40, 440, 90, 0.8),   # 40 x 50: not small, the first pass's business, dropped
        (11, 10, 31, 33, 0.6),     # the first pass's small face again, higher: NMS keeps this one
        (500, 40, 531, 100, 0.4),  # 31 x 60: shorter side under 32, kept
    )
    merged = zoom.merge(first, second, nms_iou=0.4, max_detections=750)
    assert_close(merged.scores, torch.tensor([0.9, 0.7, 0.6, 0.4]))
    assert_close(merged.boxes, torch.tensor([[100, 100, 200, 220], [300, 40, 320, 62], [11, 10, 31, 33],
                                             [500, 40, 531, 100]], dtype=torch.float32))
    assert_close(zoom.merge(first, second, 0.4, max_detections=2).scores, torch.tensor([0.9, 0.7]))


def test_a_face_the_first_pass_sees_at_32_px_or_more_keeps_its_box():
    zoom = ZoomPass(size=1536, max_face=64)
    first = dets((100, 100, 140, 150, 0.3), (300, 100, 320, 124, 0.3))  # 40 x 50, and 20 x 24
    second = dets((102, 101, 141, 149, 0.8),  # the 40 px face again, higher: the first box, score 0.8
                  (301, 101, 321, 125, 0.8))  # the 20 px face again, higher: NMS keeps this box
    merged = zoom.merge(first, second, 0.4, 750)
    assert_close(merged.boxes, torch.tensor([[100, 100, 140, 150], [301, 101, 321, 125]], dtype=torch.float32))
    assert_close(merged.scores, torch.tensor([0.8, 0.8]))
    # Found again lower, the first pass's score stays.
    merged = zoom.merge(first, dets((102, 101, 141, 149, 0.1)), 0.4, 750)
    assert_close(merged.scores, torch.tensor([0.3, 0.3]))


def test_a_small_box_inside_a_large_first_pass_face_is_a_part_of_it():
    zoom = ZoomPass(size=1536, max_face=32)
    first = dets((100, 100, 200, 220, 0.9))  # 100 x 120: at least twice max_face
    eye = (120, 130, 140, 150, 0.8)          # all inside it
    half_in = (190, 130, 210, 150, 0.8)      # half inside: not more than half, kept
    outside = (300, 300, 320, 320, 0.5)
    merged = zoom.merge(first, dets(eye, half_in, outside), 0.4, 750)
    assert_close(merged.boxes, torch.tensor([[100, 100, 200, 220], [190, 130, 210, 150], [300, 300, 320, 320]],
                                            dtype=torch.float32))
    # Beside a first-pass face under twice max_face, a small box is a face of its own (kept).
    merged = zoom.merge(dets((100, 100, 150, 160, 0.9)), dets((105, 105, 125, 125, 0.3)), 0.4, 750)
    assert len(merged.scores) == 2
    # Nothing small found: the first pass as it was.
    assert zoom.merge(first, dets((0, 0, 100, 100, 0.9)), 0.4, 750) is first


def test_when_runs_the_second_pass_only_where_the_first_found_a_small_face():
    first = dets((100, 100, 200, 220, 0.9), (10, 10, 30, 34, 0.25))
    assert ZoomPass().runs_on(first) and ZoomPass().runs_on(dets())
    assert ZoomPass(when=0.2).runs_on(first)
    assert not ZoomPass(when=0.3).runs_on(first)  # its only small face scores 0.25
    assert not ZoomPass(max_face=16, when=0.1).runs_on(first)  # 20 x 24 is not under 16
    assert not ZoomPass(when=0.0).runs_on(dets())


@pytest.mark.parametrize("settings, message", [
    ({"size": 16}, r"zoom pass's size must be at least 32, got 16"),
    ({"size": 100_000}, r"zoom pass's size"),
    ({"max_face": 0}, r"largest face must be in \(0, 1536\], got 0"),
    ({"when": 1.5}, r"score to run must be in \[0, 1\], got 1.5"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as caught:
        ZoomPass(**settings)
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def image():
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (3, 72, 100), dtype=torch.uint8, generator=gen)


def test_the_detector_merges_its_passes_in_original_pixels(shared_dir):
    """On a real crowd shrunk so that its faces are 6-25 px, with the shipped model."""
    path = shared_dir / SELFIE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    from PIL import Image

    with Image.open(path) as photo:
        image = torch.from_numpy(np.array(photo.convert("RGB").resize((512, 287)))).permute(2, 0, 1).contiguous()
    zoom = ZoomPass(size=1024, max_face=32)
    zoomed = Detector(device="cpu", score_thresh=0.1, zoom_pass=zoom).detect(image)
    first = Detector(device="cpu", score_thresh=0.1).detect(image)
    # The second pass is the image at twice its size, mapped back: what min_size=1024 gives.
    second = Detector(device="cpu", score_thresh=0.1, min_size=1024).detect(image)
    expected = zoom.merge(Detections(first.boxes, first.scores), Detections(second.boxes, second.scores), 0.4, 750)
    assert_close(zoomed.boxes, expected.boxes, rtol=0, atol=0)
    assert_close(zoomed.scores, expected.scores, rtol=0, atol=0)
    # It finds more faces, every one it adds small in the original's pixels, and every face of
    # the first pass that no added face overlaps is still there.
    added = zoomed.boxes[~(zoomed.boxes[:, None] == first.boxes[None]).all(-1).any(1)]
    assert len(zoomed) >= len(first) + 10
    assert bool((torch.minimum(added[:, 2] - added[:, 0], added[:, 3] - added[:, 1]) < 32).all())
    from torchvision.ops import box_iou

    alone = first.boxes[box_iou(first.boxes, added).amax(1) < 0.4]
    assert bool((alone[:, None] == zoomed.boxes[None]).all(-1).any(1).all())


def test_no_second_pass_where_the_first_ran_at_that_scale(small_weights, image):
    plain = Detector(small_weights, device="cpu", score_thresh=0.0).detect(image)
    for detector in (Detector(small_weights, device="cpu", score_thresh=0.0, zoom_pass=ZoomPass(size=100)),  # its own size
                     Detector(small_weights, device="cpu", score_thresh=0.0, zoom_pass=ZoomPass(size=64)),   # never down
                     # min_size already upscaled it as far as the zoom pass would
                     Detector(small_weights, device="cpu", score_thresh=0.0, min_size=200, zoom_pass=ZoomPass(size=200))):
        faces = detector.detect(image)
        reference = plain if detector.min_size is None else Detector(small_weights, device="cpu", score_thresh=0.0, min_size=200).detect(image)
        assert_close(faces.boxes, reference.boxes, rtol=0, atol=0)
    # The detector's max_size bounds the second pass too: 150 is its size here, not 400.
    capped = Detector(small_weights, device="cpu", score_thresh=0.0, max_size=150, zoom_pass=ZoomPass(size=400)).detect(image)
    at_150 = Detector(small_weights, device="cpu", score_thresh=0.0, zoom_pass=ZoomPass(size=150)).detect(image)
    assert_close(capped.boxes, at_150.boxes, rtol=0, atol=0)


def test_zoom_pass_on_the_command_line(shared_dir, tmp_path, capsys):
    import json

    from PIL import Image

    from srn.cli import main

    path = shared_dir / SELFIE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    photo = tmp_path / "small.png"
    with Image.open(path) as image:
        image.convert("RGB").resize((512, 287)).save(photo)
    common = ["--device", "cpu", "--threads", "1", "--score-thresh", "0.1"]
    assert main(["detect", str(photo), "--zoom-pass", "1024", "--zoom-max-face", "24", "--format", "jsonl", *common]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    expected = Detector(device="cpu", score_thresh=0.1, zoom_pass=ZoomPass(1024, 24)).detect(photo)
    assert json.loads(line)["faces"] == expected.record()["faces"]
    assert len(expected) > len(Detector(device="cpu", score_thresh=0.1).detect(photo))

    # A resumed run must use the same second pass as the run that made the file.
    out = tmp_path / "faces.jsonl"
    assert main(["detect", str(photo), "--zoom-pass", "1024", "-o", str(out), *common]) == 0
    capsys.readouterr()
    assert main(["detect", str(photo), "--zoom-pass", "768", "-o", str(out), "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert "zoom_pass [1024, 32.0] there, [768, 32.0] here" in err and len(err.splitlines()) == 1

    # Out-of-range values are one line each, exit 2.
    for bad, words in ((["--zoom-pass", "16"], "zoom pass's size must be at least 32, got 16"),
                       (["--zoom-pass", "-1"], "--zoom-pass"),
                       (["--zoom-max-face", "0"], "--zoom-max-face")):
        try:
            code = main(["detect", str(photo), *bad, *common])
        except SystemExit as parsed:  # argparse's range checks
            code = parsed.code
        assert code == 2
        err = capsys.readouterr().err
        assert words in err and len(err.splitlines()) == 1, err


def test_srn_anonymize_zooms_files_and_not_live_sources_by_default(monkeypatch, tmp_path):
    from srn.cli import anonymize as command
    from srn.cli import main

    seen = []
    monkeypatch.setattr(command, "run_live", lambda args, source: seen.append(("live", args.zoom_pass)) or 0)
    monkeypatch.setattr(command, "_run_files", lambda args: seen.append(("files", args.zoom_pass)) or 0)
    photo = tmp_path / "x.jpg"
    assert main(["anonymize", "0"]) == 0
    assert main(["anonymize", "0", "--zoom-pass", "1024"]) == 0
    assert main(["anonymize", str(photo)]) == 0
    assert main(["anonymize", str(photo), "--zoom-pass", "0"]) == 0
    assert seen == [("live", 0), ("live", 1024), ("files", command.DEFAULT_ZOOM_PASS), ("files", 0)]
