"""Image-text pairs for CLIP fine-tuning: lesion records, the merged class set, criteria -> text.

Both readers (:mod:`train.data.derm7pt`, :mod:`train.data.ph2`) turn their rows into
:class:`LesionRecord` s whose ``criteria`` use ONE vocabulary (keys of :data:`CRITERIA_PHRASES`),
so the text builder does not care where a record came from.

Text: ``"<class>. <phrase>, <phrase>, ..."``, e.g. ``"atypical nevus. asymmetry in one axis, atypical
pigment network, irregular dots and globules, light brown and dark brown colour"``. Absent (or
normal: symmetric, no colours) criteria are OMITTED rather than written as "no X": CLIP's text
encoder handles negation poorly, and omitting keeps texts short. Augmentation reorders the phrases.
That is OUR variant (``--text ours``). The MedGrad paper's text (``--text paper``, the default,
:func:`build_paper_text`) keeps every criterion, absent and symmetric ones included, in the data sets'
own words: ``"melanoma, absent streaks, atypical pigment network, fully symmetric, light brown color"``.

Class merge (``LABEL_SCHEMES``, configs as data; the key is chosen with ``--labels``):

* ``"merged"`` (default, 17 classes as in the MedGrad paper): Derm7pt's six melanoma diagnoses
  (melanoma, in situ, < 0.76 mm, 0.76 to 1.5 mm, > 1.5 mm, metastasis) become "melanoma"; the other
  14 Derm7pt diagnoses stay; PH2 adds "common nevus" and "atypical nevus" (its melanomas join
  "melanoma"). 14 + 1 + 2 = 17.
* ``"subtypes"``: every Derm7pt diagnosis kept as is (20) plus PH2's common / atypical nevus; PH2
  melanomas map to Derm7pt's plain "melanoma". 22 classes.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Derm7pt's 20 diagnoses, spelled as in ``meta.csv``.
DERM7PT_DIAGNOSES: tuple[str, ...] = (
    "basal cell carcinoma", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
    "dermatofibroma", "lentigo", "melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)",
    "melanoma (0.76 to 1.5 mm)", "melanoma (more than 1.5 mm)", "melanoma metastasis", "melanosis",
    "miscellaneous", "recurrent nevus", "reed or spitz nevus", "seborrheic keratosis", "vascular lesion",
)
#: PH2's clinical diagnoses by code.
PH2_DIAGNOSES: dict[str, str] = {"0": "common nevus", "1": "atypical nevus", "2": "melanoma"}

_MELANOMAS = tuple(d for d in DERM7PT_DIAGNOSES if d.startswith("melanoma"))


def _scheme(merge_melanomas: bool) -> dict[str, str]:
    raw = list(DERM7PT_DIAGNOSES) + [d for d in PH2_DIAGNOSES.values() if d not in DERM7PT_DIAGNOSES]
    return {d: ("melanoma" if merge_melanomas and d in _MELANOMAS else d) for d in raw}


#: Label schemes: raw diagnosis (either data set) -> class name. See the module docstring.
LABEL_SCHEMES: dict[str, dict[str, str]] = {"merged": _scheme(True), "subtypes": _scheme(False)}


def class_names(scheme: str = "merged") -> list[str]:
    """All class names of a label scheme, sorted."""
    return sorted(set(_label_map(scheme).values()))


def _label_map(scheme: str) -> dict[str, str]:
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"Unknown label scheme {scheme!r}; choose from {sorted(LABEL_SCHEMES)}")
    return LABEL_SCHEMES[scheme]


def map_diagnosis(diagnosis: str, scheme: str = "merged") -> str:
    """Raw diagnosis -> class name under ``scheme``; ValueError when the diagnosis is unknown."""
    mapping = _label_map(scheme)
    if diagnosis not in mapping:
        raise ValueError(f"unknown diagnosis {diagnosis!r}")
    return mapping[diagnosis]


#: Criterion key -> {value: phrase}. Values missing here (e.g. "absent") give no phrase.
CRITERIA_PHRASES: dict[str, dict[str, str]] = {
    "asymmetry": {"one axis": "asymmetry in one axis", "two axes": "asymmetry in two axes"},
    "pigment_network": {"typical": "typical pigment network", "atypical": "atypical pigment network"},
    "streaks": {"regular": "regular streaks", "irregular": "irregular streaks", "present": "streaks"},
    "pigmentation": {
        "diffuse regular": "diffuse regular pigmentation", "localized regular": "localized regular pigmentation",
        "diffuse irregular": "diffuse irregular pigmentation",
        "localized irregular": "localized irregular pigmentation",
    },
    "regression_structures": {
        "blue areas": "regression structures with blue areas", "white areas": "regression structures with white areas",
        "combinations": "regression structures with blue and white areas", "present": "regression structures",
    },
    "dots_and_globules": {"regular": "regular dots and globules", "irregular": "irregular dots and globules"},
    "blue_whitish_veil": {"present": "blue-whitish veil"},
    "vascular_structures": {
        "arborizing": "arborizing vessels", "comma": "comma vessels", "hairpin": "hairpin vessels",
        "within regression": "vessels within regression", "wreath": "wreath vessels", "dotted": "dotted vessels",
        "linear irregular": "linear irregular vessels",
    },
}
#: Colour criterion: a tuple of colour names, written "light brown and dark brown colour".
COLOURS_KEY = "colours"


@dataclass(frozen=True)
class LesionRecord:
    """One image-text pair.

    Attributes:
        image_path: the image file (resolved on disk).
        case_id: unique across data sets ("derm7pt:<id>" / "ph2:<name>"); splits are by case.
        source: "derm7pt" or "ph2".
        diagnosis: the raw diagnosis as the data set spells it.
        label: the class name under the reader's label scheme.
        criteria: criterion key -> value (keys of CRITERIA_PHRASES; "colours" -> tuple of names).
        text: the canonical description (phrases in canonical order).
        extra: anything else worth keeping (official split, histology, ...).
    """

    image_path: Path
    case_id: str
    source: str
    diagnosis: str
    label: str
    criteria: dict[str, Any]
    text: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReadResult:
    """Records read from one data set, plus the skipped rows counted by reason."""

    records: list[LesionRecord]
    skipped: Counter = field(default_factory=Counter)

    def log_summary(self, name: str) -> None:
        if self.skipped:
            detail = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            log.warning("%s: kept %d records, skipped %d (%s)", name, len(self.records),
                        sum(self.skipped.values()), detail)
        else:
            log.info("%s: kept %d records, skipped none", name, len(self.records))


def criteria_phrases(criteria: dict[str, Any]) -> list[str]:
    """Criteria -> phrases in canonical order; unknown keys raise, absent values give none."""
    phrases = []
    for key, value in criteria.items():
        if key == COLOURS_KEY:
            colours = list(value)
            if colours:
                joined = colours[0] if len(colours) == 1 else ", ".join(colours[:-1]) + " and " + colours[-1]
                phrases.append(f"{joined} colour")
            continue
        if key not in CRITERIA_PHRASES:
            raise ValueError(f"unknown criterion {key!r}")
        phrase = CRITERIA_PHRASES[key].get(value)
        if phrase:
            phrases.append(phrase)
    return phrases


def build_text(label: str, criteria: dict[str, Any], rng: random.Random | None = None) -> str:
    """``"<label>. <phrases>"``; with ``rng`` the phrases are shuffled (text augmentation)."""
    phrases = criteria_phrases(criteria)
    if rng is not None:
        rng.shuffle(phrases)
    return f"{label}. {', '.join(phrases)}" if phrases else f"{label}."


def check_value(key: str, value: str, allowed: Iterable[str]) -> str:
    """Return ``value`` when allowed, else raise a ValueError naming the column."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {list(allowed)}")
    return value


def resolve_path(base: Path, relative: str) -> Path | None:
    """``base / relative``; when missing, match the components case-insensitively. None when not found."""
    exact = base / relative
    if exact.is_file():
        return exact
    return _resolve_parts(base, Path(relative.replace("\\", "/")).parts)


def _resolve_parts(current: Path, parts: tuple[str, ...]) -> Path | None:
    if not parts:
        return current if current.is_file() else None
    if not current.is_dir():
        return None
    wanted = parts[0].lower()
    for candidate in sorted(current.iterdir()):  # several names may differ only by case: try each
        if candidate.name.lower() == wanted:
            found = _resolve_parts(candidate, parts[1:])
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------ the paper's text

#: The paper's phrase per criterion value (Kamal & Oates: "diagnosis plus all criteria, duplicates removed,
#: special characters stripped"; its examples: "absent streaks", "fully symmetric", "symmetry in 1 axis",
#: "light brown color"). Derm7pt-style columns read "<value> <criterion>"; PH2's asymmetry uses PH2's legend
#: ("Fully Symmetric", "Symetric in 1 axis", "Fully Asymmetric"); colours read "<colour> color" (PH2's legend
#: spelling "blue-gray").
PAPER_CRITERION_NAMES: dict[str, str] = {
    "pigment_network": "pigment network", "streaks": "streaks", "pigmentation": "pigmentation",
    "regression_structures": "regression structures", "dots_and_globules": "dots and globules",
    "blue_whitish_veil": "blue whitish veil", "vascular_structures": "vascular structures",
}
PAPER_ASYMMETRY: dict[str, str] = {"none": "fully symmetric", "one axis": "symmetry in 1 axis",
                                   "two axes": "fully asymmetric"}
PAPER_COLOUR_SPELLING: dict[str, str] = {"blue-grey": "blue-gray"}


def strip_special(text: str) -> str:
    """Lower case; characters other than letters, digits and spaces become spaces (a decimal point between
    digits is kept: "0.76"); runs of spaces collapse. ``"Melanoma (in situ)"`` -> ``"melanoma in situ"``."""
    import re

    text = re.sub(r"(?<=\d)\.(?=\d)", "\0", text.lower())
    text = re.sub(r"[^a-z0-9\0 ]+", " ", text).replace("\0", ".")
    return " ".join(text.split())


def paper_phrases(criteria: dict[str, Any]) -> list[str]:
    """Every criterion as the paper writes it (absent / symmetric ones included), in canonical order, duplicates
    removed, special characters stripped. Unknown keys raise."""
    phrases: list[str] = []
    for key, value in criteria.items():
        if key == COLOURS_KEY:
            phrases += [f"{PAPER_COLOUR_SPELLING.get(c, c)} color" for c in value]
        elif key == "asymmetry":
            phrases.append(PAPER_ASYMMETRY.get(value, f"{value} asymmetry"))
        elif key in PAPER_CRITERION_NAMES:
            phrases.append(f"{value} {PAPER_CRITERION_NAMES[key]}")
        else:
            raise ValueError(f"unknown criterion {key!r}")
    return list(dict.fromkeys(p for p in (strip_special(p) for p in phrases) if p))


def build_paper_text(label: str, criteria: dict[str, Any], rng: random.Random | None = None) -> str:
    """``"<diagnosis>, <phrase>, <phrase>, ..."`` as the MedGrad paper builds it; with ``rng`` the criteria
    phrases are shuffled (its text augmentation), the diagnosis stays first."""
    phrases = paper_phrases(criteria)
    if rng is not None:
        rng.shuffle(phrases)
    return ", ".join([strip_special(label), *phrases])


#: ``--text`` choices: the paper's text builder and ours.
TEXT_BUILDERS = {"paper": build_paper_text, "ours": build_text}
