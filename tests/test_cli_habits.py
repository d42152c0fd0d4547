"""The first fifteen minutes with the command line: it starts fast, says what it did, takes outputs
by their suffix, picks defaults that fit the machine, writes anonymised files beside their inputs,
and treats a missing network as normal."""

import argparse
import json
import os
import re
import stat
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import srn.cli.common as common
from srn.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "docs" / "astronaut.png"
CPU = ["--device", "cpu", "--workers", "0", "--threads", "1"]


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    PIL.Image.fromarray(rgb(60, 80, 1)).save(folder / "one.jpg", quality=95)
    PIL.Image.fromarray(rgb(50, 70, 2)).save(folder / "two.png")
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- start fast -------------------------------------------------------------------------------------

HEAVY = ("torch", "torchvision", "numpy", "PIL", "av", "onnxruntime", "yaml")
PROBE = f"""
import sys
from srn.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [[], ["--version"], ["--help"], *[[name, "--help"] for name in COMMANDS]])
def test_help_and_version_import_no_heavy_module(argv):
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "HEAVY []"
    assert ("usage: srn" in result.stdout) or result.stdout.startswith("srn ")


def test_importtime_of_detect_help_lists_no_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "srn", "detect", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "--max-size" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "srn.cli.detect" in imported
    assert not {name for name in imported if name.split(".")[0] in ("torch", "torchvision", "numpy")}


def test_the_command_list_names_every_command_as_it_registers_itself():
    full = build_parser()
    (sub,) = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in sub._choices_actions}
    assert summaries == {name: summary for name, (_, summary) in COMMANDS.items()}


def _option_helps(parser: argparse.ArgumentParser, prog: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _option_helps(child, f"{prog} {name}")
        elif action.option_strings and action.help is not argparse.SUPPRESS:
            formatter = parser._get_formatter()
            yield prog, action, formatter._get_help_string(action) or ""


def test_every_option_with_a_default_shows_it_in_its_help():
    missing = []
    for prog, action, text in _option_helps(build_parser(), "srn"):
        if prog.startswith("srn export"):
            continue  # srn/cli/export.py is not built with srn.cli.common.HelpFormatter
        if action.default is None or isinstance(action.default, bool) or action.nargs == 0:
            continue
        if "default" not in text:
            missing.append(f"{prog} {action.option_strings[0]}")
    assert missing == []


def test_detect_help_shows_max_size_and_what_it_does(capsys):
    with pytest.raises(SystemExit):
        main(["detect", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "is shrunk to it before detection" in text and "(default: 2100)" in text
    assert "(default: 0.3)" in text and "(default: 8)" in text


# -- say what it did ----------------------------------------------------------------------------------


SUMMARY = r"(\d+) images?, (\d+) faces?, (\d+) failed in \d+\.\d s"


def test_one_image_is_one_json_line_and_a_summary(capsys, small_weights, photos):
    code, out, err = run(capsys, "detect", photos / "one.jpg", "--weights", small_weights, "--score-thresh", "0", *CPU)
    assert code == 0, err
    assert out.count("\n") == 1 and out.endswith("}\n")  # compact: one record on one line
    record = json.loads(out)
    assert record["image"] == str(photos / "one.jpg") and (record["width"], record["height"]) == (80, 60)
    found = len(record["faces"])
    assert found > 0
    (line,) = err.splitlines()  # not a terminal: the summary alone
    assert re.fullmatch(SUMMARY, line).groups() == ("1", str(found), "0")


def test_on_a_terminal_each_image_gets_its_line(capsys, small_weights, photos, monkeypatch):
    monkeypatch.setattr(common, "stderr_is_terminal", lambda: True)
    out_file = photos.parent / "terminal.jsonl"
    code, out, err = run(capsys, "detect", photos, "--weights", small_weights, "--score-thresh", "0", "--out", out_file, *CPU)
    assert code == 0 and out == ""
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    counts = {r["image"]: len(r["faces"]) for r in records}
    lines = err.splitlines()
    assert lines[:2] == [f"{image}: {n} face{'s' if n != 1 else ''}" for image, n in counts.items()]
    match = re.fullmatch(SUMMARY + f" -> {re.escape(str(out_file))}", lines[2])
    assert match.groups() == ("2", str(sum(counts.values())), "0") and len(lines) == 3


def test_several_images_on_stdout_are_json_lines(capsys, small_weights, photos):
    code, out, err = run(capsys, "detect", photos, "--weights", small_weights, "--format", "json", *CPU)
    assert code == 0, err
    assert [Path(json.loads(line)["image"]).name for line in out.splitlines()] == ["one.jpg", "two.png"]


# -- outputs by suffix ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [("drawn.jpg", "JPEG"), ("drawn.jpeg", "JPEG"), ("drawn.png", "PNG"), ("drawn.webp", "WEBP")])
def test_an_image_out_is_the_photo_drawn(capsys, small_weights, photos, tmp_path, name, fmt):
    out = tmp_path / name
    code, stdout, err = run(capsys, "detect", photos / "two.png", "--weights", small_weights, "--score-thresh", "0",
                            "--out", out, *CPU)
    assert code == 0, err
    assert stdout == ""  # the drawn photo is the output
    with PIL.Image.open(out) as image:
        assert image.format == fmt and image.size == (70, 50)
        drawn = np.asarray(image.convert("RGB"))
    assert np.abs(drawn.astype(int) - rgb(50, 70, 2)).max() > 100  # boxes and labels are drawn on it
    assert err.rstrip().endswith(f"-> {out}")


def test_an_image_out_takes_one_photo_only(capsys, small_weights, photos, tmp_path):
    out = tmp_path / "drawn.jpg"
    code, stdout, err = run(capsys, "detect", photos, "--weights", small_weights, "--out", out, *CPU)
    assert (code, stdout) == (2, "")
    assert err == f"srn detect: error: {out}: an image holds the faces of one photo, and 2 were given; use --save-vis DIR for several\n"
    assert not out.exists()


@pytest.mark.parametrize(("name", "message"), [
    ("sub/faces.txt", "'.txt' is not an output type; name it .json, .jsonl, .csv or an image (.jpg, .png, .webp), or give --format"),
    ("sub/faces", "has no suffix to tell what to write; name it .json, .jsonl, .csv or an image (.jpg, .png, .webp), or give --format"),
])
def test_an_unknown_out_is_refused_in_one_line_before_anything(capsys, photos, tmp_path, name, message):
    out = tmp_path / name
    code, stdout, err = run(capsys, "detect", photos / "one.jpg", "--weights", tmp_path / "missing.pt", "--out", out, *CPU)
    assert (code, stdout, err) == (2, "", f"srn detect: error: {out}: {message}\n")
    assert not (tmp_path / "sub").exists()


def test_dash_is_stdout_in_the_format_asked(capsys, small_weights, photos):
    code, out, err = run(capsys, "detect", photos / "one.jpg", "--weights", small_weights, "--out", "-", "--format", "csv",
                         "--score-thresh", "0", *CPU)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "image,width,height,x1,y1,x2,y2,score" and lines[1].startswith(f"{photos / 'one.jpg'},80,60,")
    code, out, err = run(capsys, "detect", photos / "one.jpg", "--weights", small_weights, "--out", "-", *CPU)
    assert code == 0 and json.loads(out)["image"] == str(photos / "one.jpg")
    code, _, err = run(capsys, "detect", photos / "one.jpg", "--weights", small_weights, "--out", "-", "--resume", *CPU)
    assert (code, err) == (2, "srn detect: error: --resume needs --out FILE.jsonl (JSON Lines is the format a run can be resumed from)\n")


@pytest.mark.skipif(not os.path.exists(os.devnull) or not stat.S_ISCHR(os.stat(os.devnull).st_mode), reason="no null device")
@pytest.mark.parametrize("fmt", [[], ["--format", "csv"], ["--format", "json"]])
def test_dev_null_is_allowed_and_stays_a_device(capsys, small_weights, photos, fmt):
    code, out, err = run(capsys, "detect", photos, "--weights", small_weights, "--out", os.devnull, *fmt, *CPU)
    assert code == 0, err
    assert out == "" and re.fullmatch(SUMMARY, err.strip()).group(1) == "2"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_save_vis_keeps_the_name_and_the_format(capsys, small_weights, photos, tmp_path):
    code, _, err = run(capsys, "detect", photos, "--weights", small_weights, "--score-thresh", "0", "--save-vis", tmp_path / "vis", *CPU)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["one.jpg", "two.png"]
    with PIL.Image.open(tmp_path / "vis" / "one.jpg") as jpeg, PIL.Image.open(tmp_path / "vis" / "two.png") as png:
        assert (jpeg.format, jpeg.size, png.format, png.size) == ("JPEG", (80, 60), "PNG", (70, 50))


# -- defaults that fit the machine --------------------------------------------------------------------


@pytest.mark.parametrize(("cores", "workers", "threads"), [
    (1, 0, 1), (2, 0, 1), (3, 1, 1), (4, 1, 2), (8, 2, 5), (16, 4, 11), (64, 4, 59),
])
def test_workers_and_threads_share_the_cores(cores, workers, threads):
    assert common.default_workers(cores) == workers
    assert common.default_threads(workers, cores) == threads
    # Decoding and the network never ask for more cores than there are, and leave one for the
    # main process where there is more than one.
    assert workers + threads == max(1, cores - 1)


def test_build_detector_sets_the_threads_the_cores_leave(small_weights, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(common, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        parser = argparse.ArgumentParser()
        common.add_detector_args(parser)
        args = parser.parse_args(["--weights", small_weights, "--device", "cpu"])
        args.workers = 1
        common.build_detector(args, 0.5)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own setting is left alone
        torch.set_num_threads(1)
        common.build_detector(args, 0.5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# -- deface's habits: anonymised files beside their inputs ----------------------------------------------


def test_anonymize_without_out_writes_beside_and_never_overwrites(capsys, small_weights, tmp_path):
    photo = tmp_path / "photo.jpg"
    PIL.Image.open(ASTRONAUT).convert("RGB").save(photo, quality=95)
    original = photo.read_bytes()
    for expected in ("photo_anonymized.jpg", "photo_anonymized_1.jpg"):
        code, out, err = run(capsys, "anonymize", photo, "--weights", small_weights, "--score-thresh", "0", *CPU)
        assert code == 0, err
        assert (tmp_path / expected).is_file() and out == ""
        assert re.fullmatch(r"1 file, \d+ faces?, 0 failed in \d+\.\d s", err.strip())
    assert photo.read_bytes() == original
    with PIL.Image.open(tmp_path / "photo_anonymized.jpg") as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))
        assert not np.array_equal(np.asarray(image), np.asarray(PIL.Image.open(photo)))


def test_anonymize_a_folder_without_out_mirrors_it_beside(capsys, small_weights, tmp_path, monkeypatch):
    folder = tmp_path / "shoot"
    (folder / "day1").mkdir(parents=True)
    PIL.Image.fromarray(rgb(40, 40, 3)).save(folder / "day1" / "a.png")
    PIL.Image.fromarray(rgb(40, 48, 4)).save(folder / "b.png")
    monkeypatch.chdir(tmp_path)
    for mirror in ("shoot_anonymized", "shoot_anonymized_1"):
        code, _, err = run(capsys, "anonymize", "shoot", "--weights", small_weights, "--score-thresh", "0", *CPU)
        assert code == 0, err
        assert sorted(str(p.relative_to(tmp_path / mirror)) for p in (tmp_path / mirror).rglob("*.png")) == ["b.png", "day1/a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shoot", "shoot_anonymized", "shoot_anonymized_1"]


def test_anonymize_names_on_a_terminal(capsys, small_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "stderr_is_terminal", lambda: True)
    PIL.Image.fromarray(rgb(40, 40, 5)).save(tmp_path / "x.png")
    code, _, err = run(capsys, "anonymize", tmp_path / "x.png", "--weights", small_weights, "--score-thresh", "0", *CPU)
    assert code == 0
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'x.png'))}: \d+ faces? -> {re.escape(str(tmp_path / 'x_anonymized.png'))}",
                        err.splitlines()[0])


@pytest.mark.parametrize("option", ["--out", "-o"])
def test_anonymize_out_named_like_an_image_is_that_file(capsys, small_weights, tmp_path, option):
    PIL.Image.fromarray(rgb(40, 48, 6)).save(tmp_path / "photo.png")
    out = tmp_path / "new" / "blurred.jpg"
    code, stdout, err = run(capsys, "anonymize", tmp_path / "photo.png", option, out, "--weights", small_weights, "-t", "0", *CPU)
    assert (code, stdout) == (0, ""), err
    assert err.rstrip().endswith(f"-> {out}")
    with PIL.Image.open(out) as image:
        assert (image.format, image.size) == ("JPEG", (48, 40))  # the file named, in its suffix's format
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["blurred.jpg"]


@pytest.mark.parametrize(("inputs", "out", "message"), [
    (["a.png", "b.png"], "x.jpg", "names one file, and 2 inputs were found; give a folder for several (for example --out anonymized/)"),
    (["a.png"], "x.mp4", "names a video, and {a} is an image; give it an image's suffix"),
])
def test_anonymize_out_that_cannot_be_a_file_is_one_line(capsys, tmp_path, inputs, out, message):
    for name in inputs:
        PIL.Image.fromarray(rgb(20, 20, 7)).save(tmp_path / name)
    target = tmp_path / out
    code, stdout, err = run(capsys, "anonymize", *[tmp_path / n for n in inputs], "-o", target, "--weights", tmp_path / "none.pt", *CPU)
    assert (code, stdout) == (2, "")
    assert err == f"srn anonymize: error: {target}: {message.format(a=tmp_path / 'a.png')}\n"
    assert not target.exists()


def test_anonymize_out_folder_forms(capsys, small_weights, tmp_path):
    PIL.Image.fromarray(rgb(30, 30, 8)).save(tmp_path / "a.png")
    for out in ("plain", "slashed.jpg/"):  # no media suffix, or a trailing slash: a folder
        code, _, err = run(capsys, "anonymize", tmp_path / "a.png", "-o", f"{tmp_path}/{out}", "--weights", small_weights, *CPU)
        assert code == 0, err
        assert (tmp_path / out.rstrip("/") / "a.png").is_file()


@pytest.mark.parametrize(("argv", "line"), [
    (["detect", "x.jpg", "--ouput", "y.jpg"], "srn detect: error: unrecognized arguments: --ouput y.jpg; did you mean --out?"),
    (["anonymize", "x.jpg", "--scor-thresh=0.2"], "srn anonymize: error: unrecognized arguments: --scor-thresh=0.2; did you mean --score-thresh?"),
    (["detect", "x.jpg", "--zebra"], "srn detect: error: unrecognized arguments: --zebra"),
    (["--verison"], "srn: error: unrecognized arguments: --verison; did you mean --version?"),
])
def test_a_mistyped_option_gets_the_nearest_in_one_line(capsys, argv, line):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_short_options_of_deface():
    for command in ("detect", "anonymize"):
        args = build_parser(command).parse_args([command, "x.jpg", "-o", "y.jpg", "-t", "0.5"])
        assert (args.out, args.score_thresh) == ("y.jpg", 0.5)


def test_hide_scores_draws_boxes_without_labels(capsys, small_weights, photos, tmp_path):
    drawn = {}
    for name, extra in (("labels.png", []), ("bare.png", ["--hide-scores"])):
        code, _, err = run(capsys, "detect", photos / "two.png", "--weights", small_weights, "-t", "0", "-o", tmp_path / name, *extra, *CPU)
        assert code == 0, err
        drawn[name] = np.asarray(PIL.Image.open(tmp_path / name).convert("RGB")).astype(int)
    changed = lambda image: (np.abs(image - rgb(50, 70, 2)).max(axis=2) > 0).sum()  # noqa: E731
    assert 0 < changed(drawn["bare.png"]) < changed(drawn["labels.png"])  # boxes drawn, and no text


# -- channel order --------------------------------------------------------------------------------------


def test_bgr_arrays_are_read_in_their_order():
    from srn import Detector
    from srn.errors import ConfigError

    detector = Detector(device="cpu")
    photo = np.asarray(PIL.Image.open(ASTRONAUT).convert("RGB"))
    bgr = np.ascontiguousarray(photo[..., ::-1])  # what cv2.imread gives
    right = detector.detect(photo)
    from_bgr = detector.detect(bgr, channels="bgr")
    torch.testing.assert_close(from_bgr.boxes, right.boxes)
    torch.testing.assert_close(from_bgr.scores, right.scores)
    assert np.array_equal(from_bgr.image.permute(1, 2, 0).numpy(), photo)  # kept (and drawn) as RGB
    tensor_bgr = torch.from_numpy(bgr).permute(2, 0, 1)
    (streamed,) = list(detector.stream([tensor_bgr], channels="bgr"))
    torch.testing.assert_close(streamed.boxes, right.boxes)
    wrong = detector.detect(bgr)  # read as RGB: another photo, other scores
    assert not torch.equal(wrong.scores, right.scores)
    with pytest.raises(ConfigError, match=r"^channels must be one of rgb, bgr, got 'brg'$"):
        detector.detect(photo, channels="brg")


# -- offline is normal ---------------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: every download fails as urllib fails without one."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    return home


def test_a_backbone_download_without_network_is_one_line_that_says_where_the_file_goes(offline):
    from srn.config import ModelConfig
    from srn.errors import WeightsError
    from srn.model import SRN

    with pytest.raises(WeightsError) as error:
        SRN.from_config(ModelConfig(backbone="resnet18", width=32, pretrained="imagenet"))
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    cached = offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(error.value) == (
        "resnet18-f37072fd.pth: the ImageNet weights of resnet18 are not in torch's hub cache and could not be downloaded "
        f"([Errno -3] Temporary failure in name resolution); download {url} and put it at {cached}, "
        "or set model.pretrained to the path of a copy"
    )
    assert not cached.exists()


def test_the_hub_cache_is_read_without_network(offline):
    from srn.model.backbone import MobileNetV2Backbone, load_imagenet_weights

    donor = MobileNetV2Backbone()
    cached = offline / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.parent.mkdir(parents=True)
    torch.save(donor.state_dict(), cached)
    backbone = MobileNetV2Backbone()
    load_imagenet_weights(backbone, "mobilenet_v2", "imagenet")
    torch.testing.assert_close(backbone.state_dict(), donor.state_dict())
    cached.write_bytes(b"<html>captive portal</html>")  # a damaged file: one line, and what to do
    with pytest.raises(Exception, match=r"cannot be read \(UnpicklingError\); delete the file, and download"):
        load_imagenet_weights(backbone, "mobilenet_v2", "imagenet")


def test_srn_train_offline_is_one_line_and_leaves_no_run_folder(offline, capsys, tmp_path):
    run_dir = tmp_path / "runs" / "r50"
    code, out, err = run(capsys, "train", "srn_r50_widerface", "model.backbone=resnet18", f"train.output_dir={run_dir}",
                         "train.device=cpu")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("srn train: error: resnet18-f37072fd.pth: the ImageNet weights")
    assert f"put it at {offline / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}" in err
    assert not (tmp_path / "runs").exists()
