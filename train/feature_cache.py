"""On-disk cache of per-image fusion inputs: concept extraction and the global ViT run once per image.

Each image becomes one safetensors file ``<root>/<key[:2]>/<key>.safetensors`` holding

    tokens    float16 [196, D]   global ViT patch tokens
    features  float32 [m, 256]   concept features
    boxes     float32 [m, 4]     concept boxes (working-image pixels)
    scores    float32 [m]        detector scores

with the concept phrases and the image key in the file's metadata. ``key`` hashes the image content
together with the identity of the extractor, the prompts and the global encoder, so a change of any
of them never reuses stale features. Files are written atomically (temp file + rename), so an
interrupted run resumes where it stopped; ``index.json`` maps (path, size, mtime) to keys so that a
resumed run need not decode images it already has.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from skinapp.concepts.types import FEATURE_DIM, Concepts
from skinapp.fusion.encoders import GlobalEncoder
from skinapp.image import InvalidImageError, LoadedImage, load_image
from train.data.manifest import ImageRecord, SkipLog

log = logging.getLogger(__name__)


class ConceptExtractor(Protocol):
    def extract(self, image: LoadedImage, prompts: Iterable[str]) -> Concepts: ...


@dataclass
class CachedFeatures:
    """The fusion inputs of one image (see the module docstring for shapes)."""

    tokens: torch.Tensor
    features: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    phrases: list[str]
    image_key: str


def _describe(obj: Any) -> str:
    weights = getattr(obj, "weights", ())
    weights = weights if isinstance(weights, (tuple, list)) else (weights,)
    return type(obj).__qualname__ + "|" + ";".join(getattr(w, "describe", lambda w=w: str(w))() for w in weights)


class FeatureCache:
    """Compute-or-load cached fusion inputs for image files.

    Args:
        root: cache folder.
        extractor: any object with ``.extract(LoadedImage, prompts) -> Concepts``.
        encoder: the global ViT (``build_global_encoder``).
        prompts: concept prompts passed to the extractor.
    """

    def __init__(self, root: str | Path, extractor: ConceptExtractor, encoder: GlobalEncoder,
                 prompts: Sequence[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.extractor = extractor
        self.encoder = encoder
        self.prompts = tuple(prompts)
        ident = json.dumps([_describe(extractor), _describe(encoder), encoder.width, self.prompts,
                            encoder.preprocessing])
        self.identity = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self._index_path = self.root / f"index-{self.identity}.json"
        self._index: dict[str, str] = json.loads(self._index_path.read_text()) if self._index_path.is_file() else {}

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def key_for(self, image: LoadedImage) -> str:
        return hashlib.sha256(f"{image.key}|{self.identity}".encode()).hexdigest()

    @staticmethod
    def _file_id(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, path: Path) -> CachedFeatures:
        """Cached features of an image file, computing and storing them on a miss.

        Raises:
            InvalidImageError: the file is missing or not a usable image.
        """
        path = Path(path)
        if not path.is_file():
            raise InvalidImageError(f"No such file: {path}")
        file_id = self._file_id(path)
        key = self._index.get(file_id)
        if key is not None and self._entry(key).is_file():
            return self.read(self._entry(key))
        image = load_image(path)
        key = self.key_for(image)
        entry = self._entry(key)
        if not entry.is_file():
            self._write(entry, self.compute(image))
        self._index[file_id] = key
        return self.read(entry)

    def compute(self, image: LoadedImage) -> CachedFeatures:
        """Run the extractor and the ViT on one image (no caching)."""
        concepts = self.extractor.extract(image, self.prompts)
        tokens = self.encoder.tokens(self.encoder.preprocess(image))[0]
        feats = torch.as_tensor(concepts.features).float().reshape(-1, FEATURE_DIM)
        return CachedFeatures(tokens=tokens.to(torch.float16).cpu(), features=feats.cpu(),
                              boxes=torch.tensor(np.array(concepts.boxes, dtype=np.float32)).reshape(-1, 4),
                              scores=torch.tensor(np.array(concepts.scores, dtype=np.float32)).reshape(-1),
                              phrases=list(concepts.phrases), image_key=image.key)

    def _write(self, entry: Path, item: CachedFeatures) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".tmp{os.getpid()}")
        tensors = {"tokens": item.tokens.contiguous(), "features": item.features.contiguous(),
                   "boxes": item.boxes.contiguous(), "scores": item.scores.contiguous()}
        save_file(tensors, str(tmp), metadata={"phrases": json.dumps(item.phrases), "image_key": item.image_key})
        os.replace(tmp, entry)

    @staticmethod
    def read(entry: Path) -> CachedFeatures:
        with safe_open(str(entry), framework="pt") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in ("tokens", "features", "boxes", "scores")}
        return CachedFeatures(phrases=json.loads(meta.get("phrases", "[]")), image_key=meta.get("image_key", ""), **t)

    def save_index(self) -> None:
        tmp = self._index_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self._index))
        os.replace(tmp, self._index_path)

    def build(self, records: Sequence[ImageRecord], skips: SkipLog, desc: str = "caching features",
              shard: tuple[int, int] = (0, 1)) -> list[CachedFeatures | None]:
        """Cached features for every record (None where the image is unreadable, logged in ``skips``).

        ``shard=(rank, world)`` computes only records ``i % world == rank`` (DDP ranks share the work;
        call again with the default shard after a barrier to read everything).
        """
        rank, world = shard
        out: list[CachedFeatures | None] = [None] * len(records)
        try:
            for i, record in enumerate(tqdm(records, desc=desc, disable=rank != 0)):
                if i % world != rank:
                    continue
                try:
                    out[i] = self.get(record.path)
                except InvalidImageError as exc:
                    skips.skip("unreadable images", f"{record.origin or record.path}: {record.path.name}: {exc}")
                if world == 1 and i % 200 == 199:
                    self.save_index()
        finally:
            if world == 1:
                self.save_index()
        return out
