"""srn.media.anonymize on real photos and by hand, and ``srn anonymize`` on a tree of images and on a video
with sound."""

import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from srn import Detector, ZoomPass
from srn.media.anonymize import MASKS, METHODS, anonymize
from srn.cli import main
from srn.data.image_io import read_image
from srn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "docs" / "astronaut.png"  # NASA, public domain
MULTIFACE = "data/demo/images/timesler__data_multiface.jpg"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector():
    from srn.cli.anonymize import DEFAULT_SCORE_THRESH, DEFAULT_ZOOM_MAX_FACE, DEFAULT_ZOOM_PASS

    # srn anonymize's defaults
    return Detector(device="cpu", score_thresh=DEFAULT_SCORE_THRESH, zoom_pass=ZoomPass(DEFAULT_ZOOM_PASS, DEFAULT_ZOOM_MAX_FACE))


@pytest.fixture(scope="module", params=["astronaut", "multiface"])
def faces(request, detector):
    if request.param == "astronaut":
        return detector.detect(str(ASTRONAUT))
    path = request.getfixturevalue("shared_dir") / MULTIFACE
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return detector.detect(path)


def regions(boxes: torch.Tensor, scale: float, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Each box grown ``scale`` times around its centre, in whole pixels, clipped."""
    out = []
    for x1, y1, x2, y2 in boxes.double().tolist():
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * scale, (y2 - y1) * scale
        out.append((max(0, math.floor(cx - w / 2)), max(0, math.floor(cy - h / 2)), min(width, math.ceil(cx + w / 2)), min(height, math.ceil(cy + h / 2))))
    return out


def inscribed_ellipse(box, height: int, width: int) -> np.ndarray:
    """Bool (H, W): pixels whose centres lie in the ellipse inscribed in ``box``."""
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return ((xs - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + ((ys - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 <= 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mask", MASKS)
def test_faces_change_and_everything_else_stays(faces, method, mask):
    image = faces.image
    before = image.clone()
    hidden = anonymize(image, faces.boxes, method=method, mask=mask, mask_scale=1.3)
    assert hidden.shape == image.shape and hidden.dtype == torch.uint8
    assert torch.equal(image, before)  # pure: the input is not modified
    original, result = image.permute(1, 2, 0).numpy(), hidden.permute(1, 2, 0).numpy()
    changed = (result != original).any(axis=2)

    untouched = np.ones(changed.shape, dtype=bool)
    for x1, y1, x2, y2 in regions(faces.boxes, 1.3, faces.width, faces.height):
        untouched[y1:y2, x1:x2] = False
    assert untouched.sum() > 0.3 * untouched.size
    np.testing.assert_array_equal(result[untouched], original[untouched])  # exactly, outside every face

    # Faces for sure (score 0.5 and up): the weaker boxes include flat regions (the astronaut's black
    # visor) that a mosaic or a blur leaves as they were.
    for box in faces.boxes[faces.scores >= 0.5].tolist():
        inside = inscribed_ellipse(box, faces.height, faces.width) if mask == "ellipse" else np.zeros_like(changed)
        if mask == "box":
            x1, y1, x2, y2 = (round(v) for v in box)
            inside[y1:y2, x1:x2] = True
        assert changed[inside].mean() >= 0.95, f"{method}/{mask}: only {changed[inside].mean():.1%} of face {box} changed"
        if method == "solid":
            assert (result[inside] == 0).all()

    # The same in (H, W, 3) arrays, pixel for pixel.
    as_array = anonymize(original, faces.boxes.numpy(), method=method, mask=mask, mask_scale=1.3)
    assert isinstance(as_array, np.ndarray)
    np.testing.assert_array_equal(as_array, result)


def test_by_hand_solid_mosaic_and_overlaps():
    image = (torch.arange(3 * 20 * 24).remainder(250) + 1).to(torch.uint8).reshape(3, 20, 24)  # no black pixel
    # solid, box 4..12 x 2..10, no growth: exactly that rectangle turns black
    out = anonymize(image, torch.tensor([[4.0, 2.0, 12.0, 10.0]]), method="solid", mask_scale=1.0)
    expected = image.clone()
    expected[:, 2:10, 4:12] = 0
    assert torch.equal(out, expected)

    # mosaic of a 12 x 12 face: blocks of ceil(12 / 6) = 2 pixels, each its 2 x 2 mean (rounded half to even)
    out = anonymize(image, torch.tensor([[6.0, 4.0, 18.0, 16.0]]), method="mosaic", mask_scale=1.0)
    block = image[:, 4:16, 6:18].double().reshape(3, 6, 2, 6, 2).mean(dim=(2, 4)).round()
    assert torch.equal(out[:, 4:16, 6:18].double(), block.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert torch.equal(out[:, :4], image[:, :4]) and torch.equal(out[:, 16:], image[:, 16:])

    # ellipse of a 10 x 10 box: the pixels whose centres are within 5 of (5, 5). Per quadrant, centre
    # offsets a, b in 0.5 ... 4.5 with a^2 + b^2 <= 25: 5 + 5 + 4 + 4 + 2 = 20 (for a = 0.5 ... 4.5), so 80.
    out = anonymize(image, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), method="solid", mask="ellipse", mask_scale=1.0)
    circle = torch.zeros(20, 24, dtype=torch.bool)
    circle[:10, :10] = torch.from_numpy(inscribed_ellipse((0, 0, 10, 10), 10, 10))
    assert int(circle.sum()) == 80
    assert torch.equal((out == 0).all(dim=0), circle) and torch.equal(out[:, ~circle], image[:, ~circle])

    # Two overlapping ellipses: no pixel of either is left unhidden.
    boxes = torch.tensor([[2.0, 2.0, 14.0, 16.0], [8.0, 4.0, 22.0, 18.0]])
    out = anonymize(image, boxes, method="solid", mask="ellipse", mask_scale=1.0)
    union = inscribed_ellipse(boxes[0].tolist(), 20, 24) | inscribed_ellipse(boxes[1].tolist(), 20, 24)
    assert (out.permute(1, 2, 0).numpy()[union] == 0).all()
    assert torch.equal(out.permute(1, 2, 0)[torch.from_numpy(~union)], image.permute(1, 2, 0)[torch.from_numpy(~union)])

    # A face reaching past the border, and no face at all.
    assert anonymize(image, torch.tensor([[-30.0, -30.0, 2.0, 3.0]]), method="blur").shape == image.shape
    assert torch.equal(anonymize(image, torch.zeros(0, 4)), image)


def test_the_command_line_offers_every_method_and_mask():
    from srn.cli import anonymize as command

    assert (command.METHODS, command.MASKS) == (METHODS, MASKS)


def test_bad_settings_are_config_errors():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ConfigError, match=r"^unknown anonymisation method 'pixelate' \(use one of blur, mosaic, solid\)$"):
        anonymize(image, torch.zeros(0, 4), method="pixelate")
    with pytest.raises(ConfigError, match=r"^unknown mask 'circle' \(use one of box, ellipse\)$"):
        anonymize(image, torch.zeros(0, 4), mask="circle")
    with pytest.raises(ConfigError, match=r"^the mask scale must be a positive number, got 0.0$"):
        anonymize(image, torch.zeros(0, 4), mask_scale=0.0)


# -- the command line ------------------------------------------------------------------------------------


def test_anonymize_a_tree_mirrors_it_and_never_overwrites(detector, tmp_path, capsys):
    src = tmp_path / "in"
    for name in ("a/x.png", "b/x.png", "b/x.jpg"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ASTRONAUT, src / "a" / "x.png")
    shutil.copy(ASTRONAUT, src / "b" / "x.png")
    PIL.Image.open(ASTRONAUT).convert("RGB").save(src / "b" / "x.jpg", quality=90)
    (src / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    originals = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    out = tmp_path / "out"

    code = main(["anonymize", str(src / "a"), str(src / "b"), "--out", str(out), "--method", "solid",
                 "--mask", "ellipse", "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1  # one file failed, the others were done
    assert re.fullmatch(rf"4 files, \d+ faces?, 1 failed in \d+\.\d s -> {re.escape(str(out))}", err[-3])
    assert err[-2:] == ["srn anonymize: 1 of 4 files failed:", f"  {src / 'b' / 'broken.jpg'}: not a decodable image (truncated JPEG)"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a/x.png", "b/x.jpg", "b/x.png"]
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == originals

    # PNG is lossless: the file holds exactly what the library computes; the JPEG stays a JPEG.
    faces = detector.detect(str(ASTRONAUT))
    expected = anonymize(faces.image, faces.boxes, method="solid", mask="ellipse", mask_scale=1.3)
    assert torch.equal(read_image(out / "a" / "x.png"), expected)
    with PIL.Image.open(out / "b" / "x.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))

    # Writing into the input folder would overwrite the inputs: refused before anything runs.
    assert main(["anonymize", str(src / "a"), "--out", str(src / "a"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"srn anonymize: error: {src / 'a'}: is inside the input folder {src / 'a'}; a later "
                                       "run over it would read these outputs as inputs: choose a folder outside it\n")
    # ...and a named file's own output, by another path, is still an input.
    assert main(["anonymize", str(src / "a" / "x.png"), "--out", str(src / "a"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"srn anonymize: error: {src / 'a' / 'x.png'}: is also an input; refusing to overwrite it\n"


# -- video --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talking_head(tmp_path_factory):
    av = pytest.importorskip("av")
    from tests.test_video import write_clip

    photo = np.asarray(PIL.Image.open(ASTRONAUT).convert("RGB").resize((256, 256)))
    folder = tmp_path_factory.mktemp("video")
    return {
        "mp4": write_clip(folder / "talk.mp4", [photo] * 4, video_codec="libx264", audio_codec="aac"),
        "avi": write_clip(folder / "talk.avi", [photo] * 3, video_codec="mpeg4", audio_codec="libmp3lame"),
        "av": av,
        "photo": photo,
    }


def test_anonymize_a_video_keeps_its_sound_in_h264(talking_head, detector, tmp_path, capsys):
    av = talking_head["av"]
    out = tmp_path / "out"
    code = main(["anonymize", str(talking_head["mp4"]), str(talking_head["avi"]), "--out", str(out),
                 "--method", "solid", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["talk.avi.mp4", "talk.mp4"]  # an .avi cannot hold H.264
    for name, frames, audio in (("talk.mp4", 4, "aac"), ("talk.avi.mp4", 3, "mp3float")):
        with av.open(str(out / name)) as container:
            assert [(s.type, s.codec_context.name) for s in container.streams] == [("video", "h264"), ("audio", audio)]
            assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(decoded) == frames
    # The face (found in the first decoded input frame) is black; far from it the frame is the
    # photo, up to compression.
    with av.open(str(talking_head["mp4"])) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24")
    faces = detector.detect(first)
    assert len(faces) >= 1
    x1, y1, x2, y2 = (round(v) for v in faces.boxes[0].tolist())
    with av.open(str(out / "talk.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)
    face = frame[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4]
    assert face.mean() < 8, "the face is not blacked out"
    far = np.ones(frame.shape[:2], dtype=bool)
    for bx1, by1, bx2, by2 in regions(faces.boxes, 1.3, 256, 256):
        far[max(0, by1 - 8) : by2 + 8, max(0, bx1 - 8) : bx2 + 8] = False
    assert np.abs(frame[far] - first[far].astype(np.int16)).mean() < 4


def test_missing_pyav_is_one_line_before_any_work(talking_head, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    assert main(["anonymize", str(talking_head["mp4"]), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "srn anonymize: error: video needs PyAV: pip install av (in a checkout: pip install -e '.[video]')\n"
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("suffix", [".tif", ".gif", ".png", ".webp"])
def test_a_long_animation_is_read_a_few_frames_at_a_time(tmp_path, monkeypatch, suffix):
    # Frames are decoded, detected and handed to the writer a chunk at a time, never all at once
    # (the GIF, APNG and WebP writers of PIL may keep what they are given; the reading side does not).
    import srn.media.image_file as image_file

    rng = np.random.default_rng(0)
    count = 40
    frames = [PIL.Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(count)]
    source = tmp_path / f"long{suffix}"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=40)
    decoded = 0
    real_iter_frames = image_file.iter_frames

    def counting(*args, **kwargs):
        nonlocal decoded
        for frame in real_iter_frames(*args, **kwargs):
            decoded += 1
            yield frame

    monkeypatch.setattr(image_file, "iter_frames", counting)
    seen = []

    def detect(batch):
        seen.append((len(seen), decoded, len(batch)))
        return [torch.zeros((0, 4)) for _ in batch]

    notes = image_file.anonymize_image_file(source, tmp_path / f"out{suffix}", detect, first_boxes=torch.zeros((0, 4)))
    assert notes == []
    with PIL.Image.open(tmp_path / f"out{suffix}") as written:
        assert written.n_frames == count
    chunk = image_file._FRAMES_PER_CALL
    assert all(at <= (call + 1) * chunk for call, at, _ in seen), seen  # never more than a chunk ahead
    assert sum(size for _, _, size in seen) == count - 1  # the first frame's faces were given


def test_anonymize_one_video_out_named_like_a_video_is_that_file(talking_head, tmp_path, capsys):
    av = talking_head["av"]
    out = tmp_path / "blurred.mp4"
    code = main(["anonymize", str(talking_head["avi"]), "-o", str(out), "--method", "solid", "--device", "cpu", "--min-size", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.rstrip().endswith(f"-> {out}") and sorted(p.name for p in tmp_path.iterdir()) == ["blurred.mp4"]
    with av.open(str(out)) as container:
        assert [(s.type, s.codec_context.name) for s in container.streams] == [("video", "h264"), ("audio", "mp3float")]
    # A container that cannot hold H.264, and an image's name for a video, are one line before any work.
    for name, message in (("blurred.avi", ".avi cannot hold H.264; name it .mp4, .m4v, .mov, .mkv"),
                          ("blurred.jpg", f"names an image, and {talking_head['avi']} is a video; give it a video's suffix")):
        assert main(["anonymize", str(talking_head["avi"]), "-o", str(tmp_path / name), "--device", "cpu"]) == 2
        assert capsys.readouterr().err == f"srn anonymize: error: {tmp_path / name}: {message}\n"
        assert not (tmp_path / name).exists()


def test_a_live_source_out_named_like_a_video_is_that_file(tmp_path):
    from srn.errors import OutputPathError
    from srn.pipeline.anonymize import live_target

    assert live_target("webcam0", str(tmp_path / "cam.mkv")) == tmp_path / "cam.mkv"
    assert live_target("webcam0", str(tmp_path / "out")) == tmp_path / "out" / "webcam0.mp4"
    with pytest.raises(OutputPathError, match="a live source is written as a video; name it .mp4"):
        live_target("webcam0", str(tmp_path / "cam.jpg"))
