"""One rule for prompts: every extractor and the detector's caption accept, split and refuse alike."""

from __future__ import annotations

import pytest

from skinapp.concepts import fallback
from skinapp.concepts.detector import build_caption
from skinapp.concepts.extractor import GroundedSamExtractor
from skinapp.concepts.fallback import ColourConceptExtractor
from skinapp.concepts.prompts import MAX_PROMPT_CHARS, MAX_PROMPTS, normalise_prompts
from skinapp.concepts.segmenter import build_segmenter
from skinapp.concepts.types import Detections
from skinapp.image import load_image
from skinapp.provenance import untrained

ACCEPTED = [
    ("Leg . arm, lesion.", ("leg", "arm", "lesion")),
    (["  Upper  Arm ", "upper arm", "lesion"], ("upper arm", "lesion")),
    (["lesion. leg"], ("lesion", "leg")),              # a separator inside a list item splits it too
    (["arm?", "Leg!", "(face)"], ("arm", "leg", "face")),  # punctuation at the ends never reaches the model
    ("lesion; leg\nhand", ("lesion", "leg", "hand")),
    (["blue-grey lesion", "naevus's edge"], ("blue-grey lesion", "naevus's edge")),
    (["Lésion", "病変"], ("lésion", "病変")),
]
REFUSED = [
    ("", "No prompt phrases"),
    ([" . , ", "?"], "No prompt phrases"),
    (["123"], "not a prompt"),
    ([7], "must be strings"),
    (["x" * (MAX_PROMPT_CHARS + 1)], "too long"),
    ([f"word{i}" for i in range(MAX_PROMPTS + 1)], "Too many prompts"),
]


class RecordingDetector:
    """TEST DOUBLE: records the prompts the grounded extractor hands the detector; finds nothing."""

    def __init__(self):
        self.weights = untrained("recording_detector", "test double")
        self.prompts: list[tuple[str, ...]] = []

    def detect(self, pixels, prompts, box_threshold=None, text_threshold=None):
        self.prompts.append(tuple(build_caption(prompts)[1]))  # what the real detector would put in its caption
        return Detections.empty()


@pytest.fixture(scope="module")
def image(skin_photo_module):
    return load_image(skin_photo_module.pixels)


@pytest.fixture(scope="module")
def skin_photo_module():
    from skinapp.synthetic import make_skin_photo

    return make_skin_photo(seed=3, lesion_colour="dark_brown")


@pytest.fixture(scope="module")
def grounded():
    detector = RecordingDetector()
    return GroundedSamExtractor(detector, build_segmenter("tiny")), detector


@pytest.mark.parametrize(("prompts", "expected"), ACCEPTED)
def test_every_extractor_sees_the_same_phrases(prompts, expected, image, grounded, monkeypatch):
    assert normalise_prompts(prompts) == expected
    assert tuple(build_caption(list(expected))[1]) == expected
    extractor, detector = grounded
    extractor.extract(image, prompts)
    assert detector.prompts[-1] == expected
    seen = []
    monkeypatch.setattr(fallback.ColourConceptExtractor, "_extract",
                        lambda self, img, phrases: seen.append(phrases) or fallback.Concepts.empty(
                            img.height, img.width, "fallback", self.weights, img.key))
    ColourConceptExtractor().extract(image, prompts)
    assert seen == [expected]


@pytest.mark.parametrize(("prompts", "message"), REFUSED)
def test_every_extractor_refuses_alike(prompts, message, image, grounded):
    for extract in (grounded[0].extract, ColourConceptExtractor().extract):
        with pytest.raises(ValueError, match=message):
            extract(image, prompts)
    if prompts not in ("",):
        with pytest.raises(ValueError, match=message):
            build_caption(prompts)


def test_caption_tokens_follow_the_cleaned_phrases():
    caption, phrases, spans = build_caption(["Lesion", " left  LEG ", "lesion", "arm."])
    assert caption == "lesion . left leg . arm ."
    assert [caption[s:e] for s, e in spans] == phrases == ["lesion", "left leg", "arm"]
    assert build_caption([]) == ("", [], [])
