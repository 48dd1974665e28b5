"""Text-prompted boxes from Grounding DINO: one model forward for all prompts of one image.

Profiles (configs as data, :data:`GDINO_CONFIGS`), both groundingdino's own ``GroundingDINO`` class:
    "full": GroundingDINO SwinT OGC (groundingdino/config/GroundingDINO_SwinT_OGC.py), for the official
        ``groundingdino_swint_ogc.pth`` and a local bert-base-uncased directory; 800 px short side.
    "tiny": the same classes, as small as the code allows: a narrow shallow Swin, one encoder and one
        decoder layer, 50 queries, a tiny BERT (:mod:`skinapp.concepts.text_encoder`), 320 px; random
        weights, for tests and demo mode. ``hidden_dim`` stays 256: groundingdino hard-codes 256-d text
        position and query sine embeddings.

Only the training-memory switches differ from the official config: gradient checkpointing
(``use_checkpoint``, ``use_transformer_ckpt``) is off, as it does nothing at inference; weights and
outputs are unchanged.

Caption and phrases: prompts are lower-cased, stripped and de-duplicated, then joined
``"lesion . leg . arm ."``. A caption longer than Grounding DINO's 256 text tokens is rejected with a
ValueError (the model would silently drop the prompts beyond the limit). Each box gets the prompt
whose tokens have the highest mean probability (groundingdino's positive map from the prompt's
character span); see :func:`select_detections`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms, box_convert

from skinapp.checkpoints import load_state_dict, load_tensors
from skinapp.concepts import gdino_compat, gdino_speed
from skinapp.concepts.prompts import normalise_prompts
from skinapp.concepts.text_encoder import write_tiny_text_encoder
from skinapp.concepts.types import Detections
from skinapp.provenance import WeightsInfo, untrained

logger = logging.getLogger(__name__)

#: Grounding DINO's text limit (tokens, [CLS] and [SEP] included).
MAX_TEXT_TOKENS = 256
#: Checkpoint keys the model does not have but that the official file carries, known to be harmless:
#: the denoising-training label embedding and a BERT buffer older transformers saved.
KNOWN_EXTRA_KEYS = frozenset({"label_enc.weight", "bert.embeddings.position_ids"})

_SWINT_OGC: dict[str, Any] = dict(
    backbone="swin_T_224_1k", swin_overrides={}, backbone_freeze_keywords=None, position_embedding="sine",
    pe_temperatureH=20, pe_temperatureW=20, return_interm_indices=[1, 2, 3], enc_layers=6, dec_layers=6, pre_norm=False,
    dim_feedforward=2048, hidden_dim=256, dropout=0.0, nheads=8, num_queries=900, query_dim=4, num_patterns=0,
    num_feature_levels=4, enc_n_points=4, dec_n_points=4, two_stage_type="standard",
    two_stage_bbox_embed_share=False, two_stage_class_embed_share=False, transformer_activation="relu",
    dec_pred_bbox_embed_share=True, dn_box_noise_scale=1.0, dn_label_noise_ratio=0.5, dn_labelbook_size=2000,
    embed_init_tgt=True, max_text_len=256, use_text_enhancer=True, use_fusion_layer=True, use_checkpoint=False,
    use_transformer_ckpt=False, use_text_cross_attention=True, text_dropout=0.0, fusion_dropout=0.0,
    fusion_droppath=0.1, sub_sentence_present=True, input_size=800, max_size=1333,
)

#: Grounding DINO configs by profile: groundingdino's config names, plus ``swin_overrides`` (Swin
#: constructor arguments over the named backbone's), ``input_size`` (short side) and ``max_size``.
GDINO_CONFIGS: dict[str, dict[str, Any]] = {
    "full": _SWINT_OGC,
    "tiny": {
        **_SWINT_OGC,
        "swin_overrides": dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]),
        "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 256, "num_queries": 50,
        "input_size": 320, "max_size": 533,
    },
}

_MODEL_NAMES = {"full": "grounding_dino_swint_ogc", "tiny": "grounding_dino_tiny"}
_IMAGENET_MEAN, _IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------------------------- building


def _build_backbone(args: SimpleNamespace) -> nn.Module:
    """groundingdino's ``build_backbone`` for Swin, with ``args.swin_overrides`` passed to the Swin constructor."""
    from groundingdino.models.GroundingDINO.backbone.backbone import Joiner
    from groundingdino.models.GroundingDINO.backbone.position_encoding import build_position_encoding
    from groundingdino.models.GroundingDINO.backbone.swin_transformer import build_swin_transformer

    swin = build_swin_transformer(
        args.backbone, pretrain_img_size=int(args.backbone.split("_")[-2]),
        out_indices=tuple(args.return_interm_indices), dilation=False, use_checkpoint=args.use_checkpoint,
        **args.swin_overrides,
    )
    joiner = Joiner(swin, build_position_encoding(args))
    joiner.num_channels = swin.num_features[4 - len(args.return_interm_indices):]
    return joiner


def build_gdino_model(config: dict[str, Any], text_encoder: str | Path) -> nn.Module:
    """groundingdino's ``GroundingDINO`` (eval mode, random weights) from a :data:`GDINO_CONFIGS` entry.

    Mirrors ``groundingdino.models.GroundingDINO.groundingdino.build_groundingdino``; the one difference
    is that the Swin backbone takes ``config["swin_overrides"]``.
    """
    gdino_compat.apply()
    from groundingdino.models.GroundingDINO.groundingdino import GroundingDINO
    from groundingdino.models.GroundingDINO.transformer import build_transformer

    args = SimpleNamespace(**copy.deepcopy(config), text_encoder_type=str(text_encoder))
    with contextlib.redirect_stdout(io.StringIO()) as said:  # groundingdino prints while it builds
        model = GroundingDINO(
            _build_backbone(args), build_transformer(args), num_queries=args.num_queries, aux_loss=True,
            iter_update=True, query_dim=4, num_feature_levels=args.num_feature_levels, nheads=args.nheads,
            dec_pred_bbox_embed_share=args.dec_pred_bbox_embed_share, two_stage_type=args.two_stage_type,
            two_stage_bbox_embed_share=args.two_stage_bbox_embed_share,
            two_stage_class_embed_share=args.two_stage_class_embed_share, num_patterns=args.num_patterns,
            dn_number=0, dn_box_noise_scale=args.dn_box_noise_scale, dn_label_noise_ratio=args.dn_label_noise_ratio,
            dn_labelbook_size=args.dn_labelbook_size, text_encoder_type=args.text_encoder_type,
            sub_sentence_present=args.sub_sentence_present, max_text_len=args.max_text_len,
        )
    logger.debug("groundingdino: %s", said.getvalue().strip())
    return model.eval()


def load_gdino_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Load an official-format checkpoint (``{"model": state_dict}``, optional ``module.`` prefixes).

    Read with ``weights_only=True``. Raises ValueError on a wrong format, on shape mismatches and on
    missing weights (a partly loaded detector must not pass for a trained one).

    Returns:
        The checkpoint keys the model does not use (logged; the official file has two, see
        :data:`KNOWN_EXTRA_KEYS`).
    """
    checkpoint = load_state_dict(path)
    if not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{path}: not a Grounding DINO checkpoint (expected a dict with a 'model' state dict)")
    state = load_tensors(path, nested=("model",))
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{path} does not fit this Grounding DINO config ({len(wrong)} shape mismatches), "
                         f"e.g. {'; '.join(wrong[:3])}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of the model's weights, e.g. {missing[:5]}")
    if set(unexpected) - KNOWN_EXTRA_KEYS:
        logger.warning("%s: %d unused keys, e.g. %s", path, len(unexpected), unexpected[:5])
    return list(unexpected)


def _default_tiny_text_encoder() -> Path:
    return write_tiny_text_encoder(Path(tempfile.gettempdir()) / "skinapp-tiny-bert")


def build_detector(
    profile: str = "tiny",
    checkpoint: str | Path | None = None,
    text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    box_threshold: float = 0.3,
    text_threshold: float = 0.25,
    input_size: int | None = None,
    iou_threshold: float = 0.5,
    bf16_scope: str | None = None,
) -> GroundingDinoDetector:
    """A Grounding DINO detector.

    Args:
        profile: "full" (SwinT OGC) or "tiny" (see module docstring).
        checkpoint: an official-format ``.pth`` (e.g. ``groundingdino_swint_ogc.pth``); None = random weights.
        text_encoder: a local BERT directory (bert-base-uncased for "full"); for "tiny", None writes a
            tiny one to the temp directory.
        device: where the model runs.
        box_threshold, text_threshold, iou_threshold: defaults of :meth:`GroundingDinoDetector.detect`.
        input_size: short side the image is resized to (default: the profile's).
        bf16_scope: on a CPU, which modules run under bf16 autocast (:mod:`skinapp.concepts.gdino_speed`;
            None: ``$SKINAPP_GDINO_BF16``, default "auto"). On CUDA the whole forward runs under bf16 autocast.
    """
    if profile not in GDINO_CONFIGS:
        raise ValueError(f"unknown Grounding DINO profile {profile!r}; choose one of {sorted(GDINO_CONFIGS)}")
    if text_encoder is None:
        if profile != "tiny":
            raise ValueError(f"profile {profile!r} needs text_encoder=<a local bert-base-uncased directory>")
        text_encoder = _default_tiny_text_encoder()
    text_encoder = Path(text_encoder)
    if not (text_encoder / "config.json").is_file() or not (text_encoder / "vocab.txt").is_file():
        raise ValueError(f"text_encoder {text_encoder} is not a BERT directory (config.json and vocab.txt)")

    config = dict(GDINO_CONFIGS[profile])
    if input_size is not None:
        config["max_size"] = int(round(config["max_size"] * input_size / config["input_size"]))
        config["input_size"] = int(input_size)
    model = build_gdino_model(config, text_encoder)
    name = _MODEL_NAMES[profile]
    if checkpoint is None:
        weights = untrained(name, f"random init ({profile} profile)")
    else:
        extra = load_gdino_checkpoint(model, checkpoint)
        weights = WeightsInfo(name, trained=True, source=f"{checkpoint} ({len(extra)} unused checkpoint keys)")
    if torch.device(device).type == "cpu":
        gdino_speed.set_bf16_scope(model, gdino_speed.resolve_scope(device, bf16_scope), device)
    return GroundingDinoDetector(model.to(device), config, weights, box_threshold=box_threshold,
                                 text_threshold=text_threshold, iou_threshold=iou_threshold)


# ------------------------------------------------------------------------------------------- prompts & boxes


def build_caption(prompts: Sequence[str]) -> tuple[str, list[str], list[tuple[int, int]]]:
    """Join prompts into one caption, cleaned by the one prompt rule (``prompts.normalise_prompts``).

    Returns:
        caption ("lesion . leg ."), the phrases, and each phrase's (start, end) character span; all empty for
        no prompts.

    Raises:
        ValueError: a prompt the rule refuses.
    """
    phrases = list(normalise_prompts(prompts)) if prompts else []
    caption, spans = "", []
    for phrase in phrases:
        start = len(caption)
        spans.append((start, start + len(phrase)))
        caption += phrase + " . "
    return caption.rstrip(), phrases, spans


def select_detections(
    probs: torch.Tensor, boxes: torch.Tensor, phrase_map: torch.Tensor, box_threshold: float,
    text_threshold: float, iou_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Threshold boxes, give each one prompt, and suppress duplicates within each prompt.

    A box is kept when its highest token probability exceeds ``box_threshold`` (its score, as in
    groundingdino's ``predict``), and its best prompt, the one whose tokens have the highest mean
    probability, exceeds ``text_threshold``. Then per-prompt NMS at ``iou_threshold``.

    Args:
        probs: float [Q, T] token probabilities (sigmoid of the logits) per query.
        boxes: float [Q, 4] xyxy boxes (any consistent units).
        phrase_map: float [P, T], row p the weights of prompt p's tokens (rows sum to 1).

    Returns:
        indices: long [n] kept queries, by decreasing score; phrase_ids: long [n]; scores: float [n].
    """
    scores = probs.max(dim=1).values
    phrase_probs = probs @ phrase_map.T  # [Q, P] mean probability over each prompt's tokens
    best_prob, phrase_ids = phrase_probs.max(dim=1)
    keep = torch.nonzero((scores > box_threshold) & (best_prob > text_threshold)).flatten()
    keep = keep[batched_nms(boxes[keep].float(), scores[keep].float(), phrase_ids[keep], iou_threshold)]
    return keep, phrase_ids[keep], scores[keep]


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised (cx, cy, w, h) [n, 4] -> pixel (x0, y0, x1, y1) [n, 4], clipped to the image."""
    xyxy = box_convert(boxes_cxcywh.float(), "cxcywh", "xyxy") * boxes_cxcywh.new_tensor([width, height] * 2)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    return xyxy


# ----------------------------------------------------------------------------------------------- detector


class GroundingDinoDetector:
    """Grounding DINO with its pre- and post-processing.

    Attributes:
        model: groundingdino's ``GroundingDINO`` in eval mode.
        config: the :data:`GDINO_CONFIGS` entry it was built from (with the input size in use).
        weights: provenance of the weights.
        n_forward: model forwards run so far (one per :meth:`detect` with prompts).
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], weights: WeightsInfo, box_threshold: float = 0.3,
                 text_threshold: float = 0.25, iou_threshold: float = 0.5):
        self.model = model.eval()
        self.config = config
        self.weights = weights
        self.box_threshold, self.text_threshold, self.iou_threshold = box_threshold, text_threshold, iou_threshold
        self.n_forward = 0
        self.model.register_forward_pre_hook(self._count_forward)
        self.set_input_size(config["input_size"])

    def set_input_size(self, short_side: int) -> None:
        """Resize inputs to ``short_side`` (long side capped in the config's proportion, 800/1333 officially)."""
        from groundingdino.datasets import transforms as T

        max_size = int(round(self.config["max_size"] * short_side / self.config["input_size"]))
        self.config = {**self.config, "input_size": int(short_side), "max_size": max_size}
        self._transform = T.Compose([
            T.RandomResize([self.config["input_size"]], max_size=self.config["max_size"]),  # one size: deterministic
            T.ToTensor(),
            T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ])

    def _count_forward(self, module: nn.Module, args: tuple) -> None:
        self.n_forward += 1

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] RGB -> float [3, h, w], resized and normalised as groundingdino's inference."""
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
            raise ValueError(f"pixels must be a uint8 [H, W, 3] RGB array, got {got}")
        if min(pixels.shape[:2]) < 1:
            raise ValueError(f"empty image {pixels.shape}")
        tensor, _ = self._transform(Image.fromarray(pixels), None)
        return tensor

    def phrase_map(self, caption: str, spans: list[tuple[int, int]]) -> torch.Tensor:
        """float [P, 256]: per prompt, uniform weights over its caption tokens (groundingdino's positive map)."""
        from groundingdino.util.vl_utils import create_positive_map_from_span

        tokenized = self.tokenizer(caption)
        n_tokens = len(tokenized["input_ids"])
        if n_tokens > MAX_TEXT_TOKENS:
            raise ValueError(f"the prompts make a caption of {n_tokens} tokens; Grounding DINO reads at most "
                             f"{MAX_TEXT_TOKENS}: use fewer or shorter prompts")
        phrase_map = create_positive_map_from_span(tokenized, [[span] for span in spans], MAX_TEXT_TOKENS)
        empty = [caption[s:e] for (s, e), row in zip(spans, phrase_map) if row.sum() == 0]
        if empty:
            raise ValueError(f"prompts {empty} map to no text token")
        return phrase_map

    def query_outputs(self, pixels: np.ndarray, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One model forward, before any threshold.

        Returns:
            probs: float32 [Q, 256] token probabilities (sigmoid of the logits) per query, on the CPU.
            boxes: float32 [Q, 4] pixel xyxy boxes in ``pixels``' frame, clipped.
        """
        return self._forward(self.preprocess(pixels), caption, pixels.shape[:2])

    def _forward(self, image: torch.Tensor, caption: str, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = self.model(image[None].to(device), captions=[caption])
        probs = outputs["pred_logits"][0].float().sigmoid().cpu()  # [Q, 256]
        height, width = size
        return probs, boxes_to_pixels(outputs["pred_boxes"][0].float().cpu(), width, height)

    def detect(self, pixels: np.ndarray, prompts: Sequence[str], box_threshold: float | None = None,
               text_threshold: float | None = None, iou_threshold: float | None = None) -> Detections:
        """Boxes for all prompts from ONE model forward.

        Args:
            pixels: uint8 [H, W, 3] RGB working image.
            prompts: phrases such as ("lesion", "leg"); see :func:`build_caption`.
            box_threshold, text_threshold, iou_threshold: override the detector's defaults.

        Returns:
            Detections in working-image pixels (xyxy, clipped), by decreasing score; empty when there
            are no prompts or nothing passes the thresholds.
        """
        image = self.preprocess(pixels)
        caption, phrases, spans = build_caption(prompts)
        if not phrases:
            return Detections.empty()
        phrase_map = self.phrase_map(caption, spans)
        probs, boxes = self._forward(image, caption, pixels.shape[:2])
        keep, phrase_ids, scores = select_detections(
            probs, boxes, phrase_map,
            self.box_threshold if box_threshold is None else box_threshold,
            self.text_threshold if text_threshold is None else text_threshold,
            self.iou_threshold if iou_threshold is None else iou_threshold,
        )
        if len(keep) == 0:
            return Detections.empty()
        return Detections(
            boxes=boxes[keep].numpy().astype(np.float32),
            phrases=[phrases[i] for i in phrase_ids.tolist()],
            scores=scores.numpy().astype(np.float32),
        )
