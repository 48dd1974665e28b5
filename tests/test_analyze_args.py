"""``python -m skinapp.analyze``'s arguments refused in words before any model loads: a missing or unreadable
--phrases file, an empty --prompts, a CSV list whose photo column names no existing file."""

from __future__ import annotations

import pytest
from PIL import Image

from skinapp import analyze
from skinapp.synthetic import make_skin_photo


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(make_skin_photo(seed=1).pixels).save(folder / "p1.png")
    return folder


def _refused(capsys, tmp_path, *args) -> str:
    """main's exit status must be 2 with nothing written; returns stderr."""
    assert analyze.main([*args, "--out", str(tmp_path / "out"), "--profile", "tiny", "--device", "cpu"]) == 2
    assert not (tmp_path / "out").exists()
    return capsys.readouterr().err


def test_a_missing_phrases_file_is_named_like_the_other_refusals(photos, tmp_path, capsys):
    """Found by a new user: it printed "ERROR: [Errno 2] No such file or directory: '/tmp/x.txt'"."""
    missing = tmp_path / "x.txt"
    assert _refused(capsys, tmp_path, str(photos), "--phrases", str(missing)) == (
        f"ERROR: --phrases {missing}: file not found\n")


def test_a_phrases_folder_or_an_empty_phrases_file_is_named(photos, tmp_path, capsys):
    assert _refused(capsys, tmp_path, str(photos), "--phrases", str(photos)) == (
        f"ERROR: --phrases {photos}: cannot be read (Is a directory)\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert _refused(capsys, tmp_path, str(photos), "--phrases", str(empty)) == (
        f"ERROR: --phrases {empty}: Type at least one phrase (one per line), e.g. 'blue-whitish veil'.\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("r\xe9seau pigmentaire".encode("latin-1"))
    assert _refused(capsys, tmp_path, str(photos), "--phrases", str(latin)) == (
        f"ERROR: --phrases {latin}: not UTF-8 text\n")
