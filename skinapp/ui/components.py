"""Small Gradio component variants the app needs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr

from skinapp.ui.privacy import loggable

log = logging.getLogger(__name__)


def photo_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose handlers receive the uploaded file itself, byte for byte.

    Gradio's own ``Image.preprocess`` re-encodes every upload before a handler sees it: 16-bit PNGs are
    clipped to 8 bits, transparency is dropped (revealing the colours under it), CMYK and animated GIFs
    lose what made them special. The instance's ``preprocess`` is replaced so the handler gets the path
    of the original upload and :func:`skinapp.image.load_image` applies the conversions the README
    promises (with their notes). Files that are not images get our loader's readable message.
    (A subclass would make Gradio write a .pyi stub into the source tree.)
    """
    kwargs["type"] = "filepath"
    image = gr.Image(**kwargs)

    def original_file(payload: Any) -> str | None:
        if payload is None:
            return None
        path = getattr(payload, "path", None) or (payload.get("path") if isinstance(payload, dict) else None)
        if not path or not Path(path).is_file():
            raise gr.Error("The uploaded photo is no longer available; upload it again.", title="Photo missing",
                           print_exception=False)
        return str(path)

    image.preprocess = original_file  # type: ignore[method-assign]
    return image


def quiet_validation(component: gr.components.Component, name: str) -> gr.components.Component:
    """Make ``component``'s own input check (a slider value out of range, a choice not offered: reachable from the
    API only) a user error: one log line ``<name> refused: <message>`` and the message to the caller (a quiet
    ``gr.Error``), instead of Gradio's printed traceback. Returns the component (its ``preprocess`` is wrapped,
    as in :func:`photo_input`).
    """
    check = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return check(payload)
        except gr.Error as exc:
            log.info("%s refused: %s", name, loggable(str(exc.message)))
            raise gr.Error(exc.message, title="Cannot do that", print_exception=False) from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component
