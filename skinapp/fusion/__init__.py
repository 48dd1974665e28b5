"""Cross-Attentive Fusion classifier: global ViT tokens + concept features -> CAM -> top-k MIL class scores."""

from skinapp.fusion.baselines import BASELINE_CHECKPOINTS, BASELINES, build_baseline
from skinapp.fusion.checkpoint import (
    global_encoder_meta,
    load_fusion_checkpoint,
    load_fusion_encoder,
    save_fusion_checkpoint,
)
from skinapp.fusion.config import FUSION_CONFIGS, fusion_config
from skinapp.fusion.encoders import PREPROCESSING, GlobalEncoder, build_global_encoder
from skinapp.fusion.padding import pad_concepts
from skinapp.fusion.pooling import mil_loss, top_real_instance, topk_pool
from skinapp.fusion.predict import FusionPrediction, predict
from skinapp.fusion.variants import DEFAULT_VARIANT, FUSION_VARIANTS, FusionBase, FusionOutput, build_fusion

__all__ = [
    "BASELINE_CHECKPOINTS", "BASELINES", "DEFAULT_VARIANT", "FUSION_CONFIGS", "FUSION_VARIANTS", "PREPROCESSING",
    "FusionBase", "FusionOutput", "FusionPrediction", "GlobalEncoder", "build_baseline", "build_fusion",
    "build_global_encoder", "fusion_config", "global_encoder_meta", "load_fusion_checkpoint",
    "load_fusion_encoder", "mil_loss", "pad_concepts", "predict",
    "save_fusion_checkpoint", "top_real_instance", "topk_pool",
]
