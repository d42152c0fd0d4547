"""Input expansion (srn.paths.expand_inputs, relative_paths): the one way ``srn detect`` and
``srn anonymize`` turn names, folders and globs into files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from srn.errors import InputPathError
from srn.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand_inputs, is_video, relative_paths


@pytest.fixture
def tree(tmp_path, monkeypatch):
    for name in ("a/1.jpg", "a/2.PNG", "a/notes.txt", "a/deep/3.webp", "b/clip.mp4", "b/4.jpeg", "c/readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "folder.jpg").mkdir()  # a folder is never an input file, whatever its name
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folders_are_searched_recursively_for_the_suffixes_asked(tree):
    assert expand_inputs(["a", "b"]) == [Path(p) for p in ("a/1.jpg", "a/2.PNG", "a/deep/3.webp", "b/4.jpeg")]
    assert expand_inputs(["b"], IMAGE_SUFFIXES | VIDEO_SUFFIXES) == [Path("b/4.jpeg"), Path("b/clip.mp4")]


def test_named_files_are_kept_whatever_they_are_and_each_input_comes_once(tree):
    assert expand_inputs(["a/notes.txt", "a/1.jpg", "./a/../a/1.jpg", "a"]) == [
        Path("a/notes.txt"), Path("a/1.jpg"), Path("a/2.PNG"), Path("a/deep/3.webp"),
    ]
    os.symlink("nowhere.jpg", "broken.jpg")
    assert expand_inputs(["broken.jpg"]) == [Path("broken.jpg")]  # to fail on its own line when read
    assert expand_inputs(["c"]) == [Path("c")]  # a folder without images, likewise


def test_globs_match_files_across_folders(tree):
    assert expand_inputs(["**/*.jp*g"]) == [Path("a/1.jpg"), Path("b/4.jpeg")]


def test_missing_inputs_are_path_errors_that_speak_of_paths(tree):
    with pytest.raises(InputPathError) as info:
        expand_inputs(["a", "nothing.jpg"])
    assert str(info.value) == "nothing.jpg: no such file or folder"
    with pytest.raises(InputPathError) as info:
        expand_inputs(["zz*/*.jpg"])
    assert str(info.value) == "zz*/*.jpg: no file matches"


def test_relative_paths_mirror_the_tree_below_the_common_folder(tree):
    files = expand_inputs(["a", "b/4.jpeg"])
    assert relative_paths(["a", "b/4.jpeg"], files) == [
        Path("a/1.jpg"), Path("a/2.PNG"), Path("a/deep/3.webp"), Path("b/4.jpeg"),
    ]
    assert relative_paths(["a"], expand_inputs(["a"])) == [Path("1.jpg"), Path("2.PNG"), Path("deep/3.webp")]


def test_videos_are_known_by_their_suffix():
    assert is_video("clip.MP4") and is_video(Path("x/y.webm")) and not is_video("photo.jpg")
