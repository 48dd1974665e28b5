"""Visual concepts: text-prompted boxes (Grounding DINO) -> masks (SAM) -> 256-d features."""

from skinapp.concepts.types import DEFAULT_PROMPTS, Concepts, Detections

__all__ = ["DEFAULT_PROMPTS", "Concepts", "Detections"]
