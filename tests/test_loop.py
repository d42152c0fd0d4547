"""The one run loop (srn.inference.loop.run): sources in, sinks out; per-item failure, worker death,
out of memory and flushing are the loop's, whatever the source and the sinks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from srn.cli import main
from srn.errors import InferenceOutOfMemory
from srn.inference import Faces
from srn.inference.loop import BaseSink, Item, ItemFailed, run
from srn.inference.sinks import SINKS, register_sink, sink_class
from srn.inference.sources import ImageFileSource


class FakeDetector:
    """Finds one face per image, the size of the image's top-left quarter; ``oom_at`` raises
    PyTorch's out-of-memory error on that call."""

    device = torch.device("cpu")

    def __init__(self, oom_at: int | None = None) -> None:
        self.calls, self.oom_at = 0, oom_at

    def detect(self, images, sources=None, frames=None):
        self.calls += 1
        if self.calls == self.oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        frames = frames or [None] * len(images)
        return [Faces(torch.tensor([[0.0, 0.0, im.shape[-1] / 2, im.shape[-2] / 2]]), torch.tensor([0.9]), im.shape[-1],
                      im.shape[-2], source, im, *(frame or (None, None)))
                for im, source, frame in zip(images, sources, frames)]


class ListSource:
    """Items made in memory, in batches as asked."""

    unit = "img"

    def __init__(self, items):
        self.items, self.total, self.closed = items, len(items), False

    def batches(self, batch_size, stop=None):
        for start in range(0, len(self.items), batch_size):
            yield self.items[start : start + batch_size]

    def close(self):
        self.closed = True


def image(height=8, width=12):
    return torch.zeros(3, height, width, dtype=torch.uint8)


@register_sink("test-collect", ".testcollect")
class Collect(BaseSink):
    """A custom sink, registered as a new format would be."""

    def __init__(self):
        self.items, self.flushes, self.events = [], 0, []

    def open(self):
        self.events.append("open")
        return self

    def write(self, faces, item=None):
        self.items.append((item.index, item.source, faces.source, faces.frame, faces.record()))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.events.append("close")

    def abort(self):
        self.events.append("abort")


def test_a_registered_sink_receives_every_item_with_its_record():
    assert SINKS["test-collect"] is Collect and sink_class(".TestCollect") is Collect
    sink = sink_class("test-collect")()
    items = [Item(i, f"img_{i}.jpg", image()) for i in range(5)]
    source = ListSource(items)
    summary = run(FakeDetector(), source, [sink], batch_size=2)
    assert (summary.items, summary.faces, summary.failures, summary.stopped) == (5, 5, [], None)
    assert [(i, s) for i, s, *_ in sink.items] == [(i, f"img_{i}.jpg") for i in range(5)]
    # The result knows its source from the moment it is made, and renders the record.
    assert all(item_source == faces_source for _, item_source, faces_source, _, _ in sink.items)
    assert sink.items[0][4] == {"image": "img_0.jpg", "width": 12, "height": 8,
                                "faces": [{"box": [0.0, 0.0, 6.0, 4.0], "score": 0.9}]}
    assert sink.flushes == 3  # one flush per batch: 2 + 2 + 1
    assert sink.events == ["open", "close"] and source.closed


def test_frames_carry_their_number_and_time_into_the_record():
    sink = Collect()
    items = [Item(i, "clip.mp4", image(), frame=i, time=i / 3) for i in range(3)]
    run(FakeDetector(), ListSource(items), [sink], batch_size=2)
    assert [frame for *_, frame, _ in sink.items] == [0, 1, 2]
    assert sink.items[1][4] == {"video": "clip.mp4", "frame": 1, "time": 0.3333, "width": 12, "height": 8,
                                "faces": [{"box": [0.0, 0.0, 6.0, 4.0], "score": 0.9}]}


def test_an_unreadable_item_and_a_failed_write_fail_alone():
    class FailsOn(BaseSink):
        def write(self, faces, item=None):
            if item.source == "b.jpg":
                raise ItemFailed("b.png: cannot be written (no space left)")
            return Path("written") / item.source

    after = Collect()
    seen = []

    class Observer:
        progress = None

        def item(self, name, faces, written=None):
            seen.append(("item", name, faces, written))

        def failed(self, line):
            seen.append(("failed", line))

    items = [Item(0, "a.jpg", image()), Item(1, "bad.jpg", error="bad.jpg: not a decodable image"),
             Item(2, "b.jpg", image()), Item(3, "c.jpg", image())]
    summary = run(FakeDetector(), ListSource(items), [FailsOn(), after], batch_size=4, observer=Observer())
    assert summary.items == 2 and summary.failures == ["bad.jpg: not a decodable image", "b.png: cannot be written (no space left)"]
    # The sinks after the one that failed do not get the item: no record for what failed.
    assert [source for _, source, *_ in after.items] == ["a.jpg", "c.jpg"]
    assert seen == [("item", "a.jpg", 1, Path("written/a.jpg")), ("failed", "bad.jpg: not a decodable image"),
                    ("failed", "b.png: cannot be written (no space left)"), ("item", "c.jpg", 1, Path("written/c.jpg"))]


def test_out_of_memory_is_one_domain_error_and_aborts_the_sinks():
    sink = Collect()
    source = ListSource([Item(i, f"{i}.jpg", image()) for i in range(4)])
    with pytest.raises(InferenceOutOfMemory, match="^out of memory$"):
        run(FakeDetector(oom_at=2), source, [sink], batch_size=2)
    assert sink.events == ["open", "abort"] and source.closed
    assert len(sink.items) == 2  # the first batch was written and flushed
    assert sink.flushes == 1


def test_the_command_line_says_what_helps_when_memory_runs_out(tmp_path, monkeypatch, capsys):
    from srn.cli import detect as command

    PIL.Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(command, "build_detector", lambda *a, **k: FakeDetector(oom_at=1))
    assert main(["detect", str(tmp_path / "a.png"), "--out", str(tmp_path / "a.jsonl")]) == 2
    assert capsys.readouterr().err == "srn detect: error: out of memory; lower --max-size or --batch-size\n"


def test_image_file_source_yields_items_with_their_metadata(tmp_path):
    good = tmp_path / "a.png"
    PIL.Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_text("not an image")
    source = ImageFileSource([good, bad, good], workers=0)
    assert (source.unit, source.total) == ("img", 3)
    batches = list(source.batches(2))
    assert [len(b) for b in batches] == [2, 1]
    first, second, third = (item for batch in batches for item in batch)
    assert (first.index, first.source, tuple(first.image.shape), first.error) == (0, str(good), (3, 5, 7), None)
    assert (second.index, second.source, second.image) == (1, str(bad), None) and second.error.startswith(str(bad))
    assert third.index == 2 and third.frame is None


def test_detector_is_called_like_a_function(tmp_path):
    from srn import Detector

    detector = Detector(device="cpu", threads=1)
    photo = np.zeros((64, 64, 3), np.uint8)
    assert detector.__call__ == detector.detect
    faces = detector([photo], sources=["named.jpg"])
    assert faces[0].source == "named.jpg" and faces[0].record()["image"] == "named.jpg"
    assert json.dumps(faces[0].record())
