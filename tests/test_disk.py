"""The byte cap on cached files (sdplay/runtime/disk.py), on a temporary folder: oldest first, never a file in use."""

import os
from pathlib import Path

import pytest

from sdplay.runtime.disk import cap_folder, folder_size, parse_size

NOW = 1_000_000.0


def cached(root: Path, name: str, size: int, age_s: float) -> str:
    """A file as Gradio caches one, in a folder of its own, last written `age_s` seconds before NOW."""
    path = root / name / "image.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return str(path)


@pytest.mark.parametrize(
    "text, size",
    [("2GB", 2 * 10**9), ("500 MB", 500 * 10**6), ("1.5G", 1_500_000_000), ("64MiB", 64 * 2**20), ("4096", 4096)],
)
def test_sizes_are_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "two GB", "2XB", "-1GB", "0", "1e9"])
def test_a_bad_size_says_how_to_write_one(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_over_the_cap_the_oldest_files_go_first_until_it_fits(tmp_path):
    files = [cached(tmp_path, f"f{age}", 100, age_s=age) for age in (500, 400, 300, 200, 100)]
    cleaning = cap_folder(tmp_path, 250, now=NOW)
    assert cleaning.bytes_before == 500 and cleaning.bytes_after == 200
    assert cleaning.deleted == files[:3]
    assert [os.path.exists(name) for name in files] == [False, False, False, True, True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f100", "f200"]  # and their emptied folders


def test_under_the_cap_nothing_is_deleted(tmp_path):
    files = [cached(tmp_path, f"f{age}", 100, age_s=age) for age in (300, 200)]
    cleaning = cap_folder(tmp_path, 200, now=NOW)
    assert (cleaning.bytes_before, cleaning.bytes_after, cleaning.deleted) == (200, 200, [])
    assert all(os.path.exists(name) for name in files)


def test_files_in_use_or_just_written_are_kept_even_over_the_cap(tmp_path):
    used = cached(tmp_path, "used", 100, age_s=900)  # the oldest, but a queued job's input
    young = cached(tmp_path, "young", 100, age_s=2)  # a result on its way to a page
    old = cached(tmp_path, "old", 100, age_s=600)
    cleaning = cap_folder(tmp_path, 0, in_use={used}, grace_s=10, now=NOW)
    assert cleaning.deleted == [old] and cleaning.bytes_after == 200
    assert os.path.exists(used) and os.path.exists(young)


def test_links_are_neither_followed_nor_deleted(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "elsewhere"
    root.mkdir()
    mine = cached(root, "mine", 100, age_s=500)
    theirs = cached(outside, "theirs", 100, age_s=900)
    (root / "file-link").symlink_to(theirs)
    (root / "folder-link").symlink_to(outside)
    cleaning = cap_folder(root, 0, now=NOW)
    assert cleaning.deleted == [mine] and cleaning.bytes_before == 100
    assert os.path.exists(theirs) and (root / "file-link").is_symlink() and root.is_dir()


def test_folder_size_counts_the_files_under_a_folder(tmp_path):
    cached(tmp_path, "a", 100, age_s=1)
    cached(tmp_path / "deeper", "b", 250, age_s=1)
    assert folder_size(tmp_path) == 350
