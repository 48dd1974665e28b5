"""Import a COCO instance-segmentation file (e.g. exported by CVAT or by :func:`~skinapp.review.export.export_coco`)
as a new version of the reviews of the photos it annotates.

Images are matched to stored photos by ``image_key`` (our exports carry it) or else by the file name's stem
(``images/<key>.png``, or ``<key>.jpg`` as uploaded to CVAT). Segmentations may be compressed RLE (``counts``
a string), uncompressed RLE (``counts`` a list) or polygons (:mod:`skinapp.review.coco_segmentation`). Every image
is checked before anything is saved: an unknown image, a size that differs from the stored photo, an annotation
that cannot be decoded, or a value of the wrong kind (:mod:`skinapp.review.coco_values`: ids are whole numbers or
text, sizes whole JSON numbers, a ``score`` a number from 0 to 1, a ``bbox`` 4 finite numbers, a reviewer or note
text) raises ValueError naming the image or annotation, the field and what it must be, and nothing is imported.
``area`` and ``iscrowd`` are not read (the mask gives the area). An image without annotations (COCO allows
them; our export lists a reviewed photo whose concepts were all rejected or left pending) is skipped: that photo's
review is left as it is. Each version is saved under the reviewer given, else the one the file records for the
image (our exports do), else none; with the note given, else the one the file records followed by "(imported
from COCO)" (:func:`imported_note`). The decision, phrase, label, comment and concept number our export records per
annotation (``attributes``) are read back and checked; an annotation without them is an accepted concept named
by its category. A photo whose latest version the file repeats whole (masks, concepts, reviewer, note: e.g. the
same file imported twice) is not saved again (:attr:`CocoImport.unchanged`).

FILE may also be our export zip (:mod:`skinapp.review.coco_zip`): its ``annotations.json`` is imported, and a photo
the store lacks is taken from its ``images/<key>.png`` when the pixels give that key.

Command line: ``python -m skinapp.review.coco_import FILE [--data-dir DIR] [--reviewer NAME]`` (exit 0 when
imported, 1 with the reason on stderr when refused, 2 when FILE is missing or there is no review store in the
data folder: the command imports only into an existing store, which the app creates when it starts, zip or JSON
alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from skinapp.boxes import sanitize_boxes
from skinapp.phrases import clean_phrases
from skinapp.review.coco_segmentation import decode_segmentation
from skinapp.review.coco_values import bbox_of, is_id, score_of, shown, text_of, whole_size
from skinapp.review.coco_zip import ExportArchive, is_archive
from skinapp.review.store import ConceptReview, Review, ReviewStore, default_data_dir, has_store
from skinapp.review.validation import DECISIONS, MAX_NOTE_CHARS, checked_concepts, checked_signature
from skinapp.wording import counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoImport:
    """What :func:`import_coco` did.

    Attributes:
        saved: the new review versions, in the file's image order.
        skipped: photo keys of the images without annotations (nothing saved for them), in the file's order.
        unchanged: the photos' latest versions that the file repeats whole (nothing saved for them), in its order.
    """

    saved: list[Review]
    skipped: list[str]
    unchanged: list[Review] = dataclasses.field(default_factory=list)

    def lines(self, quote: str = "") -> list[str]:
        """One line per photo, as the command prints them: saved ("<key>: version N, k concepts"), then
        unchanged ("<key>: unchanged, already version N"), then skipped ("<key>: skipped, no annotations"); the
        key is its first 12 characters, between ``quote`` (e.g. a backtick for Markdown)."""
        def shown(key: str) -> str:
            return f"{quote}{key[:12]}{quote}"
        return ([f"{shown(r.image_key)}: version {r.revision}, {counted(len(r.concepts), 'concept')}"
                 for r in self.saved]
                + [f"{shown(r.image_key)}: unchanged, already version {r.revision}" for r in self.unchanged]
                + [f"{shown(key)}: skipped, no annotations" for key in self.skipped])


def _image_key(image: dict[str, Any], known: set[str], archive: ExportArchive | None) -> tuple[str, Any]:
    """(photo key, pixels from the zip or None) of one COCO image: a saved photo's key, or a key whose photo the
    zip holds (checked against its pixels); else ValueError."""
    key = str(image.get("image_key") or PurePosixPath(str(image.get("file_name", ""))).stem).lower()
    if key in known:
        return key, None
    pixels = None
    if archive is not None and re.fullmatch(r"[0-9a-f]{64}", key):
        try:
            pixels = archive.photo(key)
        except ValueError as exc:
            raise ValueError(f"COCO image {image.get('id')}: {exc}: nothing imported.") from None
    if pixels is None:
        name = PurePosixPath(str(image.get("file_name", ""))).name
        raise ValueError(f"COCO image {image.get('id')} ({repr(name) if name else 'no file name'}) "
                         "matches no saved photo: images are matched by image_key or a file name <photo key>.png.")
    return key, pixels


class CocoFileNotFoundError(ValueError):
    """The COCO file (or zip) does not exist; its message is the screen's. The command says it its own way."""


#: What a file that is not a COCO object is told.
NOT_COCO = 'Not a COCO annotation file: it must be a JSON object with "images", "annotations" and "categories" lists.'
#: Highest concept number an imported annotation may carry (``attributes.concept_index``, as our export writes).
MAX_CONCEPT_INDEX = 999


def _read_coco(path: str | Path, text: bytes | None = None) -> tuple[list[dict], list[dict], dict[Any, str]]:
    """(images, annotations, category names by id) of a COCO file (or of ``text``, its content), or ValueError
    worded for the user (the file's name is never in the message: messages are logged)."""
    try:
        coco = json.loads(Path(path).read_bytes() if text is None else text)
    except FileNotFoundError:
        raise CocoFileNotFoundError("The COCO file was not found: choose it again.") from None
    except OSError as exc:
        raise ValueError(f"The COCO file could not be read ({exc.strerror or type(exc).__name__}).") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"Not a COCO annotation file: it is not valid JSON (the first error is at line {exc.lineno}, "
                         f"column {exc.colno}).") from None
    except ValueError:  # not UTF-8 / UTF-16 / UTF-32 text, or an integer of thousands of digits
        raise ValueError("Not a COCO annotation file: it is not valid JSON text.") from None
    except RecursionError:  # JSON nested thousands of levels deep
        raise ValueError("Not a COCO annotation file: its JSON is nested too deeply.") from None
    parts = [coco.get(name, []) if isinstance(coco, dict) else None for name in ("images", "annotations",
                                                                               "categories")]
    if not isinstance(coco, dict) or "images" not in coco or not all(
            isinstance(part, list) and all(isinstance(item, dict) for item in part) for part in parts):
        raise ValueError(NOT_COCO)
    images, annotations, categories = parts
    for what, items in (("Image", images), ("Category", categories)):
        for n, item in enumerate(items, start=1):
            if not is_id(item.get("id")):
                raise ValueError(f"{what} {n} of the file: its id must be a whole number or text; got "
                                 f"{shown(item.get('id'))}.")
    for ann in annotations:
        for field in ("image_id", "category_id"):
            if not is_id(ann.get(field)):
                raise ValueError(f"Annotation {ann.get('id')}: its {field} must be a whole number or text; got "
                                 f"{shown(ann.get(field))}.")
    names: dict[Any, str] = {}
    for category in categories:
        name = category.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"Category {category.get('id')}: its name must be text (a phrase such as 'lesion'); got "
                             f"{shown(name)}.")
        if not name or not name.strip():
            raise ValueError(f"Category {category.get('id')} has an empty name: name each category (e.g. 'lesion').")
        try:
            [names[category.get("id")]] = clean_phrases([name], noun="category name", examples=("lesion", "lesion"))
        except ValueError as exc:
            raise ValueError(f"Category {category.get('id')}: {exc}") from None
    listed = {image.get("id") for image in images}
    for ann in annotations:
        if ann.get("image_id") not in listed:
            raise ValueError(f"Annotation {ann.get('id')} names image {ann.get('image_id')}, which the file does not "
                             "list: nothing imported.")
    return images, annotations, names


def _verdict(ann: dict[str, Any], name: str) -> tuple[int | None, str, str, str, str]:
    """(concept index or None, phrase, decision, label, comment) of one annotation whose category is ``name``.

    Our export's ``attributes`` (``decision``, ``original_phrase``, ``comment``, ``concept_index``) are read back
    and checked; a file without them (e.g. CVAT's) gives (None, name, "accept", "", ""). A category that differs
    from the exported ``original_phrase`` of an accepted concept (renamed after export) is a relabel.

    Raises:
        ValueError: an attribute of the wrong type, an unknown decision, an overlong comment or phrase.
    """
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    decision = attrs.get("decision", "accept")
    if decision not in DECISIONS:
        raise ValueError(f"its decision must be one of {', '.join(DECISIONS)}; got {decision!r}")
    comment = attrs.get("comment", "")
    if not isinstance(comment, str):
        raise ValueError(f"its comment must be text; got {comment!r}")
    comment = comment.strip()
    if len(comment) > MAX_NOTE_CHARS:
        raise ValueError(f"a comment has at most {MAX_NOTE_CHARS} characters; this one has {len(comment)}")
    phrase = attrs.get("original_phrase", name)
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError(f"its original_phrase must be a phrase of words; got {phrase!r}")
    [phrase] = clean_phrases([phrase], examples=("lesion", "lesion"))
    index = attrs.get("concept_index")
    if index is not None and (type(index) is not int or not 0 <= index <= MAX_CONCEPT_INDEX):
        raise ValueError(f"its concept_index must be a whole number from 0 to {MAX_CONCEPT_INDEX}; got {index!r}")
    if decision == "accept" and name != phrase:
        decision = "relabel"
    label = name if decision == "relabel" else ""
    return index, phrase, decision, label, comment


def _plan_image(image: dict[str, Any], annotations: list[dict], names: dict[Any, str], size: tuple[int, int]
                ) -> tuple[np.ndarray, list[ConceptReview]]:
    """The masks bool [n, H, W] and concepts of one image's annotations (n: the highest concept index + 1;
    annotations without a ``concept_index`` are numbered after the others, in file order)."""
    where = f"of image {image.get('id')}"
    found = []
    for ann in annotations:
        try:
            mask = decode_segmentation(ann.get("segmentation"), *size)
            phrase = names.get(ann.get("category_id"), "")
            if not phrase:
                raise LookupError
            index, *verdict = _verdict(ann, phrase)
            box = bbox_of(ann)
            x, y, w, h = box or (float(v) for v in mask_utils.toBbox(
                mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))))
            score = score_of(ann)
            if not sanitize_boxes(np.array([[x, y, x + w, y + h]]), size[1], size[0])[1][0]:  # as the store will
                raise ValueError(f"its bbox {shown(ann.get('bbox'))} has no area inside the {size[1]}x{size[0]} "
                                 "image" if box else "it has no bbox and its mask is empty")
        except LookupError:
            raise ValueError(f"Annotation {ann.get('id')}: category {ann.get('category_id')} is not listed.") from None
        except ValueError as exc:  # our own words (coco_values, coco_segmentation, _verdict, clean_phrases)
            raise ValueError(f"Annotation {ann.get('id')} {where}: {str(exc).rstrip('.')}.") from None
        found.append((ann, index, mask, ConceptReview(-1, verdict[0], score, (x, y, x + w, y + h), *verdict[1:],
                                                      provenance="imported")))
    taken: set[int] = set()
    for ann, index, _, _ in found:
        if index is not None and index in taken:
            raise ValueError(f"Annotation {ann.get('id')} {where}: its concept_index {index} is used twice.")
        taken.add(index)
    taken.discard(None)
    following = iter(range(max(taken, default=-1) + 1, 2 ** 31))
    concepts = []
    for _, index, _, concept in found:
        concept.index = index if index is not None else next(following)
        concepts.append(concept)
    masks = np.zeros((max((c.index for c in concepts), default=-1) + 1, *size), bool)  # unused rows stay zero
    for (_, _, mask, _), concept in zip(found, concepts):
        masks[concept.index] = mask
    return masks, sorted(concepts, key=lambda c: c.index)


#: What an imported version's note says about its origin: the note itself when the file records none, else
#: appended in brackets (see :func:`imported_note`).
IMPORT_NOTE = "imported from COCO"


def imported_note(recorded: str) -> str:
    """The note of a version imported from a file that records ``recorded`` for the image (our exports do): that
    note followed by "(imported from COCO)", or just "imported from COCO" when it is empty. A note that already
    ends with the mention (an export of an import) or that has no room left for it (the store keeps at most
    :data:`~skinapp.review.validation.MAX_NOTE_CHARS` characters) is kept as it is."""
    recorded = recorded.strip()
    mention = f"({IMPORT_NOTE})"
    if not recorded:
        return IMPORT_NOTE
    if recorded.endswith(mention) or len(recorded) + 1 + len(mention) > MAX_NOTE_CHARS:
        return recorded
    return f"{recorded} {mention}"


def _same_as(latest: Review | None, store: ReviewStore, masks: np.ndarray, concepts: list[ConceptReview], who: str,
             what: str) -> bool:
    """Whether saving would repeat ``latest`` whole: reviewer, note, each concept as the store keeps it (box clipped
    to the photo) and each concept's mask."""
    if latest is None or (latest.reviewer, latest.note) != (who, what):
        return False
    stored = checked_concepts([dataclasses.replace(c) for c in concepts], len(masks), latest.width, latest.height)
    if stored != latest.concepts:
        return False
    try:
        return all(np.array_equal(store.load_mask(latest.image_key, c.index, latest.version), masks[c.index])
                   for c in stored)
    except FileNotFoundError:  # a mask file gone: save anew rather than claim the version is there
        return False


def import_coco(store: ReviewStore, path: str | Path, reviewer: str = "", note: str | None = None) -> CocoImport:
    """Save the annotations of each image in the COCO file as a new version of that photo's review.

    Each annotation becomes a concept (provenance "imported"; box from ``bbox``); its phrase, decision, label,
    comment and number are those our export recorded (:func:`_verdict`), else the category's name, "accept", no
    label, no comment, numbered in file order. Images without annotations are skipped. The version's reviewer is
    ``reviewer``, or when that is empty the image's ``reviewer`` field (written by
    :func:`~skinapp.review.export.export_coco`). Its note is ``note`` when given (even ""), else the image's
    ``note`` field with a mention of the import (:func:`imported_note`).

    Raises:
        ValueError: unreadable file, unknown image, an annotation of an image the file does not list, a size
            mismatch, an undecodable segmentation, a bad category name or attribute, or no annotation in the whole
            file (nothing is saved).
    """
    if is_archive(path):
        with ExportArchive(path) as archive:
            return _import(store, archive.annotations_text(), path, archive, reviewer, note)
    return _import(store, None, path, None, reviewer, note)


def _import(store: ReviewStore, text: bytes | None, path: str | Path, archive: ExportArchive | None,
            reviewer: str, note: str) -> CocoImport:
    images, annotations, names = _read_coco(path, text)
    known = {r.image_key for r in store.list_reviews()}
    planned, skipped, unchanged = [], [], []
    for image in images:
        key, pixels = _image_key(image, known, archive)
        latest = store.load(key)
        review = latest or Review(key, pixels.shape[1], pixels.shape[0], [])
        size = (whole_size(image, "height"), whole_size(image, "width"))
        if size != (review.height, review.width):
            raise ValueError(f"COCO image {image.get('id')} is {size[1]}x{size[0]} but photo {key[:12]} is "
                             f"{review.width}x{review.height}: annotate the exported working-size photo.")
        masks, concepts = _plan_image(image, [a for a in annotations if a.get("image_id") == image.get("id")],
                                      names, size)
        if not concepts:
            skipped.append(key)
            continue
        who = reviewer or text_of(image, "reviewer", "a name (text)")  # the file's, when used, must be text
        what = imported_note(text_of(image, "note", "text")) if note is None else note
        try:  # the store's rule, here so that a refusal comes before any save
            who, what = checked_signature(who, what)
        except ValueError as exc:
            raise ValueError(f"COCO image {image.get('id')}: {exc}") from None
        if _same_as(latest, store, masks, concepts, who, what):
            unchanged.append(latest)
            continue
        planned.append((key, pixels, masks, concepts, who, what, review.prompts))
    if not planned and not unchanged:
        raise ValueError("The COCO file has no annotations: nothing to import.")
    saved = [store.save(key, store.load_photo(key) if pixels is None else pixels, masks, concepts, reviewer=who,
                        note=what, prompts=prompts) for key, pixels, masks, concepts, who, what, prompts in planned]
    log.info("Imported %d annotations over %d photos from COCO; %d photos unchanged (already their latest version), "
             "%d images without annotations skipped", sum(len(p[3]) for p in planned), len(saved), len(unchanged),
             len(skipped))
    return CocoImport(saved, skipped, unchanged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinapp.review.coco_import", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="the COCO JSON file, or an export zip")
    parser.add_argument("--data-dir", default=None,
                        help="the review store's folder (default $SKINAPP_DATA_DIR, else ./data/reviews)")
    parser.add_argument("--reviewer", default="", help="who made the annotations (saved with each version; default: "
                                                       "the reviewer the file records for each image)")
    args = parser.parse_args(argv)
    folder = Path(args.data_dir) if args.data_dir else default_data_dir()
    # Opening would create a store: the command imports only into the app's (which creates it when it starts), so
    # a mistyped folder is refused, for a zip (which brings its photos) as for a JSON file.
    if not has_store(folder):
        parser.error(f"no review store in {folder}: check --data-dir DIR (or $SKINAPP_DATA_DIR); it must name the "
                     "app's data folder, where the app creates its store when it starts")
    store = ReviewStore(folder)
    try:
        done = import_coco(store, args.file, reviewer=args.reviewer)
    except CocoFileNotFoundError:
        parser.error(f"COCO file not found: {args.file}")  # the path the user typed (the screen's words name none)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for line in done.lines():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
