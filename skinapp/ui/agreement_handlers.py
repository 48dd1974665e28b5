"""The Review tab's agreement panel: reviewers of the photo shown, compared (thin handlers over
:mod:`skinapp.review.agreement`), and the whole store's agreement as a CSV for the session that asked.

For the photo key shown: one row per reviewer pair and concept both reviewers kept (same number and phrase)
with the two decisions, the IoU of their masks, and the pair's Cohen's kappa over keep/reject on every photo
both reviewed. The CSV is :func:`skinapp.review.agreement.write_csv` of the whole store, written under a
session-bound export name (:func:`skinapp.ui.privacy.new_export_path`, checked by
:class:`~skinapp.ui.privacy.ExportGuard`).
"""

from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from skinapp.review.agreement import agreement, reviewer_identity, write_csv
from skinapp.review.store import ReviewStore
from skinapp.ui.privacy import new_export_path, session_cookie
from skinapp.wording import counted

log = logging.getLogger(__name__)

AGREEMENT_COLUMNS = ["reviewer A", "reviewer B", "#", "concept", "decision A", "decision B", "mask IoU",
                     "kappa (all shared photos)"]


def _shown(reviewer: str) -> str:
    """A reviewer's name for the Markdown status: HTML-escaped (a name is text the reviewer typed, never markup)."""
    return html.escape(reviewer)


class AgreementHandlers:
    """Handlers of the agreement panel.

    Args:
        store: the review store.
        refuse: ``Handlers._refuse`` (one log line, the message kept for the failure text).
        export_dir, export_owners: where exports go and {token: owner cookie} (``Handlers``'s, shared with
            :class:`~skinapp.ui.privacy.ExportGuard`).
    """

    def __init__(self, store: ReviewStore, refuse, export_dir: str | Path,
                 export_owners: dict[str, str | None]) -> None:
        self.store = store
        self._refuse = refuse
        self.export_dir = Path(export_dir)
        self.export_owners = export_owners

    def photo(self, photo_key: Any, request: gr.Request | None = None) -> tuple[pd.DataFrame, str]:
        """The reviewer pairs x concepts of the photo ``photo_key`` names. Outputs: table, status."""
        key = str(photo_key or "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise self._refuse("agreement", ValueError("Analyse a photo (or reopen a saved review) first: there is "
                                                       "no photo key."), request)
        latest = self.store.latest_by_reviewer()
        concepts, pairs = agreement(self.store, latest)
        kappas = {(p.reviewer_a, p.reviewer_b): p for p in pairs}
        rows = [[c.reviewer_a, c.reviewer_b, c.concept, c.phrase, c.decision_a, c.decision_b,
                 round(c.iou, 3), _kappa(kappas[(c.reviewer_a, c.reviewer_b)].kappa)]
                for c in concepts if c.image_key == key]
        mine = sorted((r for r in latest if r.image_key == key), key=lambda r: r.updated_at)
        spelled = {reviewer_identity(r.reviewer): r.reviewer for r in mine}  # one name per reviewer, as last saved
        unnamed = " A version saved without a reviewer name is not compared." if spelled.pop("", None) is not None \
            else ""
        if len(spelled) < 2:
            status = (f"Photo `{key[:12]}` has {counted(len(spelled), 'reviewer')} "
                      f"({', '.join(map(_shown, sorted(spelled.values()))) or 'none'}): agreement needs two.")
        else:
            shown = {(c.reviewer_a, c.reviewer_b) for c in concepts if c.image_key == key}
            names = ", ".join(map(_shown, sorted({name for pair in shown for name in pair})))
            status = f"Photo `{key[:12]}`: latest versions of {names} compared. " + " ".join(
                f"{_shown(a)} vs {_shown(b)}: Cohen's kappa {_kappa(kappas[(a, b)].kappa)} over "
                f"{counted(kappas[(a, b)].n_decided, 'decided concept')} on "
                f"{counted(kappas[(a, b)].n_photos, 'shared photo')}."
                for a, b in sorted(shown))
        return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS), status + unnamed

    def export_csv(self, request: gr.Request | None = None) -> tuple[str, str]:
        """The whole store's agreement as CSV, for this session only. Outputs: file, status."""
        concepts, pairs = agreement(self.store)
        if not pairs:
            raise self._refuse("agreement", ValueError("No photo has been reviewed by two or more reviewers yet."),
                                request)
        owner = session_cookie(request.headers.get("cookie")) if request is not None else None
        target = write_csv(concepts, pairs, new_export_path(self.export_dir, self.export_owners, owner, "csv"))
        log.info("Exported reviewer agreement (%d pairs, %d concepts)", len(pairs), len(concepts))
        over = f"{counted(len(pairs), 'reviewer pair')} over {counted(len(concepts), 'concept')}"
        return str(target), (f"Agreement of {over}. The download is for this session only and is deleted after the "
                             "retention time: save it now.")


def _kappa(value: float) -> str:
    """Kappa to 3 decimals; "n/a" when undefined (NaN: no decided concept, or one answer throughout)."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"
