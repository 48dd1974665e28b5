"""``python -m skinapp.analyze``'s arguments refused in words before any model loads: a missing or unreadable
--phrases file, an empty --prompts, a CSV list whose photo column names no existing file."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from skinapp import analyze
from skinapp.batch import collect_photos
from skinapp.synthetic import make_skin_photo

RECOGNISED = "image, image_path, path, photo, file"


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


@pytest.mark.parametrize("value, says", [
    ("", "argument --prompts: empty: give concept prompts, e.g. \"lesion . arm\", or leave --prompts out for the "
         "app's default prompts"),
    ("   ", "argument --prompts: empty: give concept prompts"),
    (" . , ", "argument --prompts: No prompt phrases were given (e.g. 'lesion', 'leg')."),
    ("123", "argument --prompts: '123' is not a prompt: use words, e.g. 'lesion' or 'leg'."),
])
def test_an_empty_or_wordless_prompts_is_a_usage_error_not_the_default(value, says, capsys):
    """Found by a new user: ``--prompts ""`` silently ran with the default prompts."""
    with pytest.raises(SystemExit) as done:
        analyze.parse_args(["p.jpg", "--out", "o", "--prompts", value])
    assert done.value.code == 2 and says in " ".join(capsys.readouterr().err.split())


def test_prompts_given_are_kept_as_typed():
    assert analyze.parse_args(["p.jpg", "--out", "o", "--prompts", "Lesion . arm"]).prompts == "Lesion . arm"
    assert analyze.parse_args(["p.jpg", "--out", "o"]).prompts is None


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        analyze.parse_args(["--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_says_how_to_get_the_default_prompts(capsys):
    assert ("concept prompts, e.g. \"lesion . arm . leg\"; leave it out for the app's default prompts "
            "(lesion . ") in _help(capsys)
    assert "an empty value is refused" in _help(capsys)


def test_help_says_which_csv_column_is_read(capsys):
    assert ("CSV lists (first row: the column names; the photo path is read from the first column named "
            f"{RECOGNISED}, else from the first column; paths relative to the CSV's folder)") in _help(capsys)


def test_a_csv_whose_photo_column_names_no_existing_file_is_refused_naming_the_column(photos, tmp_path, capsys):
    """Found by a new user: a CSV without a recognised column silently used its first column, and every row then
    failed as a missing photo."""
    listing = tmp_path / "cases.csv"
    listing.write_text("case_id,filename\n17,p1.png\n18,p2.png\n")
    message = (f"{listing}: none of its 2 rows names an existing file in column 'case_id' (paths are relative to the "
               f"CSV's folder); the photo column is the first column named {RECOGNISED}, else the first column.")
    with pytest.raises(ValueError) as refused:
        collect_photos([listing])
    assert str(refused.value) == message
    assert _refused(capsys, tmp_path, str(listing)) == f"ERROR: {message}\n"


def test_a_csv_with_one_existing_photo_among_missing_ones_is_kept(photos, tmp_path):
    """Some missing rows are the photos' fault (errors.csv lists them), not the column's."""
    listing = tmp_path / "cases.csv"
    rel = os.path.relpath(photos / "p1.png", tmp_path)
    listing.write_text(f"name,label\n{rel},x\ngone.png,y\n")
    assert collect_photos([listing]) == [tmp_path / "gone.png", photos / "p1.png"]
    header_only = tmp_path / "none.csv"
    header_only.write_text("image,label\n")
    assert collect_photos([header_only]) == []
