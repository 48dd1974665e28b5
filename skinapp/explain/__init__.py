"""Phrase explanations for CLIP: Grad-CAM, Grad E-CLIP and MedGrad E-CLIP from one cached image pass.

See /work/shared/explainers.md for the exact definitions and pipeline.py for the entry points.
"""

from skinapp.explain.base import ECLIP_MODES, Explainer, GradContext, ImagePass, LastBlock, minmax, token_layout
from skinapp.explain.entropy import ENTROPY_RADIUS, entropy_weight, local_entropy
from skinapp.explain.grad_eclip import GradECLIP
from skinapp.explain.gradcam import GRADCAM_VARIANTS, GradCAM
from skinapp.explain.medgrad_eclip import MedGradECLIP
from skinapp.explain.pipeline import (
    EXPLAINER_REGISTRY,
    MAX_PHRASES,
    METHODS,
    Explanation,
    encode_image_for_explain,
    explain,
    explain_from_pass,
    prepare_image,
)

__all__ = [
    "ECLIP_MODES", "ENTROPY_RADIUS", "EXPLAINER_REGISTRY", "GRADCAM_VARIANTS", "MAX_PHRASES", "METHODS",
    "Explainer", "Explanation", "GradCAM", "GradContext", "GradECLIP", "ImagePass", "LastBlock", "MedGradECLIP",
    "encode_image_for_explain", "entropy_weight", "explain", "explain_from_pass", "local_entropy", "minmax",
    "prepare_image", "token_layout",
]
