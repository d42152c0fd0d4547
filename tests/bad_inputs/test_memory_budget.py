"""A memory budget for decoding, whatever the container and however its header is read: every frame
and page is checked against the pixel limit before it is decoded, and every size setting is bounded by
the same limit. Each bomb is a few hundred bytes to a few hundred KB, made here (``bombs.py``); the
memory they would take is checked in a child process whose address space is capped, so that a
regression fails the test instead of taking the machine's memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest

from srn.cli import main
from srn.config import MAX_PIXELS_ENV, check_image_size
from srn.data.image_io import container_size, iter_frames, read_header, read_image
from srn.errors import ConfigError, ImageReadError
from tests.bad_inputs.bombs import FRAME_BOMBS, HUGE, SIDE, WEBP_CANVAS, png_bad_chunk
from tests.bad_inputs.conftest import REPO

LIMIT_TEXT = "is above the limit of 500 megapixels"


def test_a_png_whose_header_pil_refuses_is_checked_from_its_ihdr(tmp_path):
    bomb = png_bad_chunk(tmp_path / "bad_chunk.png")
    assert bomb.stat().st_size < 1_000_000
    assert read_header(bomb.read_bytes()) is None  # PIL refuses the header: one bad ancillary chunk
    assert container_size(bomb.read_bytes()) == (SIDE, SIDE)
    with pytest.raises(ImageReadError) as info:
        read_image(bomb)
    assert str(info.value) == (
        f"{bomb}: {SIDE}x{SIDE} pixels (1600 megapixels) is above the limit of 500 megapixels that guards against "
        f"decompression bombs; to read it, raise the limit with the environment variable {MAX_PIXELS_ENV}=<pixels> "
        "(0: no limit)")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_container_size_agrees_with_pil(tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    PIL.Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(path, fmt)
    assert container_size(path.read_bytes()) == (53, 37)
    if fmt == "WEBP":
        PIL.Image.fromarray(np.zeros((37, 53, 3), np.uint8)).save(path, fmt, lossless=True)
        assert container_size(path.read_bytes()) == (53, 37)


@pytest.mark.parametrize("suffix", sorted(FRAME_BOMBS))
def test_every_frame_is_checked_before_it_is_decoded(tmp_path, suffix):
    bomb = FRAME_BOMBS[suffix](tmp_path / f"bomb.{suffix}")
    assert bomb.stat().st_size < 10_000
    decoded = []
    with pytest.raises(ImageReadError) as info:
        for frame in iter_frames(bomb):
            decoded.append(np.asarray(frame.convert("RGB")).shape)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{bomb}: ")
    if suffix == "webp":  # frames are decoded into the canvas: refused before the first
        assert decoded == [] and f"{WEBP_CANVAS}x{WEBP_CANVAS} pixels" in message and LIMIT_TEXT in message
    elif suffix == "png":  # PIL refuses an APNG frame past the canvas; said in one line
        assert decoded == [(12, 16, 3)] and message == f"{bomb}: frame 1: not decodable (APNG contains invalid frames)"
    else:
        assert decoded == [(12, 16, 3)]
        assert f"frame 1: {HUGE}x{HUGE} pixels (3600 megapixels) {LIMIT_TEXT}" in message and MAX_PIXELS_ENV in message


@pytest.mark.parametrize("suffix", sorted(FRAME_BOMBS))
def test_anonymizing_a_file_checks_every_frame(tmp_path, suffix):
    import torch

    from srn.media.image_file import anonymize_image_file

    bomb = FRAME_BOMBS[suffix](tmp_path / f"bomb.{suffix}")
    with pytest.raises(ImageReadError) as info:
        anonymize_image_file(bomb, tmp_path / f"out.{suffix}", lambda frames: [torch.zeros(0, 4)] * len(frames))
    assert LIMIT_TEXT in str(info.value) or "not decodable (APNG contains invalid frames)" in str(info.value)
    assert not (tmp_path / f"out.{suffix}").exists()


def test_every_frame_of_a_good_animation_comes_out_one_at_a_time(tmp_path):
    frames = [PIL.Image.new("RGB", (20, 10), (30 * i, 0, 0)) for i in range(4)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    seen = [np.asarray(frame.convert("RGB"))[0, 0, 0] for frame in iter_frames(path)]
    assert seen == [0, 30, 60, 90]
    with pytest.raises(ImageReadError, match=r"20x10 pixels .* above the limit of 0.0001 megapixels"):
        next(iter_frames(path, max_pixels=100))


def test_no_bomb_takes_memory(tmp_path):
    """Every bomb read (read_image) and iterated (iter_frames) in a child whose address space is
    capped at 4 GB (the import of torch takes most of the first): what they announce, 3.6 to 14 GB,
    would not fit."""
    paths = [png_bad_chunk(tmp_path / "bad_chunk.png")] + [make(tmp_path / f"bomb.{s}") for s, make in FRAME_BOMBS.items()]
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4_000_000_000, 4_000_000_000))
        from srn.data.image_io import iter_frames, read_image
        from srn.errors import ImageReadError
        for path in {[str(p) for p in paths]!r}:
            for read in (read_image, lambda p: [f.convert("RGB") for f in iter_frames(p)]):
                try:
                    read(path)
                    print("read", path)
                except ImageReadError as exc:  # a failed allocation would be one too: say which
                    print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 * len(paths)
    for line in lines:  # refused by the limit (read_image decodes the first frame only), never by the allocator
        assert LIMIT_TEXT in line or line.startswith("read ") or line.endswith("not decodable (APNG contains invalid frames)"), line
    assert sum(LIMIT_TEXT in line for line in lines) >= 5, lines


# -- size settings, bounded by the same limit -------------------------------------------------------


def test_a_size_setting_above_the_limit_is_one_line(monkeypatch):
    check_image_size("sizes", 20000, 20000)  # 400 megapixels: a panorama's size is fine
    with pytest.raises(ConfigError) as info:
        check_image_size("sizes", 100000, 100000)
    assert str(info.value) == (
        "sizes: 100000x100000 pixels (10000 megapixels) is above the limit of 500 megapixels that bounds every image, "
        f"read or resized; to use it, raise the limit with the environment variable {MAX_PIXELS_ENV}=<pixels> (0: no limit)")
    monkeypatch.setenv(MAX_PIXELS_ENV, "0")
    check_image_size("sizes", 100000, 100000)


def test_srn_bench_refuses_a_size_above_the_limit_before_any_work(capsys):
    code = main(["bench", "--device", "cpu", "--sizes", "100000x100000", "--iters", "1", "--batch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"srn bench: error: sizes: 100000x100000 pixels (10000 megapixels) {LIMIT_TEXT} that "
                                f"bounds every image, read or resized; to use it, raise the limit with the environment "
                                f"variable {MAX_PIXELS_ENV}=<pixels> (0: no limit)"]


def test_a_detector_refuses_a_max_size_above_the_limit(small_weights):
    # Only the constructor: a detection at --max-size 100000 --min-size 100000 would ask for 30 GB.
    from srn.inference import Detector

    try:
        Detector(weights=small_weights, device="cpu", max_size=100000, min_size=100000)
    except ConfigError as exc:
        assert LIMIT_TEXT in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("a max_size of 100000 is accepted")
