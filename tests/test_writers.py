"""The record writers of ``srn detect`` (srn.inference.writers, srn.evaluation.wider_writer) and the
sharing out of inputs over processes (srn.inference.sharding), without a network."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from srn.errors import InputPathError, OutputCollisionError, PredictionFormatError
from srn.evaluation.wider_writer import WiderWriter
from srn.evaluation.widerface import read_prediction_file
from srn.inference import Faces
from srn.inference.sharding import Shard, leftover_parts, merge_parts
from srn.inference.writers import (
    CSV_HEADER,
    CsvWriter,
    JsonArrayWriter,
    JsonLinesWriter,
    detection_record,
    done_images,
    read_jsonl,
    render,
)

# A name with a comma, a quote and a newline: CSV must quote it, and read it back as it was.
AWKWARD = 'photos/a, "b"\nc.jpg'


def faces_of(name: str, count: int, width: int = 640, height: int = 480) -> Faces:
    boxes = torch.tensor([[10.0 + i, 20.0, 110.123 + i, 140.987] for i in range(count)]).reshape(-1, 4)
    scores = torch.linspace(0.9, 0.5, count) if count else torch.zeros(0)
    return Faces(boxes, scores, width, height, source=name)


RESULTS = [faces_of("a.jpg", 2), faces_of(AWKWARD, 1), faces_of("empty.png", 0)]


def write_all(writer, results=RESULTS) -> None:
    with writer:
        for faces in results:
            writer.write(faces)
        writer.flush()


def test_jsonl_written_then_read_back_for_resume_gives_the_same_records(tmp_path):
    out = tmp_path / "faces.jsonl"
    write_all(JsonLinesWriter(out))
    records = [detection_record(faces) for faces in RESULTS]
    assert read_jsonl(out) == records
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert done_images([out, tmp_path / "absent.jsonl"]) == {"a.jpg", AWKWARD, "empty.png"}

    # A run killed mid-line: the torn line is no record, and repair cuts it so that appending goes on.
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"image": "torn.jpg", "wid')
    assert read_jsonl(out) == records and out.read_bytes().endswith(b"wid")
    assert done_images([out], repair=out) == {"a.jpg", AWKWARD, "empty.png"}
    assert out.read_bytes() == whole
    write_all(JsonLinesWriter(out, append=True), [faces_of("more.jpg", 1)])
    assert [r["image"] for r in read_jsonl(out)] == ["a.jpg", AWKWARD, "empty.png", "more.jpg"]


def test_a_line_that_is_no_record_names_file_and_line(tmp_path):
    out = tmp_path / "faces.jsonl"
    out.write_text('{"image": "a.jpg"}\n[1, 2]\n')
    with pytest.raises(PredictionFormatError, match=r"faces\.jsonl, line 2: not an srn detect record"):
        read_jsonl(out)


def test_csv_with_comma_quote_and_newline_reads_back_identically(tmp_path):
    out = tmp_path / "faces.csv"
    write_all(CsvWriter(out))
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == CSV_HEADER
    expected = []
    for faces in RESULTS:
        record = detection_record(faces)
        head = [record["image"], str(record["width"]), str(record["height"])]
        expected += [head + [str(v) for v in [*face["box"], face["score"]]] for face in record["faces"]] or [head + [""] * 5]
    assert rows[1:] == expected
    assert [row[0] for row in rows[1:]] == ["a.jpg", "a.jpg", AWKWARD, "empty.png"]
    assert out.read_text(encoding="utf-8") == render("csv", [detection_record(f) for f in RESULTS])

    # Appending to a CSV file goes on after its rows: one header, at the top.
    write_all(CsvWriter(out, append=True), [faces_of("more.jpg", 0)])
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows.count(CSV_HEADER) == 1 and rows[-1] == ["more.jpg", "640", "480", "", "", "", "", ""]


def test_json_array_is_written_whole_at_close_and_not_at_all_on_failure(tmp_path):
    out = tmp_path / "faces.json"
    writer = JsonArrayWriter(out).open()
    writer.write(RESULTS[0])
    writer.flush()
    assert not out.exists()  # nothing until the end
    writer.close()
    assert json.loads(out.read_text()) == [detection_record(RESULTS[0])]

    failed = tmp_path / "failed.json"
    with pytest.raises(RuntimeError), JsonArrayWriter(failed) as writer:
        writer.write(RESULTS[0])
        raise RuntimeError("the run failed")
    assert not failed.exists()


def test_streamed_formats_keep_what_was_flushed_when_a_run_fails(tmp_path):
    out = tmp_path / "faces.jsonl"
    with pytest.raises(RuntimeError), JsonLinesWriter(out) as writer:
        writer.write(RESULTS[0])
        writer.flush()  # a batch done
        writer.write(RESULTS[1])  # the batch in flight
        raise RuntimeError("killed")
    assert read_jsonl(out) == [detection_record(RESULTS[0])]


def test_writers_to_stdout(capsys):
    write_all(JsonLinesWriter())
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [detection_record(f) for f in RESULTS]
    write_all(JsonArrayWriter())
    assert json.loads(capsys.readouterr().out) == [detection_record(f) for f in RESULTS]


# -- sharding ----------------------------------------------------------------------------------------


def test_ten_inputs_over_three_ranks_are_each_done_exactly_once():
    shares = [list(Shard(rank, 3).indices(10)) for rank in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for share in shares for i in share) == list(range(10))
    assert list(Shard().indices(10)) == list(range(10)) and not Shard().distributed


def test_shard_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    shard = Shard.from_env()
    assert (shard.rank, shard.world_size, shard.local_rank, shard.distributed) == (2, 4, 0, True)
    assert shard.part(Path("out/faces.jsonl")) == Path("out/faces.rank2.jsonl")
    assert shard.parts(Path("f.csv")) == [Path(f"f.rank{r}.jsonl") for r in range(4)]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_merge_restores_input_order_and_removes_the_parts(tmp_path, fmt):
    files = [Path(f"img_{i}.jpg") for i in range(10)]
    out = tmp_path / f"merged.{fmt}"
    records = {str(f): detection_record(faces_of(str(f), i % 3)) for i, f in enumerate(files)}
    for rank in range(3):  # each process writes its share in its own order
        write_all(JsonLinesWriter(Shard(rank, 3).part(out)), [faces_of(str(files[i]), i % 3) for i in Shard(rank, 3).indices(10)])
    parts = leftover_parts(out)
    assert parts == sorted(Shard(0, 3).parts(out))
    merge_parts(out, fmt, files, parts)
    assert out.read_text() == render(fmt, [records[str(f)] for f in files])
    assert leftover_parts(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_merge_keeps_what_a_resumed_output_holds_in_input_order(tmp_path):
    # The resumed output's record of img_2 wins over the part's, and every record is in input order.
    files = [Path(f"img_{i}.jpg") for i in range(4)]
    out = tmp_path / "merged.jsonl"
    keep = [detection_record(faces_of("img_2.jpg", 1))]
    write_all(JsonLinesWriter(Shard(0, 2).part(out)), [faces_of("img_3.jpg", 0), faces_of("img_2.jpg", 2), faces_of("img_0.jpg", 1)])
    merge_parts(out, "jsonl", files, leftover_parts(out), keep)
    assert [(r["image"], len(r["faces"])) for r in read_jsonl(out)] == [("img_0.jpg", 1), ("img_2.jpg", 1), ("img_3.jpg", 0)]


# -- the WIDER layout ----------------------------------------------------------------------------------


def test_wider_writer_writes_one_file_per_image_unrounded(tmp_path):
    image = tmp_path / "images" / "0--Parade" / "0_Parade_1.jpg"
    writer = WiderWriter(tmp_path / "preds", [image])
    faces = faces_of(str(image), 2)
    write_all(writer, [faces])
    written = read_prediction_file(tmp_path / "preds" / "0--Parade" / "0_Parade_1.txt")
    assert written.shape == (2, 5)
    assert written[0, 2] == pytest.approx(float(faces.boxes[0, 2] - faces.boxes[0, 0]), abs=1e-3)  # w, not rounded to 2 decimals


def test_wider_writer_refuses_two_images_on_one_file_and_an_image_without_event(tmp_path):
    with pytest.raises(OutputCollisionError) as info:
        WiderWriter(Path("p"), [Path("a/x/1.jpg"), Path("b/x/1.png")])
    assert str(info.value) == ("a/x/1.jpg and b/x/1.png would both be written to p/x/1.txt (the WIDER format names files "
                               "by event folder and image name); run them separately")
    with pytest.raises(InputPathError, match=r"^/x\.jpg: the WIDER format names files by their event folder"):
        WiderWriter(Path("p"), [Path("/x.jpg")])


# -- odd file names -----------------------------------------------------------------------------------


ODD_NAMES = ["a,b.jpg", 'say "cheese".jpg', "two\nlines.jpg", "tab\there.jpg", "caf\udce9.jpg"]


def test_csv_quotes_odd_names_and_reads_them_back(tmp_path):
    records = [{"image": name, "width": 4, "height": 3, "faces": []} for name in ODD_NAMES]
    out = tmp_path / "faces.csv"
    with CsvWriter(out) as writer:
        for record in records:
            writer.write_record(record)
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.reader(handle))
    assert [row[0] for row in rows[1:]] == ODD_NAMES
    assert all(len(row) == 8 for row in rows)


def test_the_wider_layout_refuses_a_name_with_a_line_break(tmp_path):
    image = tmp_path / "event" / "two\nlines.jpg"
    with pytest.raises(InputPathError) as info:
        WiderWriter(tmp_path / "preds", [image])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}/event/two\\nlines.jpg: the WIDER format writes")
