"""Annotator reviews of concept masks: SQLite store (WAL) and COCO/PNG export."""

from skinapp.review.export import export_coco, export_zip, rle_decode, rle_encode
from skinapp.review.store import (
    DATA_DIR_ENV,
    ConceptReview,
    Review,
    ReviewStore,
    default_data_dir,
)
from skinapp.review.validation import DECISIONS, PROVENANCE

__all__ = ["DATA_DIR_ENV", "DECISIONS", "PROVENANCE", "ConceptReview", "Review", "ReviewStore", "default_data_dir",
           "export_coco", "export_zip", "rle_decode", "rle_encode"]
