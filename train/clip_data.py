"""The image-text pairs ``train.clip`` trains on: augmentation, the image view, the dataset and its batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from skinapp.clip.model import whole_photo_preprocess
from skinapp.image import load_image
from train.data.text import TEXT_BUILDERS, LesionRecord


def augment_image(image: Image.Image, rng: random.Random, degrees: float = 15.0) -> Image.Image:
    """Random horizontal/vertical flips, a multiple of 90 degrees, then a small rotation in [-degrees, degrees]."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    quarter = rng.randrange(4)
    if quarter:
        image = image.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                 Image.Transpose.ROTATE_270)[quarter - 1])
    if degrees > 0:
        image = image.rotate(rng.uniform(-degrees, degrees), resample=Image.Resampling.BILINEAR)
    return image


#: ``--view`` choices. "whole": the letterboxed whole photo, exactly what the app explains
#: (:func:`skinapp.clip.model.whole_photo_preprocess`); "centre_crop": open_clip's eval transform.
VIEWS = ("whole", "centre_crop")


def training_view(view: str, bundle: Any) -> Any:
    """The image transform CLIP is fine-tuned and evaluated on (PIL image -> [3, S, S]); see :data:`VIEWS`."""
    if view == "whole":
        return whole_photo_preprocess(bundle.image_size)
    if view == "centre_crop":
        return bundle.preprocess
    raise ValueError(f"Unknown view {view!r}; choose from {VIEWS}")


class PairDataset(Dataset):
    """Records -> (image [3, S, S] float, text str, class index int).

    With ``augment`` the image is flipped/rotated and the criteria phrases are shuffled; without,
    the image is only preprocessed and the text has its phrases in canonical order. ``text``: "paper"
    (:func:`train.data.text.build_paper_text`) or "ours" (:func:`train.data.text.build_text`).
    """

    def __init__(self, records: Sequence[LesionRecord], class_names: Sequence[str], preprocess: Any,
                 augment: bool = False, rotation_degrees: float = 15.0, text: str = "paper"):
        if text not in TEXT_BUILDERS:
            raise ValueError(f"Unknown text builder {text!r}; choose from {sorted(TEXT_BUILDERS)}")
        self.records = list(records)
        self.index = {name: i for i, name in enumerate(class_names)}
        self.preprocess = preprocess
        self.augment = augment
        self.rotation_degrees = rotation_degrees
        self.build_text = TEXT_BUILDERS[text]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        record = self.records[i]
        image = load_image(record.image_path).pil()
        text = self.build_text(record.label, record.criteria)
        if self.augment:
            rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,))))  # torch RNG: seeded per worker
            image = augment_image(image, rng, self.rotation_degrees)
            text = self.build_text(record.label, record.criteria, rng)
        return self.preprocess(image), text, self.index[record.label]


def collate(batch: list[tuple[torch.Tensor, str, int]]) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    images, texts, labels = zip(*batch)
    return torch.stack(images), list(texts), torch.tensor(labels)
