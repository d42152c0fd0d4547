"""Every number a command line takes is checked when it is parsed: finite, in its range, one line,
exit 2, before anything runs. The walk below covers every option of every command, so a new option
with a bare ``type=float`` (which takes ``nan`` and ``inf``) fails here."""

from __future__ import annotations

import argparse

import pytest

from srn.cli import COMMANDS, build_parser, main

# Integer options where any integer is a valid value (a seed).
ANY_INTEGER = {("imbalance", "--seed")}
NOT_FINITE = ["nan", "inf", "-inf", "1e400", "NaN"]


def options() -> list[tuple[str, argparse.Action]]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found = []
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and action.type is not None:
                found.append((name, action))
    return found


def test_every_command_is_walked():
    assert {name for name, _ in options()} >= {"detect", "anonymize", "eval", "bench"}
    assert set(COMMANDS) >= {"detect", "anonymize", "eval", "train", "export", "bench", "imbalance", "convert"}


def test_no_option_takes_a_bare_float_or_an_unchecked_integer():
    bare = [(name, action.option_strings[-1], action.type.__name__) for name, action in options()
            if action.type is float or (action.type is int and (name, action.option_strings[-1]) not in ANY_INTEGER)]
    assert bare == []


@pytest.mark.parametrize("value", NOT_FINITE)
def test_every_number_option_refuses_what_is_not_finite(value, capsys):
    checked = [(name, "/".join(action.option_strings)) for name, action in options()
               if getattr(action.type, "__name__", "") in ("float_in",) or getattr(action.type, "__name__", "").startswith("int_at_least")]
    assert len(checked) >= 10
    for name, option in checked:
        with pytest.raises(SystemExit) as info:
            main([name, option.split("/")[-1], value])
        err = capsys.readouterr().err
        assert info.value.code == 2, (name, option)
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"srn {name}: error: argument {option}"), (name, option, err)


@pytest.mark.parametrize("command, option, value, message", [
    ("anonymize", "--mask-scale", "1e20", "must be in (0, 10], got 1e20"),
    ("anonymize", "--mask-scale", "0", "must be in (0, 10], got 0"),
    ("eval", "--tta-max-size", "0", "must be at least 32, got 0"),
    ("eval", "--tta-max-size", "2.5", "expected an integer, got '2.5'"),
    ("eval", "--height-scale", "nan", "must be in (0, 10], got nan"),
    ("eval", "--height-scale", "inf", "must be in (0, 10], got inf"),
    ("eval", "--height-scale", "-1.2", "must be in (0, 10], got -1.2"),
    ("eval", "--height-scale", "0", "must be in (0, 10], got 0"),
    ("detect", "--crop-margin", "nan", "must be a finite number >= 0, got nan"),
    ("detect", "--score-thresh", "1.5", "must be in [0, 1], got 1.5"),
])
def test_the_examples_of_the_issue(command, option, value, message, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "fddb" if command == "eval" else "x", option, value])
    assert info.value.code == 2
    named = "-t/--score-thresh" if option == "--score-thresh" else option  # argparse names every spelling
    assert capsys.readouterr().err == f"srn {command}: error: argument {named}: {message}\n"


def test_the_library_refuses_what_the_options_refuse():
    import numpy as np
    import torch

    from srn.errors import ConfigError
    from srn.evaluation.fddb import evaluate_fddb, stretch_rects
    from srn.media.anonymize import anonymize

    for scale in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(ConfigError, match="the height scale must be a finite number > 0"):
            evaluate_fddb({}, {"a": np.zeros((1, 5))}, height_scale=scale)
        with pytest.raises(ConfigError):
            stretch_rects(np.zeros((1, 5)), scale)
    # A huge but finite mask scale hides the whole image: never an overflow that hides nothing.
    image = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    for scale in (1e20, 1e300):
        hidden = anonymize(image, torch.tensor([[20.0, 10.0, 30.0, 20.0]]), method="solid", mask_scale=scale)
        assert int(hidden.max()) == 0
