"""``srn detect clip.mp4 --out annotated.mp4`` end to end on synthetic clips, and srn.media.video's reader
and writer (H.264 out, audio kept, upright frames, odd sizes)."""

import json
import math
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

av = pytest.importorskip("av")

from srn.cli import main  # noqa: E402
from srn.config import DetectorConfig, ModelConfig  # noqa: E402
from srn.model import build_model  # noqa: E402
from srn.media.video import FrameReader, process_video  # noqa: E402
from srn.weights import save_checkpoint  # noqa: E402

SMALL = DetectorConfig(model=ModelConfig(backbone="resnet18", width=32))
FRAMES, WIDTH, HEIGHT, FPS = 12, 64, 48, 10
SAMPLE_RATE = 48000


pytestmark = pytest.mark.usefixtures("one_thread")


def write_clip(path, frames, fps=FPS, video_codec="mpeg4", audio_codec=None, rotation=0, pix_fmt="yuv420p"):
    """A clip of the given RGB frames ((H, W, 3) uint8, one size), with a 440 Hz sine as audio
    (``audio_codec``) lasting as long as the video."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if rotation:
            video.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=SAMPLE_RATE, layout="mono") if audio_codec else None
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            samples = round(SAMPLE_RATE * len(frames) / fps)
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE)).astype(np.float32)
            sound = av.AudioFrame.from_ndarray(wave[None], format="fltp", layout="mono")
            sound.sample_rate, sound.pts = SAMPLE_RATE, 0
            encoder = audio.codec_context
            resampler = av.AudioResampler(format=encoder.format, layout="mono", rate=SAMPLE_RATE, frame_size=encoder.frame_size or None)
            for chunk in resampler.resample(sound) + resampler.resample(None):
                for packet in audio.encode(chunk):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)
    return path


def streams(path) -> list[tuple[str, str]]:
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name) for s in container.streams]


def decoded_frames(path) -> tuple[int, tuple[int, int], str]:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        pix_fmt = container.streams.video[0].codec_context.pix_fmt
    return len(frames), frames[0].shape[:2], pix_fmt


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SMALL.model).eval()
    # Unit-gain new layers: SRN's std-0.01 init shrinks activations into float denormals, which
    # make a CPU forward several times slower.
    for conv in (*model.fpn.modules(), *model.first_step.modules(), *model.head.modules(), *model.extra.modules()):
        if isinstance(conv, nn.Conv2d):
            nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
    path = tmp_path_factory.mktemp("w") / "small.pt"
    save_checkpoint(model, SMALL, path)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(FRAMES)]
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, audio_codec="aac")


def test_detect_video_writes_annotated_video_and_jsonl(weights, clip, tmp_path, capsys):
    out = tmp_path / "annotated.mp4"
    code = main(["detect", str(clip), "--out", str(out), "--weights", weights, "--device", "cpu",
                 "--batch-size", "5", "--score-thresh", "0"])
    assert code == 0, capsys.readouterr().err
    assert decoded_frames(out) == (FRAMES, (HEIGHT, WIDTH), "yuv420p")
    assert streams(out) == [("video", "h264"), ("audio", "aac")]  # the audio is kept
    lines = (tmp_path / "annotated.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(FRAMES))  # in order across batches of 5
    assert [r["time"] for r in records] == [round(i / FPS, 4) for i in range(FRAMES)]
    assert (records[0]["width"], records[0]["height"]) == (WIDTH, HEIGHT)
    assert records[0]["faces"] and len(records[0]["faces"][0]["box"]) == 4
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"


def test_save_vis_copies_the_annotated_video(weights, clip, tmp_path, capsys):
    out, vis = tmp_path / "annotated.mkv", tmp_path / "vis"
    code = main(["detect", str(clip), "--out", str(out), "--save-vis", str(vis), "--weights", weights,
                 "--device", "cpu", "--score-thresh", "0"])
    assert code == 0, capsys.readouterr().err
    assert streams(out) == [("video", "h264"), ("audio", "aac")]
    assert (vis / "clip.mp4").read_bytes() == out.read_bytes()


def test_jsonl_only_and_bad_inputs(weights, clip, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    assert main(["detect", str(clip), "--out", str(out), "--weights", weights, "--device", "cpu", "--batch-size", "8"]) == 0
    assert len(out.read_text().splitlines()) == FRAMES
    assert not list(tmp_path.glob("*.mp4"))

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    capsys.readouterr()
    assert main(["detect", str(broken), "--weights", weights, "--device", "cpu"]) == 1  # one failed item
    err = capsys.readouterr().err
    assert err.startswith(f"srn detect: error: {broken}: cannot open the video (") and len(err.splitlines()) == 1

    capsys.readouterr()
    assert main(["detect", str(clip), "--out", str(tmp_path / "x.webm"), "--weights", weights]) == 2
    assert capsys.readouterr().err == (
        f"srn detect: error: {tmp_path / 'x.webm'}: a video's results are written as .mp4, .m4v, .mov, .mkv, .jsonl\n"
    )


def test_stdout_and_dev_null_for_a_video(weights, clip, capsys):
    assert main(["detect", str(clip), "--out", "-", "--weights", weights, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["frame"] for r in records] == list(range(FRAMES))
    faces = sum(len(r["faces"]) for r in records)
    summary = f"{clip}: 12 frames, {faces} face{'' if faces == 1 else 's'}\n"
    assert captured.err == summary
    assert main(["detect", str(clip), "--out", "/dev/null", "--weights", weights, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", summary)


def test_an_image_suffix_is_not_a_video_output(weights, clip, tmp_path, capsys):
    assert main(["detect", str(clip), "--out", str(tmp_path / "x.jpg"), "--weights", weights]) == 2
    assert capsys.readouterr().err == (
        f"srn detect: error: {tmp_path / 'x.jpg'}: a video's results are written as .mp4, .m4v, .mov, .mkv, .jsonl\n"
    )


def test_missing_pyav_is_one_line(weights, clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    assert main(["detect", str(clip), "--weights", weights]) == 2
    assert capsys.readouterr().err == "srn detect: error: video needs PyAV: pip install av (in a checkout: pip install -e '.[video]')\n"


class Unchanged:
    """A detector stand-in that finds nothing: the output must show the frames as they were."""

    def detect(self, images, sources=None, frames=None):
        from srn.inference import Faces

        sources = sources or [None] * len(images)
        frames = frames or [None] * len(images)
        return [Faces(torch.zeros(0, 4), torch.zeros(0), im.shape[-1], im.shape[-2], source, None, *(frame or (None, None)))
                for im, source, frame in zip(images, sources, frames)]


def test_rotated_odd_sized_video_comes_out_upright_and_padded(tmp_path):
    # 34 x 20 stored, to be shown turned 90 degrees counter-clockwise: 20 wide, 34 high upright.
    image = np.zeros((20, 34, 3), dtype=np.uint8)
    image[:, :10] = 255  # the left band of the stored frame is the bottom band upright
    clip = write_clip(tmp_path / "phone.mp4", [image] * 3, video_codec="libx264", rotation=90)
    reader = FrameReader(clip)
    frames = list(reader)
    assert [f.image.shape for f in frames] == [(34, 20, 3)] * 3
    assert (frames[0].image[:, :, 0].mean(axis=1) > 128).tolist() == [False] * 24 + [True] * 10  # lossy: no exact values

    seen = []
    out = tmp_path / "upright.mp4"
    count = process_video(Unchanged(), clip, 2, out, on_frame=lambda frame, faces: seen.append((frame.index, faces.width, faces.height)))
    assert count == 3 and seen == [(0, 20, 34), (1, 20, 34), (2, 20, 34)]
    assert decoded_frames(out) == (3, (34, 20), "yuv420p")
    with av.open(str(out)) as container:
        assert next(container.decode(video=0)).rotation == 0

    # PNG frames may have odd sizes; yuv420p may not.
    odd = write_clip(tmp_path / "odd.mov", [np.full((21, 33, 3), 128, np.uint8)] * 2, video_codec="png", pix_fmt="rgb24")
    process_video(Unchanged(), odd, 2, tmp_path / "odd_out.mp4")
    assert decoded_frames(tmp_path / "odd_out.mp4") == (2, (22, 34), "yuv420p")  # padded by one row and column


def test_audio_the_container_refuses_is_reencoded_to_aac(tmp_path):
    frames = [np.full((HEIGHT, WIDTH, 3), 80, np.uint8)] * 5
    clip = write_clip(tmp_path / "opus.mkv", frames, audio_codec="libopus")
    process_video(Unchanged(), clip, 4, tmp_path / "copied.mp4")
    process_video(Unchanged(), clip, 4, tmp_path / "encoded.mov")  # no Opus in QuickTime files
    assert streams(tmp_path / "copied.mp4") == [("video", "h264"), ("audio", "opus")]
    assert streams(tmp_path / "encoded.mov") == [("video", "h264"), ("audio", "aac")]
    with av.open(str(tmp_path / "encoded.mov")) as container:
        stream = container.streams.audio[0]
        seconds = stream.duration * stream.time_base
    # 0.5 s of sound, and at most one AAC frame (1024 samples) of encoder delay.
    assert Fraction(1, 2) <= seconds <= Fraction(1, 2) + Fraction(1024, SAMPLE_RATE)
    reader = FrameReader(clip)
    reader.close()
    assert (reader.rate, reader.fps) == (Fraction(FPS), float(FPS))


def test_hide_scores_reaches_the_drawn_videos(tmp_path):
    from pathlib import Path

    from srn.inference import Faces
    from srn.pipeline.detect import plan_video_outputs

    image = np.zeros((120, 160, 3), dtype=np.uint8)
    faces = Faces(torch.tensor([[40.0, 40.0, 90.0, 100.0]]), torch.tensor([0.9]), 160, 120)
    changed = {}
    for scores in (True, False):
        (targets,) = plan_video_outputs([Path("clip.mp4")], str(tmp_path / f"{scores}.mp4"), None, scores=scores)
        changed[scores] = int((targets.render(image, faces) != 0).any(axis=2).sum())
    assert 0 < changed[False] < changed[True]  # the box alone, then the box and its label
