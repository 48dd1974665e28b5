"""The Gradio UI: a thin layer of Blocks and handlers over skinapp.pipeline and skinapp.review."""

from skinapp.ui.blocks import build_demo
from skinapp.ui.handlers import Handlers, banner_html

__all__ = ["Handlers", "banner_html", "build_demo"]
