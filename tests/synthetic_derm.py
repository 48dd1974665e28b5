"""Tiny synthetic copies of Derm7pt and PH2 in their EXACT official layouts, for the reader/CLIP tests.

Images are drawn with :func:`skinapp.synthetic.make_skin_photo` and the lesion is painted in a
colour fixed per diagnosis, so classes are visually separable. Criteria are drawn at random from the
official value sets. Generators plant bad rows on request and return what they planted, so tests can
compare the readers' skip counts with an independent account.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from skinapp.synthetic import make_skin_photo

#: Lesion colour (RGB) per raw diagnosis; diagnoses merged into one class share a colour.
DIAGNOSIS_COLOURS: dict[str, tuple[int, int, int]] = {
    "melanoma": (45, 25, 15), "melanoma (in situ)": (45, 25, 15), "vascular lesion": (200, 20, 40),
    "blue nevus": (40, 70, 200), "common nevus": (240, 230, 120), "atypical nevus": (40, 170, 60),
}
DERM7PT_HEADER = [
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm", "case_id",
    "notes",
]
_DERM7PT_VALUES = {
    "pigment_network": ["absent", "typical", "atypical"],
    "streaks": ["absent", "regular", "irregular"],
    "pigmentation": ["absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"],
    "regression_structures": ["absent", "blue areas", "white areas", "combinations"],
    "dots_and_globules": ["absent", "regular", "irregular"],
    "blue_whitish_veil": ["absent", "present"],
    "vascular_structures": ["absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                            "linear irregular"],
}
#: Image folder per diagnosis, mixed case as in the release (e.g. NEL/Nel026.jpg).
_DERM7PT_DIRS = {"melanoma": "Fgl", "melanoma (in situ)": "NEL", "vascular lesion": "Aal", "blue nevus": "Nbl"}
PH2_CODES = {"common nevus": "0", "atypical nevus": "1", "melanoma": "2"}


@dataclass
class SyntheticSet:
    """What a generator wrote: its root, the rows a reader should keep, and the planted bad rows."""

    root: Path
    kept: list[dict] = field(default_factory=list)
    planted: dict[str, int] = field(default_factory=dict)


def lesion_image(seed: int, diagnosis: str, size: int = 96) -> np.ndarray:
    """A lesion-centred photo [size, size, 3] uint8 whose lesion colour encodes ``diagnosis``."""
    photo = make_skin_photo(seed, size=(size, size), lesion_colour="pale", distractors=0, lesion_radius=0.3 * size)
    pixels = photo.pixels.astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 12, pixels.shape)
    colour = np.array(DIAGNOSIS_COLOURS[diagnosis], np.float64)
    pixels[photo.lesion_mask] = (colour + noise)[photo.lesion_mask]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _seven_point(criteria: dict[str, str]) -> int:
    major = [criteria["pigment_network"] == "atypical", criteria["blue_whitish_veil"] == "present",
             criteria["vascular_structures"] not in ("absent", "arborizing", "comma", "hairpin", "wreath")]
    minor = [criteria["streaks"] == "irregular", criteria["dots_and_globules"] == "irregular",
             "irregular" in criteria["pigmentation"], criteria["regression_structures"] != "absent"]
    return 2 * sum(major) + sum(minor)


def make_derm7pt(root: str | Path, per_class: int = 3, seed: int = 0, bad_rows: bool = False,
                 diagnoses: tuple[str, ...] = ("melanoma", "melanoma (in situ)", "vascular lesion", "blue nevus"),
                 size: int = 96) -> SyntheticSet:
    """Write ``root/release_v0`` (meta/meta.csv, meta/*_indexes.csv, images/<dir>/<file>).

    Every third image is stored on disk with a different case than meta.csv spells it. With
    ``bad_rows``, three more rows are written: an unknown diagnosis, a bad criterion value, and a
    case whose dermoscopic image is missing.
    """
    rng = random.Random(seed)
    release = Path(root) / "release_v0"
    (release / "meta").mkdir(parents=True, exist_ok=True)
    out = SyntheticSet(root=Path(root))
    rows: list[dict] = []
    for diagnosis in diagnoses:
        folder = _DERM7PT_DIRS[diagnosis]
        for i in range(per_class):
            n = len(rows) + 1
            criteria = {k: rng.choice(v) for k, v in _DERM7PT_VALUES.items()}
            stem = f"{folder.capitalize()}{n:03d}"
            clinic = f"{folder}/{stem}.jpg"
            derm = f"{folder}/{stem.lower()}_d.JPG" if i % 2 else f"{folder}/{stem}d.jpg"
            on_disk = derm.upper() if n % 3 == 0 else derm  # mixed case: meta.csv and disk disagree
            for rel, img_seed in ((clinic, 1000 + n), (on_disk, n)):
                path = release / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(lesion_image(seed * 10_000 + img_seed, diagnosis, size)).save(path, format="JPEG",
                                                                                            quality=92)
            row = {"case_num": n, "diagnosis": diagnosis, "seven_point_score": _seven_point(criteria), **criteria,
                   "level_of_diagnostic_difficulty": "low", "elevation": "flat", "location": "back",
                   "sex": rng.choice(["female", "male"]), "management": "excision", "clinic": clinic, "derm": derm,
                   "case_id": f"case_{n:04d}", "notes": ""}
            rows.append(row)
            out.kept.append(row)
    if bad_rows:
        base = dict(rows[0], notes="planted bad row")
        rows.append(dict(base, case_num=len(rows) + 1, case_id="bad_dx", diagnosis="not a diagnosis"))
        rows.append(dict(base, case_num=len(rows) + 1, case_id="bad_value", streaks="wavy"))
        rows.append(dict(base, case_num=len(rows) + 1, case_id="no_image", derm="Fgl/Missing001.jpg"))
        out.planted = {"bad row": 2, "missing derm image": 1}
    with open(release / "meta" / "meta.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=DERM7PT_HEADER)
        writer.writeheader()
        writer.writerows(rows)
    order = list(range(len(rows)))
    rng.shuffle(order)
    cut1, cut2 = len(order) * 4 // 10, len(order) * 6 // 10
    for split, idx in (("train", order[:cut1]), ("valid", order[cut1:cut2]), ("test", order[cut2:])):
        with open(release / "meta" / f"{split}_indexes.csv", "w", newline="") as f:
            f.write("indexes\n" + "".join(f"{i}\n" for i in sorted(idx)))
    return out


def _ph2_row(cells: list[str]) -> str:
    """Format one PH2 row: ``||`` between groups, ``|`` inside the criteria group, space padding."""
    name, histo, clinical, *criteria, colours = cells
    crit = "|".join(f" {c:>4} " for c in criteria)
    return f"|| {name:^8} || {histo:^22} || {clinical:^6} ||{crit}|| {colours:^10} ||"


def make_ph2(root: str | Path, per_class: int = 3, seed: int = 0, bad_rows: bool = False,
             diagnoses: tuple[str, ...] = ("common nevus", "atypical nevus", "melanoma"),
             size: int = 96) -> SyntheticSet:
    """Write ``root/PH2Dataset`` (PH2_dataset.txt with CRLF, header, padding, blank histology, legend; BMPs).

    With ``bad_rows``, three more rows: an unknown clinical code, a short row, and an image not on disk.
    """
    rng = random.Random(seed + 1)
    folder = Path(root) / "PH2Dataset"
    folder.mkdir(parents=True, exist_ok=True)
    out = SyntheticSet(root=Path(root))
    header = ("||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry | Pigment Network | "
              "Dots/Globules | Streaks | Regression Areas | Blue-Whitish Veil || Colors ||")
    lines = [header]
    n = 1
    for diagnosis in diagnoses:
        for _ in range(per_class):
            name = f"IMD{n:03d}"
            criteria = [rng.choice("012"), rng.choice(["T", "AT"]), rng.choice(["A", "T", "AT"]),
                        rng.choice("AP"), rng.choice("AP"), rng.choice("AP")]
            colours = " ".join(sorted(rng.sample("123456", rng.randint(1, 3))))
            histology = "" if n % 2 else rng.choice(["Melanoma", "Dysplastic Nevus", "Junctional Nevus"])
            cells = [name, histology, PH2_CODES[diagnosis], *criteria, colours]
            lines.append(_ph2_row(cells))
            image = folder / "PH2 Dataset images" / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lesion_image(seed * 10_000 + 500 + n, diagnosis, size)).save(image, format="BMP")
            lesion = folder / "PH2 Dataset images" / name / f"{name}_lesion" / f"{name}_lesion.bmp"
            lesion.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((size, size), np.uint8)).save(lesion, format="BMP")
            out.kept.append({"name": name, "diagnosis": diagnosis, "cells": cells})
            n += 1
    if bad_rows:
        lines.append(_ph2_row([f"IMD{n:03d}", "", "7", "0", "T", "A", "A", "A", "A", "3"]))
        lines.append(f"|| IMD{n + 1:03d} ||   ||  1 ||  0 |  T |  A ||  3  ||")
        lines.append(_ph2_row([f"IMD{n + 2:03d}", "", "1", "1", "AT", "T", "P", "A", "A", "3 4"]))
        out.planted = {"bad row": 2, "missing image": 1}
    legend = ["", "Legend:", "Clinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma",
              "Asymmetry: 0 - Fully Symmetric; 1 - Symetric in 1 axe; 2 - Fully Asymmetric",
              "Pigment Network, Dots/Globules: T - Typical; AT - Atypical; A - Absent",
              "Streaks, Regression Areas, Blue-Whitish Veil: A - Absent; P - Present",
              "Colors: 1 - White; 2 - Red; 3 - Light-Brown; 4 - Dark-Brown; 5 - Blue-Gray; 6 - Black"]
    (folder / "PH2_dataset.txt").write_bytes(("\r\n".join(lines + legend) + "\r\n").encode("utf-8"))
    return out
