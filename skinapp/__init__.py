"""skinapp: text-prompted skin concepts, cross-attentive fusion diagnosis and CLIP phrase explanations."""

__version__ = "0.1.0"
