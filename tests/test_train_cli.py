"""The training commands as a new user meets them: user errors are one ``ERROR:`` line on stderr and exit 2 (no
traceback), nonsense numbers are argparse's usage error naming the option, classes without images or without a
train / test case are refused with their counts, and a case holding two labels is a warning."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from synthetic_derm import make_derm7pt

import train.cli as train_cli_module
import train.clip as train_clip
import train.fusion as train_fusion
from skinapp.synthetic import make_skin_photo
from train.cli import UserError, run_main, user_errors, writable_folder
from train.clip_report import datasets_used, describe_datasets
from train.data.text import LesionRecord

REPO = Path(__file__).resolve().parents[1]
FAST = ["--profile", "tiny", "--concepts", "fallback", "--device", "cpu", "--epochs", "1"]


def _manifest(root: Path, rows: list[tuple[str, str]], header: str = "image_path,case_id,label") -> Path:
    """A manifest of tiny photos: one row per (case, label)."""
    lines = [header]
    for i, (case, label) in enumerate(rows):
        Image.fromarray(make_skin_photo(i, size=(32, 40)).pixels).save(root / f"p{i}.png")
        lines.append(f"p{i}.png,{case},{label}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("ERROR: "), err
    return lines[-1]


# ------------------------------------------------------------------------------------------ run_main itself

def test_run_main_turns_user_errors_into_one_line_and_status_2(capsys):
    def refuse(argv):
        raise UserError("the data folder\n  is missing; give --data")

    assert run_main(refuse, []) == 2
    assert capsys.readouterr().err == "ERROR: the data folder is missing; give --data\n"

    def missing(argv):
        open("/nonexistent/labels.csv")  # noqa: SIM115 - the OS's own FileNotFoundError

    assert run_main(missing, []) == 2
    assert _error_line(capsys) == ("ERROR: /nonexistent/labels.csv: No such file or directory; check the path and its "
                                    "permissions.")

    def validated(argv):
        with user_errors():
            raise ValueError("--classes names 'x', which has no images")

    assert run_main(validated, []) == 2
    assert _error_line(capsys) == "ERROR: --classes names 'x', which has no images"
    assert run_main(lambda argv: None, []) == 0


@pytest.mark.parametrize("bug", [KeyError("label"), ValueError("shapes do not match"), TypeError("bad call")])
def test_programming_errors_keep_their_traceback(bug):
    def broken(argv):
        raise bug

    with pytest.raises(type(bug)):
        run_main(broken, [])


# ------------------------------------------------------------------------------------------ train.fusion

def test_fusion_user_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"

    def run(*argv: str) -> str:
        assert run_main(train_fusion.main, [*argv, *FAST, "--out", str(out)]) == 2
        return _error_line(capsys)

    assert run("--data", f"folder:{tmp_path / 'nope'}") == (f"ERROR: Image folder not found: {tmp_path / 'nope'}; "
                                                            "check the path given (--data folder:ROOT).")
    assert run("--data", f"manifest:{tmp_path / 'nope.csv'}") == (f"ERROR: CSV file not found: {tmp_path / 'nope.csv'}"
                                                                  "; check the path given (--data).")
    assert run("--data", f"scin:{tmp_path}").startswith("ERROR: CSV file not found: ")
    (tmp_path / "flat").mkdir()
    Image.fromarray(make_skin_photo(0, size=(32, 40)).pixels).save(tmp_path / "flat" / "a.png")
    assert run("--data", f"folder:{tmp_path / 'flat'}") == (
        f"ERROR: {tmp_path / 'flat'}: no images found in root/<label>/ folders (nothing skipped); put each class's "
        "images in a subfolder named after the class.")
    bad = tmp_path / "bad"
    bad.mkdir()
    csv_path = _manifest(bad, [("c0", "red")], header="path,case,diagnosis")
    line = run("--data", f"manifest:{csv_path}")
    assert line == (f"ERROR: {csv_path}: missing column(s) ['image_path', 'label']; found ['path', 'case', "
                    "'diagnosis']. Name the columns image_path, label in the header row (rename them, or write a CSV "
                    "that has them).")
    assert run("--data", "nonsense") == "ERROR: --data must be scin:PATH, manifest:PATH.csv or folder:PATH; " \
                                        "got 'nonsense'."
    assert not (out / "cache").exists()


def test_fusion_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    csv_path = _manifest(tmp_path, [(f"c{i}", "red" if i % 2 else "pale") for i in range(8)])
    (tmp_path / "taken").write_text("x")
    assert run_main(train_fusion.main, ["--data", f"manifest:{csv_path}", *FAST, "--out", str(tmp_path / "taken")]) == 2
    assert _error_line(capsys) == (f"ERROR: --out {tmp_path / 'taken'} is a file; give a folder (it is created when "
                                   "missing).")


def test_fusion_refuses_a_class_without_images_naming_the_counts(tmp_path, capsys):
    csv_path = _manifest(tmp_path, [(f"c{i}", "red" if i % 2 else "pale") for i in range(8)])
    argv = ["--data", f"manifest:{csv_path}", *FAST, "--out", str(tmp_path / "out"), "--classes", "red,purple,pale"]
    assert run_main(train_fusion.main, argv) == 2
    assert _error_line(capsys) == (
        f"ERROR: class(es) 'purple' have no images in manifest:{csv_path} (images per class: red 4, pale 4); check "
        "the spelling in --classes, leave them out, or add their images.")


def test_fusion_refuses_a_class_without_a_test_case_and_warns_of_mixed_cases(tmp_path, capsys, caplog):
    # patient "pat" has a red and a pale photo (legitimate): a warning, not a refusal; but its only pale photo
    # lands in one part, so the other has no pale case
    rows = [(f"c{i}", "red") for i in range(6)] + [("pat", "red"), ("pat", "pale")]
    csv_path = _manifest(tmp_path, rows)
    caplog.set_level(logging.WARNING)
    argv = ["--data", f"manifest:{csv_path}", *FAST, "--out", str(tmp_path / "out"), "--train-ratio", "0.5"]
    assert run_main(train_fusion.main, argv) == 2
    line = _error_line(capsys)
    assert line.startswith("ERROR: class 'pale' has no case in the ") and "train ratio 0.5, seed 0" in line
    assert "1 cases / 1 images all" in line and line.endswith("or leave the class out.")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("1 of 7 cases have images with different labels") for w in warnings), warnings


def test_a_split_leaving_a_class_out_of_the_test_part_is_refused(tmp_path, capsys):
    rows = [(f"r{i}", "red") for i in range(6)] + [(f"p{i}", "pale") for i in range(2)]
    csv_path = _manifest(tmp_path, rows)
    argv = ["--data", f"manifest:{csv_path}", *FAST, "--out", str(tmp_path / "out"), "--train-ratio", "0.5,0.8"]
    assert run_main(train_fusion.main, argv) == 2
    # ratio 0.5 is fine (1 + 1 pale cases); 0.8 trains on round(1.6) = 2 pale cases, leaving none to test
    assert _error_line(capsys) == (
        "ERROR: class 'pale' has no case in the test split (train ratio 0.8, seed 0; 2 cases / 2 images all, "
        "2 cases / 2 images train, 0 cases / 0 images test); add cases of it, choose another train ratio, or "
        "leave the class out.")


@pytest.mark.parametrize("option, value, words", [
    ("--epochs", "0", "must be at least 1; got 0"), ("--epochs", "-3", "must be at least 1"),
    ("--epochs", "ten", "not a whole number: 'ten'"), ("--lr", "0", "must be a number above 0"),
    ("--lr", "-0.001", "must be a number above 0"), ("--lr", "inf", "must be a number above 0"),
    ("--batch-size", "0", "must be at least 1"), ("--train-ratio", "0.5,1", "train ratio: must lie strictly"),
    ("--train-ratio", "0", "train ratio: must lie strictly between 0 and 1; got 0"),
    ("--train-ratio", "0.5,,0.7", "no blank item"), ("--val-fraction", "1", "must be at least 0 and below 1"),
    ("--val-fraction", "-0.1", "must be at least 0 and below 1"), ("--seeds", "0,one", "seed: not a whole number"),
    ("--seeds", "1.5", "seed: not a whole number"), ("--n-concepts", "0", "must be at least 1"),
    ("--top-k", "-1", "must be at least 1"), ("--variant", "cross_attention,resnet", "variant: unknown 'resnet'"),
])
def test_fusion_numbers_are_checked_by_argparse(option, value, words, capsys):
    _assert_usage_error(train_fusion.parse_args, ["--data", "folder:/x"], option, value, words, capsys)


@pytest.mark.parametrize("option, value, words", [
    ("--epochs", "0", "must be at least 1"), ("--lr", "0", "above 0"), ("--batch-size", "-2", "at least 1"),
    ("--train-fraction", "1", "strictly between 0 and 1"), ("--train-fraction", "0", "strictly between"),
    ("--workers", "-1", "must be 0 or more"), ("--seed", "x", "not a whole number"),
    ("--match-batch-size", "0", "at least 1"),
])
def test_clip_numbers_are_checked_by_argparse(option, value, words, capsys):
    _assert_usage_error(train_clip.parse_args, ["--out", "o"], option, value, words, capsys)


def _assert_usage_error(parse, required: list[str], option: str, value: str, words: str, capsys) -> None:
    """``parse(required + [option, value])`` is argparse's usage error (exit 2) naming the option, with ``words``."""
    with pytest.raises(SystemExit) as exit_:
        parse([*required, option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and words in err


# ------------------------------------------------------------------------------------------ train.clip

def test_clip_user_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    common = ["--profile", "tiny", "--device", "cpu", "--workers", "0", "--epochs", "1"]
    assert run_main(train_clip.main, ["--derm7pt", str(tmp_path / "nope"), "--out", str(out), *common]) == 2
    assert _error_line(capsys) == (f"ERROR: Derm7pt: no meta/meta.csv under {tmp_path / 'nope'} or "
                                   f"{tmp_path / 'nope' / 'release_v0'}")
    assert run_main(train_clip.main, ["--out", str(out), *common]) == 2
    assert _error_line(capsys) == "ERROR: Give at least one data set (--derm7pt and/or --ph2)"
    (tmp_path / "file").write_text("x")
    derm = make_derm7pt(tmp_path / "derm7pt", per_class=4)
    assert run_main(train_clip.main, ["--derm7pt", str(derm.root), "--out", str(tmp_path / "file"), *common]) == 2
    assert _error_line(capsys).startswith(f"ERROR: --out {tmp_path / 'file'} is a file; give a folder")
    meta = derm.root / "release_v0" / "meta" / "meta.csv"  # keep one blue nevus case: none is left to test
    with meta.open(newline="") as f:
        rows = list(csv.DictReader(f))
    blue = [i for i, row in enumerate(rows) if row["diagnosis"] == "blue nevus"]
    with meta.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for i, row in enumerate(rows) if i not in blue[1:])
    assert run_main(train_clip.main, ["--derm7pt", str(derm.root), "--out", str(out), *common]) == 2
    assert _error_line(capsys) == (
        "ERROR: class 'blue nevus' has no case in the test split (train ratio 0.75, seed 0; 1 cases / 1 images all, "
        "1 cases / 1 images train, 0 cases / 0 images test); add cases of it, choose another train ratio, or leave "
        "the class out.")
    assert not out.exists() or not any(out.iterdir())


def test_clip_report_names_the_data_sets_used():
    def record(source: str) -> LesionRecord:
        return LesionRecord(image_path=Path("x.jpg"), case_id="c", source=source, diagnosis="melanoma",
                            label="melanoma", criteria={}, text="melanoma.")

    assert datasets_used([record("ph2"), record("derm7pt"), record("ph2")]) == {"Derm7pt": 1, "PH2": 2}
    assert list(datasets_used([record("ph2")])) == ["PH2"]
    assert describe_datasets({"Derm7pt": 1, "PH2": 2}) == "Derm7pt (1 images) + PH2 (2 images)"


@pytest.mark.parametrize("module", ["train.fusion", "train.clip"])
def test_commands_end_a_user_error_with_one_line_and_status_2(module, tmp_path):
    data = ["--data", f"folder:{tmp_path / 'nope'}"] if module == "train.fusion" else \
        ["--derm7pt", str(tmp_path / "nope")]
    proc = subprocess.run([sys.executable, "-m", module, *data, "--out", str(tmp_path / "out"), "--profile", "tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    what = "Image folder not found" if module == "train.fusion" else "Derm7pt: no meta/meta.csv"
    assert proc.stderr.strip().splitlines()[-1].startswith(f"ERROR: {what}")


# ------------------------------------------------------------------------------------------ writable_folder

def test_out_is_created_with_its_missing_parents(tmp_path):
    out = tmp_path / "runs" / "2026" / "fusion"
    assert writable_folder(str(out)) == out
    assert out.is_dir()
    assert writable_folder(out) == out, "an existing folder is fine"


def test_out_that_cannot_be_created_says_why(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"  # below a file: the OS refuses with "Not a directory"

    def main(argv):
        writable_folder(out)

    assert run_main(main, []) == 2
    assert _error_line(capsys) == (f"ERROR: --out {out} cannot be created (Not a directory); give a folder you can "
                                   "write to.")


@pytest.mark.parametrize("mode, refused", [(0o500, True), (0o600, True), (0o300, False), (0o700, False)])
def test_out_without_write_or_search_permission_is_refused(tmp_path, monkeypatch, capsys, mode, refused):
    """Files can be written in a folder only with both its write (w) and search (x) permission. root bypasses
    permissions, so there the owner's bits are checked as the OS checks them for a user who owns the folder."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(mode)
    if os.geteuid() == 0:
        monkeypatch.setattr(train_cli_module.os, "access",
                            lambda path, wanted: (os.stat(path).st_mode >> 6) & wanted == wanted)
    try:
        if refused:
            assert run_main(lambda argv: writable_folder(out, "--cache"), []) == 2
            assert _error_line(capsys) == (f"ERROR: --cache {out} is not writable (Permission denied); give a "
                                           "folder you can write to.")
        else:
            assert writable_folder(out) == out
    finally:
        out.chmod(0o700)


def test_an_error_without_words_is_named_by_its_kind(capsys):
    def missing(argv):
        raise FileNotFoundError()

    assert run_main(missing, []) == 2
    assert _error_line(capsys) == "ERROR: FileNotFoundError"
