"""Config and annotation reading that cannot explode, and messages that quote nothing they should not:
one budgeted YAML loader for config files, ``_base_`` files and ``key=value`` overrides; values shown
as short printable excerpts; a file that is not of the expected kind (a password file named as a
config or as annotations) is said to be so, with nothing of it quoted."""

from __future__ import annotations


import pytest

from srn.config import MAX_CONFIG_BYTES, MAX_YAML_VALUES, TrainingConfig, apply_overrides, load_yaml, parse_yaml
from srn.data.formats.fddb import read_fddb_ellipses
from srn.data.formats.wider import parse_wider_file
from srn.errors import AnnotationError, ConfigError, PredictionFormatError, excerpt
from srn.evaluation.fddb import read_fddb_detections
from srn.evaluation.widerface import read_prediction_file
from tests.bad_inputs.conftest import run_cli as run

SECRET = "S3CRETHASH"
# A password file, as /etc/shadow is laid out (the tests cannot read the real one).
SHADOW = (f"root:$6$saltsalt${SECRET}xyz:19000:0:99999:7:::\n"
          f"daemon:*:19000:0:99999:7:::\nbin: {SECRET}2\nsys:*:19000:0:99999:7:::\n")


def laughs(levels: int = 9, width: int = 9) -> str:
    """A billion laughs: ``width ** levels`` values from a few hundred bytes of aliases."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# -- the YAML budget ----------------------------------------------------------------------------------


def test_a_billion_laughs_config_is_refused_before_it_is_walked(tmp_path, capsys):
    config = tmp_path / "laughs.yaml"
    config.write_text(laughs() + "train: {output_dir: *a8}\n")
    assert config.stat().st_size < 700
    code, lines = run(capsys, "train", config)
    assert (code, lines) == (2, [f"srn train: error: {config}: not a config file: its aliases expand to more than "
                                 f"{MAX_YAML_VALUES} values"])


def test_a_billion_laughs_override_is_refused(capsys, tmp_path):
    value = "{" + laughs().strip().replace("\n", ", ") + "}"
    code, lines = run(capsys, "train", "srn_r50_widerface", f"train.output_dir={tmp_path / 'run'}", f"train.lr={value}")
    assert (code, lines) == (2, [f"srn train: error: train.lr: not a config value: its aliases expand to more than "
                                 f"{MAX_YAML_VALUES} values"])
    with pytest.raises(ConfigError, match="train.freeze: not a config value"):
        apply_overrides(TrainingConfig(), [f"train.freeze={value}"])


@pytest.mark.parametrize("text, reason", [
    ("a: &a [*a]\n", "an alias refers to the value that contains it"),
    ("a: &a {b: *a}\n", "an alias refers to the value that contains it"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_self_reference_and_depth_are_refused(text, reason):
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "x.yaml", "config file")
    assert str(info.value) == f"x.yaml: not a config file: {reason}"


def test_a_huge_config_is_not_read_whole(tmp_path, capsys):
    config = tmp_path / "big.yaml"
    config.write_text("train:\n  lr: 0.1\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    code, lines = run(capsys, "train", config)
    assert (code, lines) == (2, [f"srn train: error: {config}: not a config file (more than {MAX_CONFIG_BYTES} bytes)"])


def test_a_shared_value_is_still_fine():
    assert parse_yaml("a: &x [1, 2]\nb: *x\n", "x.yaml") == {"a": [1, 2], "b": [1, 2]}


# -- excerpts -----------------------------------------------------------------------------------------


def test_excerpts_are_short_printable_and_cheap():
    nested: object = ["lol"] * 9
    for _ in range(9):
        nested = [nested] * 9  # 9 ** 10 leaves, shared
    text = excerpt(nested)
    assert len(text) <= 60  # a repr of the 9 ** 10 leaves would never end
    assert excerpt("a\nb\x1b") == "'a\\nb\\x1b'"
    assert "..." in excerpt("x" * 10_000) and len(excerpt("x" * 10_000)) <= 60
    assert excerpt({"file": "labels.txt"}) == "{'file': 'labels.txt'}"


def test_a_long_unknown_key_or_value_is_an_excerpt(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"train:\n  lr: 0.1\n  {'k' * 1000}: 1\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(TrainingConfig, config)
    # the known keys are listed (a bounded list); the unknown one is an excerpt
    message = str(info.value)
    assert "kkkk" in message and "k" * 61 not in message and len(message) < 1000
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainingConfig(), [f"train.output_dir=[{'x' * 100_000}]"])
    assert len(str(info.value)) < 200


# -- files of another kind quote nothing --------------------------------------------------------------


def test_a_base_that_is_not_a_config_quotes_nothing(tmp_path, capsys):
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    config = tmp_path / "c.yaml"
    config.write_text(f"_base_: {shadow}\ntrain: {{lr: 0.1}}\n")
    code, lines = run(capsys, "train", config)
    assert (code, lines) == (2, [f"srn train: error: {shadow}: not a config file (none of its top-level keys is one of "
                                 "model, postprocess, data, loss, train)"])
    code, lines = run(capsys, "train", shadow)
    assert code == 2 and SECRET not in "\n".join(lines)


@pytest.mark.parametrize("reader, error, kind", [
    (read_fddb_ellipses, AnnotationError, "an FDDB ellipse list"),
    (read_fddb_detections, PredictionFormatError, "an FDDB detection list"),
    (parse_wider_file, AnnotationError, "a WIDER FACE annotation file"),
    (read_prediction_file, PredictionFormatError, "a WIDER FACE prediction file"),
])
def test_a_password_file_as_annotations_quotes_nothing(tmp_path, reader, error, kind):
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    with pytest.raises(error) as info:
        reader(shadow)
    message = str(info.value)
    reason = message.removeprefix(str(shadow))
    assert SECRET not in reason and "root" not in reason and "daemon" not in reason
    assert f"not {kind} (" in message and "\n" not in message


def test_a_wider_prediction_file_still_gets_its_line_quoted(tmp_path):
    predictions = tmp_path / "0_Parade_2.txt"
    predictions.write_text("img\n2\n1 2 3 4 0.5\n1 2 3\n")
    with pytest.raises(PredictionFormatError) as info:
        read_prediction_file(predictions)
    assert str(info.value) == f"{predictions}, line 4: expected 'x y w h score', got '1 2 3'"


def test_srn_eval_fddb_with_a_password_file_quotes_nothing(tmp_path, capsys):
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    code, lines = run(capsys, "eval", "fddb", "--images", tmp_path, "--annotations", shadow, "--device", "cpu")
    assert (code, lines) == (2, [f"srn eval: error: {shadow}:2: not an FDDB ellipse list (expected the ellipse count)"])


def test_an_annotation_file_still_gets_its_line_quoted(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("img_1\n1\n10 5 0 50 60 1\nimg_2\ntwo\n")
    with pytest.raises(AnnotationError) as info:
        read_fddb_ellipses(labels)
    assert str(info.value) == f"{labels}:5: expected the ellipse count of 'img_2', got 'two'"
