"""Anonymised images keep what their input had: every frame of an animated GIF (each frame's faces
hidden), every page of a TIFF, an RGBA PNG's alpha, a 16-bit PNG's depth; or a warning line says
what could not be kept. The files are generated here; the faces are given (a fixed box per frame) so
that the test does not depend on a detector finding them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from srn.cli import main
from srn.media.image_file import anonymize_image_file, what_rgb_loses, write_png

BOX = torch.tensor([[10.0, 8.0, 30.0, 28.0]])  # x1, y1, x2, y2: the "face" of every frame
INSIDE = (slice(12, 26), slice(12, 28))  # rows, columns well inside the box
OUTSIDE = (slice(0, 4), slice(0, 50))


def noise(height: int = 40, width: int = 50, channels: int = 3, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 65536
    return np.random.RandomState(seed).randint(1, high, (height, width, channels)).astype(dtype)


def fixed_faces(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    assert all(f.dtype == torch.uint8 and f.shape[0] == 3 for f in frames)  # the detector sees 8-bit RGB
    return [BOX for _ in frames]


def hide(source: Path, target: Path) -> list[str]:
    return anonymize_image_file(source, target, fixed_faces, method="solid")


def test_an_animated_gif_keeps_every_frame_and_each_is_anonymised(tmp_path):
    frames = [PIL.Image.fromarray(noise(seed=i)).quantize(64) for i in range(4)]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=[40, 50, 60, 70], loop=0)
    assert what_rgb_loses(source) == ["its 4 frames"]
    assert hide(source, tmp_path / "out.gif") == []
    with PIL.Image.open(tmp_path / "out.gif") as out:
        assert out.n_frames == 4 and out.info.get("loop") == 0
        for index in range(4):
            out.seek(index)
            pixels = np.asarray(out.convert("RGB"))
            assert (pixels[INSIDE] == 0).all(), index  # this frame's face is hidden
            assert out.info["duration"] == 40 + 10 * index
            with PIL.Image.open(source) as original:
                original.seek(index)
                assert (pixels[OUTSIDE] == np.asarray(original.convert("RGB"))[OUTSIDE]).all()


def test_a_multi_page_tiff_keeps_its_pages(tmp_path):
    pages = [PIL.Image.fromarray(noise(seed=i)) for i in range(3)]
    source = tmp_path / "scan.tif"
    pages[0].save(source, save_all=True, append_images=pages[1:])
    assert hide(source, tmp_path / "out.tif") == []
    with PIL.Image.open(tmp_path / "out.tif") as out:
        assert out.n_frames == 3
        for index in range(3):
            out.seek(index)
            pixels = np.asarray(out)
            assert (pixels[INSIDE] == 0).all() and (pixels[OUTSIDE] == np.asarray(pages[index])[OUTSIDE]).all()


def test_an_rgba_png_keeps_its_alpha(tmp_path):
    rgba = noise(channels=4)
    source = tmp_path / "logo.png"
    PIL.Image.fromarray(rgba, "RGBA").save(source)
    assert what_rgb_loses(source) == ["its alpha channel"]
    assert hide(source, tmp_path / "out.png") == []
    out = np.asarray(PIL.Image.open(tmp_path / "out.png"))
    assert out.shape == (40, 50, 4)
    assert (out[:, :, 3] == rgba[:, :, 3]).all()  # alpha untouched, inside the face too
    assert (out[INSIDE][:, :, :3] == 0).all() and (out[OUTSIDE] == rgba[OUTSIDE]).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_a_16_bit_png_stays_16_bit(tmp_path, channels):
    wide = noise(channels=channels, dtype=np.uint16)
    source = write_png(tmp_path / "scan.png", wide)
    assert "its 16-bit depth" in what_rgb_loses(source)
    assert hide(source, tmp_path / "out.png") == []
    from torchvision.io import ImageReadMode, decode_image

    out = decode_image(str(tmp_path / "out.png"), mode=ImageReadMode.UNCHANGED).permute(1, 2, 0).numpy()
    assert out.dtype == np.uint16 and out.shape == (40, 50, channels)
    assert (out[OUTSIDE] == wide[OUTSIDE]).all()  # 16 bits kept exactly where nothing was hidden
    colour = out[INSIDE][:, :, : 3 if channels >= 3 else 1]
    assert (colour == 0).all()
    if channels == 4:
        assert (out[:, :, 3] == wide[:, :, 3]).all()


def test_what_a_format_cannot_hold_is_said(tmp_path):
    frames = [PIL.Image.fromarray(noise(seed=i)) for i in range(2)]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:])
    assert hide(source, tmp_path / "out.jpg") == ["only the first of its 2 frames is kept (.jpg holds one)"]
    rgba = tmp_path / "logo.png"
    PIL.Image.fromarray(noise(channels=4), "RGBA").save(rgba)
    assert hide(rgba, tmp_path / "logo.jpg") == ["its alpha channel is dropped (.jpg has none)"]


def test_srn_anonymize_keeps_frames_alpha_and_depth(tmp_path, small_weights, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    frames = [PIL.Image.fromarray(noise(64, 64, seed=i)) for i in range(3)]
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:], duration=80)
    frames[0].save(photos / "pages.tif", save_all=True, append_images=frames[1:])
    PIL.Image.fromarray(noise(64, 64, channels=4), "RGBA").save(photos / "alpha.png")
    write_png(photos / "deep.png", noise(64, 64, channels=3, dtype=np.uint16))
    out = tmp_path / "out"
    code = main(["anonymize", str(photos), "--out", str(out), "--weights", small_weights, "--device", "cpu",
                 "--workers", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err and "warning" not in err, err
    with PIL.Image.open(out / "anim.gif") as gif, PIL.Image.open(out / "pages.tif") as tif:
        assert gif.n_frames == 3 and tif.n_frames == 3
    assert PIL.Image.open(out / "alpha.png").mode == "RGBA"
    assert (out / "deep.png").read_bytes()[24] == 16  # IHDR bit depth


@pytest.mark.parametrize("codec, layout", [("pcm_s16le", "stereo"), ("pcm_s16le", "mono"), ("pcm_u8", "stereo"),
                                           ("pcm_mulaw", "mono")])
def test_an_avi_with_pcm_audio_is_anonymised_with_its_sound(tmp_path, small_weights, capsys, codec, layout):
    # AVI stores PCM with channels in no named order; MP4 cannot finish such a stream: it becomes AAC.
    av = pytest.importorskip("av")
    photo = noise(64, 64)
    source = tmp_path / "clip.avi"
    rate, frames = 22050, 6
    with av.open(str(source), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream(codec, rate=rate, layout=layout)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(photo, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        channels = 2 if layout == "stereo" else 1
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate * frames // 25) / rate)).astype(np.float32)
        sound = av.AudioFrame.from_ndarray(np.repeat(wave[None], channels, 0), format="fltp", layout=layout)
        sound.sample_rate, sound.pts = rate, 0
        resampler = av.AudioResampler(format=audio.codec_context.format, layout=layout, rate=rate)
        for chunk in resampler.resample(sound) + resampler.resample(None):
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    out = tmp_path / "out"
    code = main(["anonymize", str(source), "--out", str(out), "--weights", small_weights, "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    with av.open(str(out / "clip.avi.mp4")) as result:
        kinds = [(s.type, s.codec_context.name) for s in result.streams]
        assert kinds == [("video", "h264"), ("audio", "aac")]
        assert sum(1 for _ in result.decode(audio=0)) > 0
