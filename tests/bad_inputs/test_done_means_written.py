"""Done means written (issue 28, item 6): a file counts as written only once it reached the disk
whole; otherwise its item fails in one line and the run exits 1, with no torn file in place. A
failing video is one failed item among several. A killed writer's temporary file is removed by the
next run into its folder, a live writer's never. CSV quotes every control character. 16-bit colour
is kept, or a line says it is not."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import srn.atomic
from srn.atomic import atomic_file, atomic_output
from srn.inference.writers import CsvWriter
from srn.media.image_file import write_png
from srn.paths import is_temporary, remove_temporaries
from tests.bad_inputs.conftest import PHOTO
from tests.bad_inputs.conftest import run_cli as run

REPO = Path(__file__).resolve().parents[2]
CPU = ["--device", "cpu", "--workers", "0", "--threads", "1", "--batch-size", "1", "--min-size", "0"]


@pytest.fixture
def photos(tmp_path) -> Path:
    """big.jpg (about 100 kB) and small.jpg (a few kB)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = PIL.Image.open(PHOTO).convert("RGB")
    photo.save(folder / "big.jpg", quality=95)
    photo.crop((100, 0, 260, 160)).save(folder / "small.jpg", quality=80)
    return folder


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temporary(p.name)]


# -- a full disk ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str):
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the simulated full disk below covers the behaviour")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or mounted.returncode}); "
                    "the simulated full disk below covers the behaviour")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_tmpfs_fails_the_photo_that_does_not_fit_and_leaves_no_torn_file(photos, small_weights, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        out = disk / "out"
        code, lines = run(capsys, "anonymize", photos / "big.jpg", photos / "small.jpg", "--out", out,
                          "--weights", small_weights, *CPU)
        assert code == 1, lines
        failures = [line.strip() for line in lines if line.startswith("  ")]
        assert failures == [f"{out / 'big.jpg'}: cannot be written (no space left on device)"], lines
        assert not (out / "big.jpg").exists()  # PIL's JPEG encoder ignored the short write; the check did not
        with PIL.Image.open(out / "small.jpg") as written:
            written.load()  # whole
        assert leftovers(disk) == []


def test_a_write_that_fails_at_fsync_is_a_failed_item(photos, small_weights, tmp_path, capsys, monkeypatch):
    # A delayed allocation failure (NFS, quotas) surfaces at fsync: the file must not be renamed into place.
    real = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 50_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(srn.atomic.os, "fsync", full)
    out = tmp_path / "out"
    code, lines = run(capsys, "anonymize", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 1, lines
    assert f"  {out / 'big.jpg'}: cannot be written (no space left on device)" in lines
    assert sorted(p.name for p in out.iterdir()) == ["small.jpg"]


def test_a_short_file_never_replaces_the_target(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(srn.atomic.TornWrite, match="only 3 of 6 bytes reached the disk"):
        with atomic_file(target) as handle:
            handle.write(b"abcdef")
            os.ftruncate(handle._fd, 3)  # what a full disk does to an encoder that ignores short writes
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_write_to_a_full_device_raises(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            srn.atomic.CheckedFile(fd).write(b"x" * 10)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


# -- temporary files of dead writers ---------------------------------------------------------------------


def killed_writer(target: Path) -> Path:
    """A process that starts writing ``target`` through srn.atomic and is killed (SIGKILL) mid-write;
    returns the temporary file it left."""
    code = ("import sys, time\nfrom srn.atomic import atomic_output\n"
            "with atomic_output(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
            "    print(tmp, flush=True)\n    time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    partial = Path(process.stdout.readline().strip())
    process.kill()
    process.wait()
    assert partial.exists()
    return partial


def test_a_killed_writers_partial_is_removed_by_the_next_run_at_once(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    partial = killed_writer(out / "big.jpg")  # seconds old: no age rule would call it stale
    code, lines = run(capsys, "anonymize", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert not partial.exists() and leftovers(out) == []

    beside = killed_writer(photos / "small_anonymized.jpg")  # no --out: written beside the inputs
    code, lines = run(capsys, "anonymize", photos / "small.jpg", "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert not beside.exists()


def test_a_detect_output_and_its_manifest_partials_are_removed(photos, small_weights, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    partials = [killed_writer(out), killed_writer(out.with_name("faces.jsonl.manifest.json"))]
    code, lines = run(capsys, "detect", photos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert not any(p.exists() for p in partials)


def test_a_live_writers_partial_is_kept(tmp_path):
    with atomic_output(tmp_path / "x.jpg") as tmp:
        tmp.write_bytes(b"being written")
        assert remove_temporaries(tmp_path) == []
        assert tmp.exists()
    assert (tmp_path / "x.jpg").read_bytes() == b"being written"


# -- a failing video among several -------------------------------------------------------------------------


@pytest.fixture
def videos(tmp_path) -> list[Path]:
    av = pytest.importorskip("av")
    folder = tmp_path / "videos"
    folder.mkdir()
    good = folder / "a.mp4"
    with av.open(str(good), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    broken = folder / "b.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    last = folder / "c.mp4"
    last.write_bytes(good.read_bytes())
    return [good, broken, last]


@pytest.mark.parametrize("command", ["detect", "anonymize"])
def test_a_failing_video_is_one_failed_item_and_the_others_go_on(videos, small_weights, tmp_path, capsys, command):
    out = tmp_path / f"out_{command}"
    code, lines = run(capsys, command, *videos, "--out", out, "--weights", small_weights, *CPU)
    assert code == 1, lines
    about_b = [line for line in lines if str(videos[1]) in line]
    assert len(about_b) == 1, lines
    assert (out / "a.mp4").is_file() and (out / "c.mp4").is_file() and not (out / "b.mp4").exists()
    assert leftovers(out) == []


# -- CSV quoting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\rb.jpg", "a\nb.jpg", "tab\there.jpg", "esc\x1b[31m.jpg", "nul\x00.jpg",
                                  "c1\x85.jpg", "ls\u2028.jpg", 'quote".jpg', "comma,.jpg", "plain.jpg"])
def test_csv_reads_back_every_name(name):
    records = [{"image": name, "width": 4, "height": 3, "faces": [{"box": [0, 1, 2, 3], "score": 0.5}]},
               {"image": "next.jpg", "width": 4, "height": 3, "faces": []}]
    text = CsvWriter.render(records)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert [row[0] for row in rows] == ["image", name, "next.jpg"]
    assert rows[1][1:] == ["4", "3", "0", "1", "2", "3", "0.5"] and rows[2][1:] == ["4", "3", "", "", "", "", ""]
    assert text.count("\n") == 3 + name.count("\n")  # no line of its own but inside the quotes


# -- 16-bit colour ----------------------------------------------------------------------------------------------


def tiff_rgb16(path: Path, image: np.ndarray) -> None:
    """An uncompressed 16-bit RGB TIFF, written by hand (PIL cannot write one)."""
    import struct

    height, width, _ = image.shape
    data = image.astype("<u2").tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = 2 + 12 * len(entries) + 4
    bits_at, data_at = 8 + ifd, 8 + ifd + 6
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = bits_at if tag == 258 else data_at if tag == 273 else value
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)


def test_16_bit_rgb_is_kept_in_png_and_said_lost_in_tiff(small_weights, tmp_path, capsys):
    image = (np.random.default_rng(0).random((48, 64, 3)) * 65535).astype(np.uint16)
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "deep.png", image)
    tiff_rgb16(folder / "deep.tif", image)
    out = tmp_path / "out"
    code, lines = run(capsys, "anonymize", folder, "--out", out, "--weights", small_weights, *CPU)
    assert code == 0, lines
    assert (out / "deep.png").read_bytes()[24] == 16  # the IHDR's bit depth
    assert [line for line in lines if "warning" in line] == [
        f"srn anonymize: warning: {folder / 'deep.tif'}: its 16-bit colour is written with 8 bits "
        "(PIL decodes it as 8; a 16-bit PNG keeps 16)"]
