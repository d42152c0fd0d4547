"""Live sources: ``srn detect`` and ``srn anonymize`` on a video stream served over HTTP from
127.0.0.1, stopped by its end or by Ctrl-C with every output finished; sources that cannot be
opened are one line."""

import functools
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

import srn.cli.detect as detect_command  # noqa: E402
from srn.cli import main  # noqa: E402
from srn.media.live import is_live_source, source_name  # noqa: E402
from tests.test_video import write_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12
CPU = ["--device", "cpu", "--threads", "1", "--score-thresh", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``slow/NAME`` sends NAME in small pieces with pauses, like a live camera."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/slow/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.removeprefix("/slow/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            for start in range(0, len(data), 2048):
                self.wfile.write(data[start : start + 2048])
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(FRAMES)]
    write_clip(folder / "clip.mp4", frames)
    # A long MPEG-TS stream for the Ctrl-C test: it decodes as it arrives, as a camera's stream does.
    write_clip(folder / "long.ts", [frames[i % FRAMES] for i in range(300)], fps=25)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def frames_in(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_names_of_live_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_live_source("0") and is_live_source("12")
    assert is_live_source("rtsp://cam.local/stream") and is_live_source("HTTPS://host/live.m3u8")
    assert not is_live_source("photo.jpg") and not is_live_source("ftp://host/x.mp4") and not is_live_source("http:x")
    (tmp_path / "0").write_text("a file named 0 is a file")
    assert not is_live_source("0")
    assert [source_name(s) for s in ("0", "3", "rtsp://cam.local/stream", "http://h:8/v/clip.mp4", "https://host.org/")] == [
        "webcam0", "webcam3", "stream", "clip", "host.org"]


def test_detect_reads_a_stream_to_its_end(server, small_weights, tmp_path, capsys):
    url = f"{server}/clip.mp4"
    out = tmp_path / "live.mp4"
    code = main(["detect", url, "--out", str(out), "--weights", small_weights, *CPU])
    err = capsys.readouterr().err
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert {(r["video"], r["width"], r["height"]) for r in records} == {(url, 64, 48)}
    assert records[1]["time"] == pytest.approx(0.1, abs=1e-3)  # 10 frames per second
    assert frames_in(out) == FRAMES
    faces = sum(len(r["faces"]) for r in records)
    expected = (rf"{re.escape(url)}: 12 frames, {faces} faces?, 0 failed in \d+\.\d s, the stream ended -> "
                rf"{re.escape(str(out))}, {re.escape(str(tmp_path / 'live.jsonl'))}")
    assert re.fullmatch(expected, err.splitlines()[-1])


def test_detect_prints_a_json_line_per_frame(server, small_weights, capsys):
    assert main(["detect", f"{server}/clip.mp4", "--weights", small_weights, "--batch-size", "4", *CPU]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(FRAMES))


class _CtrlCAfter:
    """A detector that presses Ctrl-C (sends SIGINT to this process) during its ``calls``-th batch."""

    def __init__(self, detector, calls):
        self.detector, self.calls, self.seen = detector, calls, 0

    def detect(self, images, **meta):  # meta: sources and frames, which the run loop passes along
        self.seen += 1
        if self.seen == self.calls:
            os.kill(os.getpid(), signal.SIGINT)
        return self.detector.detect(images, **meta)


def test_ctrl_c_finishes_every_output(server, small_weights, tmp_path, capsys, monkeypatch, request):
    # Ctrl-C as in a terminal: a job started in the background of a script begins with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    build = detect_command.build_detector
    monkeypatch.setattr(detect_command, "build_detector", lambda *a, **k: _CtrlCAfter(build(*a, **k), calls=3))
    out = tmp_path / "stopped.mp4"
    code = main(["detect", f"{server}/slow/long.ts", "--out", str(out), "--weights", small_weights, "--batch-size", "1", *CPU])
    err = capsys.readouterr().err
    assert code == 0, err
    # The batch in flight when Ctrl-C came is finished, and nothing after it is read.
    lines = (tmp_path / "stopped.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2]
    assert frames_in(out) == 3  # a whole, playable video
    assert "3 frames" in err.splitlines()[-1] and "stopped by Ctrl-C" in err.splitlines()[-1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is Ctrl-C again


def test_a_real_ctrl_c_from_the_terminal(server, small_weights, tmp_path):
    out = tmp_path / "live.mp4"
    command = [sys.executable, "-m", "srn", "detect", f"{server}/slow/long.ts", "--out", str(out), "--weights", small_weights,
               "--batch-size", "1", *CPU]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    jsonl = tmp_path / "live.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (jsonl.exists() and jsonl.read_text().count("\n") >= 2):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "no frame within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    frames = [json.loads(line)["frame"] for line in jsonl.read_text().splitlines()]
    assert frames == list(range(len(frames))) and 2 <= len(frames) < 300
    assert frames_in(out) == len(frames)
    assert "stopped by Ctrl-C" in err and "Traceback" not in err


def test_anonymize_a_stream(server, small_weights, tmp_path, capsys, monkeypatch):
    url = f"{server}/clip.mp4"
    assert main(["anonymize", url, "--out", str(tmp_path / "hidden"), "--method", "solid", "--weights", small_weights, *CPU]) == 0
    assert frames_in(tmp_path / "hidden" / "clip.mp4") == FRAMES
    monkeypatch.chdir(tmp_path)
    for name in ("clip_anonymized.mp4", "clip_anonymized_1.mp4"):  # beside, never over an earlier one
        assert main(["anonymize", url, "--weights", small_weights, *CPU]) == 0
        assert frames_in(tmp_path / name) == FRAMES
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("the stream ended -> clip_anonymized_1.mp4")


@pytest.mark.parametrize(("argv", "message"), [
    (["{server}/missing.mp4"], "{server}/missing.mp4: cannot open the stream (Server returned 404 Not Found)"),
    (["http://127.0.0.1:1/x.mp4"], "http://127.0.0.1:1/x.mp4: cannot open the stream (Connection refused)"),
    (["{server}/photo.jpg"], "{server}/photo.jpg: photos are not read from URLs (only video streams are); download it first"),
    (["{server}/clip.mp4", "a.jpg"], "{server}/clip.mp4: a live source is read alone; give it without other inputs"),
    (["{server}/clip.mp4", "--format", "csv"], "--format csv is for images; live sources write JSON lines"),
    (["{server}/clip.mp4", "--out", "x.webm"], "x.webm: a video's results are written as .mp4, .m4v, .mov, .mkv, .jsonl"),
])
def test_a_source_that_cannot_be_used_is_one_line(server, argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(server=server) for a in argv]
    assert main(["detect", *argv, "--weights", "missing.pt", *CPU]) == 2
    assert capsys.readouterr().err == f"srn detect: error: {message.format(server=server)}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.path.exists("/dev/video7"), reason="Linux without /dev/video7")
@pytest.mark.parametrize("command", ["detect", "anonymize"])
def test_a_missing_webcam_is_one_line(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([command, "7", "--weights", "missing.pt", *CPU]) == 2
    assert capsys.readouterr().err == f"srn {command}: error: 7: no webcam /dev/video7 on this machine\n"
