"""Write small SCIN copies in the official schema (file names, 57 + 17 columns, value formats) for tests.

The caller describes each case by its ``weighted_skin_condition_label`` and how many images it has;
the returned :class:`SyntheticScin` records, per case, what the paper's label rule must decide, as
designed (not recomputed by the loader's code).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RACE = ["american_indian_or_alaska_native", "asian", "black_or_african_american", "hispanic_latino_or_latinx",
        "middle_eastern_or_north_african", "native_hawaiian_or_pacific_islander", "white", "other_race",
        "prefer_not_to_answer"]
TEXTURES = ["raised_or_bumpy", "flat", "rough_or_flaky", "fluid_filled"]
BODY_PARTS = ["head_or_neck", "arm", "palm", "back_of_hand", "torso_front", "torso_back", "genitalia_or_groin",
              "buttocks", "leg", "foot_top_or_side", "foot_sole", "other"]
CONDITION_SYMPTOMS = ["bothersome_appearance", "bleeding", "increasing_size", "darkening", "itching", "burning",
                      "pain", "no_relevant_experience"]
OTHER_SYMPTOMS = ["fever", "chills", "fatigue", "joint_pain", "mouth_sores", "shortness_of_breath",
                  "no_relevant_symptoms"]

CASES_COLUMNS = (
    ["case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type"]
    + [f"race_ethnicity_{r}" for r in RACE] + [f"textures_{t}" for t in TEXTURES]
    + [f"body_parts_{b}" for b in BODY_PARTS] + [f"condition_symptoms_{s}" for s in CONDITION_SYMPTOMS]
    + [f"other_symptoms_{s}" for s in OTHER_SYMPTOMS]
    + ["related_category", "condition_duration", "image_1_path", "image_2_path", "image_3_path",
       "image_1_shot_type", "image_2_shot_type", "image_3_shot_type", "combined_race",
       "race_ethnicity_two_or_more_after_mitigation"])
LABELS_COLUMNS = (
    ["case_id"] + [f"dermatologist_gradable_for_skin_condition_{i}" for i in (1, 2, 3)]
    + ["dermatologist_skin_condition_on_label_name", "dermatologist_skin_condition_confidence",
       "weighted_skin_condition_label"]
    + [f"dermatologist_gradable_for_fitzpatrick_skin_type_{i}" for i in (1, 2, 3)]
    + [f"dermatologist_fitzpatrick_skin_type_label_{i}" for i in (1, 2, 3)]
    + ["gradable_for_monk_skin_tone_india", "gradable_for_monk_skin_tone_us", "monk_skin_tone_label_india",
       "monk_skin_tone_label_us"])
assert len(CASES_COLUMNS) == 57 and len(LABELS_COLUMNS) == 17


@dataclass
class CaseSpec:
    """One synthetic case: its weighted label cell, image count, and which image files to leave out."""

    weighted: str
    n_images: int = 1
    missing: tuple[int, ...] = ()


@dataclass
class SyntheticScin:
    root: Path
    case_ids: list[str]
    specs: list[CaseSpec]
    image_paths: dict[str, list[Path]] = field(default_factory=dict)


def write_scin(root: Path, specs: list[CaseSpec], seed: int = 0, image_size: int = 48,
               extra_label_lines: tuple[str, ...] = ()) -> SyntheticScin:
    """Write ``root/scin_cases.csv``, ``root/scin_labels.csv`` and ``root/images/<id>.png``.

    Images are small random-noise PNGs; ``extra_label_lines`` are raw lines appended to the labels
    file (to plant malformed rows).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    case_ids = [str(int(v)) for v in rng.integers(-(2**63), 2**63 - 1, size=len(specs), dtype=np.int64)]
    out = SyntheticScin(root, case_ids, specs)
    with (root / "scin_cases.csv").open("w", newline="") as fc, (root / "scin_labels.csv").open("w", newline="") as fl:
        cases, labels = csv.writer(fc), csv.writer(fl)
        cases.writerow(CASES_COLUMNS)
        labels.writerow(LABELS_COLUMNS)
        for case, spec in zip(case_ids, specs):
            row = dict.fromkeys(CASES_COLUMNS, "")
            row.update(case_id=case, source="USER_CLICK", release="SCIN_V1", year="2023", age_group="AGE_30_TO_39",
                       sex_at_birth="FEMALE", fitzpatrick_skin_type="FST3", body_parts_leg="YES",
                       textures_raised_or_bumpy="YES", related_category="RASH", condition_duration="ONE_TO_FOUR_WEEKS",
                       combined_race="WHITE", race_ethnicity_white="YES")
            paths = []
            for k in range(spec.n_images):
                image_id = str(int(rng.integers(-(2**63), 2**63 - 1, dtype=np.int64)))
                row[f"image_{k + 1}_path"] = f"dataset/images/{image_id}.png"
                row[f"image_{k + 1}_shot_type"] = ("CLOSE_UP", "AT_AN_ANGLE", "AT_DISTANCE")[k]
                path = root / "images" / f"{image_id}.png"
                if k not in spec.missing:
                    pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(path)
                    paths.append(path)
            out.image_paths[case] = paths
            cases.writerow([row[c] for c in CASES_COLUMNS])
            lab = dict.fromkeys(LABELS_COLUMNS, "")
            lab.update(case_id=case, dermatologist_gradable_for_skin_condition_1="DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT",
                       dermatologist_skin_condition_on_label_name="['Eczema', 'Psoriasis']",
                       dermatologist_skin_condition_confidence="[4, 2]", weighted_skin_condition_label=spec.weighted,
                       dermatologist_gradable_for_fitzpatrick_skin_type_1="YES",
                       dermatologist_fitzpatrick_skin_type_label_1="FST3", gradable_for_monk_skin_tone_india="True",
                       gradable_for_monk_skin_tone_us="True", monk_skin_tone_label_india="4",
                       monk_skin_tone_label_us="5")
            labels.writerow([lab[c] for c in LABELS_COLUMNS])
        for line in extra_label_lines:
            fl.write(line + "\r\n")
    return out
