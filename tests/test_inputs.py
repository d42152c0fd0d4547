"""Input expansion (srn.paths.expand_inputs, relative_paths): the one way ``srn detect`` and
``srn anonymize`` turn names, folders and globs into files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from srn.errors import InputPathError, OutputPathError
from srn.paths import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    check_output_dir,
    check_output_file,
    expand_inputs,
    input_roots,
    is_temporary,
    is_video,
    relative_paths,
)


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


def test_a_folder_without_images_is_a_bad_input_not_an_empty_success(tree):
    with pytest.raises(InputPathError) as info:
        expand_inputs(["a", "c"])
    assert str(info.value).startswith("c: holds no file of type .bmp, .gif, .jpeg, .jpg, .png")


def test_temporary_files_of_killed_writers_are_never_inputs(tree):
    # srn.atomic's names: .<target>.<random>.partial<suffix>
    for name in ("a/.1.jpg.k3j4h5g6.partial.jpg", "a/deep/.face_000.jpg.x.partial.jpg", "b/.srn-write-test.abc"):
        (tree / name).write_bytes(b"x")
    assert expand_inputs(["a"]) == [Path("a/1.jpg"), Path("a/2.PNG"), Path("a/deep/3.webp")]
    assert expand_inputs(["a/**/*.jpg"]) == [Path("a/1.jpg")]
    assert is_temporary("a/.1.jpg.k3j4h5g6.partial.jpg") and not is_temporary("a/1.partial.jpg")


def _held(path: Path):
    """An open descriptor holding the writer's lock on ``path``, as ``srn.atomic`` holds its temporaries."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_stale_temporaries_are_removed_when_the_output_is_checked_again(tmp_path):
    # A temporary file is stale when no process holds its lock, whatever its age or its output:
    # a live writer holds its own until the rename.
    out = tmp_path / "faces.jsonl"
    stale = tmp_path / ".faces.jsonl.abcd1234.partial.jsonl"
    other = tmp_path / ".other.json.abcd1234.partial.json"
    live = tmp_path / ".other.json.efgh5678.partial.json"
    for path in (stale, other, live):
        path.write_text("torn")
    fd = _held(live)
    try:
        check_output_file(out)
        assert not stale.exists() and not other.exists() and live.exists()
    finally:
        os.close(fd)

    crops = tmp_path / "crops"
    old, young = crops / "a" / ".face_000.jpg.k.partial.jpg", crops / "b" / ".face_001.jpg.k.partial.jpg"
    for path in (old, young):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fd = _held(young)
    try:
        check_output_dir(crops, input_patterns=[tmp_path / "photos"])
        assert not old.exists() and young.exists()  # the young one is a live writer's (torchrun)
    finally:
        os.close(fd)
    check_output_dir(crops, input_patterns=[tmp_path / "photos"])
    assert not young.exists()  # once its writer is gone


def test_input_roots_are_named_folders_and_the_fixed_part_of_globs(tree):
    assert input_roots(["a", "a/1.jpg", "b/**/*.jpg", "*.jpg"]) == [tree / "a", tree / "b", tree]


@pytest.mark.parametrize("inside", ["a/crops", "a", "a/deep/x"])
def test_an_image_output_folder_inside_the_inputs_is_refused(tree, inside):
    with pytest.raises(OutputPathError) as info:
        check_output_dir(inside, input_patterns=["a", "b/4.jpeg"])
    assert str(info.value) == (f"{inside}: is inside the input folder {tree / 'a'}; a later run over it would read "
                               "these outputs as inputs: choose a folder outside it")
    check_output_dir("out", input_patterns=["a"])  # beside it is fine
    check_output_dir("b/out", input_patterns=["a", "b/4.jpeg"])  # a named file searches no folder


def test_an_output_file_that_is_a_symbolic_link_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "faces.jsonl"
    link.symlink_to(target)
    with pytest.raises(OutputPathError) as info:
        check_output_file(link)
    assert str(info.value).startswith(f"{link}: is a symbolic link; outputs are never written through one")
    assert target.read_text() == "keep me"


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


def test_a_temporary_of_another_writer_stays_while_it_is_held(tmp_path):
    # faces.jsonl's manifest is written beside it, by another process under torchrun: its temporary
    # file (.faces.jsonl.manifest.json.<random>.partial.json) stays while that process writes it.
    theirs = tmp_path / ".faces.jsonl.manifest.json.abcd1234.partial.json"
    mine = tmp_path / ".faces.jsonl.k2j3h4g5.partial.jsonl"
    for path in (theirs, mine):
        path.write_text("x")
    fd = _held(theirs)
    try:
        check_output_file(tmp_path / "faces.jsonl")
        assert theirs.exists() and not mine.exists()
    finally:
        os.close(fd)
