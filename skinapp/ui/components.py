"""Small Gradio component variants the app needs."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
from PIL import UnidentifiedImageError


def photo_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose upload check gives a readable message for files that are not images.

    Gradio opens every uploaded image with PIL before the handler runs; a PDF or text file would fail
    there with an internal error. The instance's ``preprocess`` is wrapped to turn that into a
    ``gr.Error`` the user can act on (a subclass would make Gradio write a .pyi stub into the source tree).
    """
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    @functools.wraps(preprocess)
    def readable_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise gr.Error("This file is not a readable image: upload a JPEG, PNG, WebP, TIFF or BMP photo.",
                           title="Not a photo") from exc

    image.preprocess = readable_preprocess  # type: ignore[method-assign]
    return image
