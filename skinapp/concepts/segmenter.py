"""Segment Anything as a stateless per-image stage: one image embedding, all boxes decoded in one call.

Built from segment_anything's own modules (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``
with ``TwoWayTransformer``, ``Sam``) from configs-as-data. Unlike ``SamPredictor``, nothing about an
image is stored on the :class:`SamSegmenter`: :meth:`SamSegmenter.embed` returns a
:class:`SamEmbedding` that the caller keeps (and caches), so one segmenter serves several users at once.

Profiles:
    "full": the official ``vit_b`` / ``vit_l`` / ``vit_h`` builds (1024 px input, 64x64 embedding grid);
        weights from the official ``sam_vit_*.pth`` (a plain state dict), random without one.
    "tiny": the same classes at a small width and depth, 256 px input (16x16 embedding grid), still
        256-d features; random weights, for tests and demo mode.

Coordinates: the image is resized so its long side is ``img_size`` (``ResizeLongestSide``), giving
``input_size`` (h', w'), then padded bottom/right to ``img_size`` x ``img_size``. The embedding grid
covers the padded square, so the image occupies only its top-left h'/16 x w'/16 cells.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from skinapp import precision
from skinapp.checkpoints import load_tensors
from skinapp.concepts.sam_sdpa import sdpa_default, use_sdpa
from skinapp.precision import bf16_enabled
from skinapp.provenance import WeightsInfo, untrained

log = logging.getLogger(__name__)

#: Prompt encoder / mask decoder settings, the same for every official variant.
_SAM_DECODER = {"prompt_embed_dim": 256, "decoder_depth": 2, "decoder_mlp_dim": 2048, "decoder_num_heads": 8}
_SAM_OFFICIAL = {"img_size": 1024, "patch_size": 16, "window_size": 14, **_SAM_DECODER}

#: Build settings per variant (segment_anything's ``build_sam.py`` for vit_b/l/h).
SAM_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": (2, 5, 8, 11), **_SAM_OFFICIAL},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (5, 11, 17, 23), **_SAM_OFFICIAL},
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": (7, 15, 23, 31), **_SAM_OFFICIAL},
    # Same classes, small encoder and 256 px input (16x16 embedding grid); features stay 256-d.
    "tiny": {"encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": (1,),
             "img_size": 256, "patch_size": 16, "window_size": 8, **_SAM_DECODER, "decoder_mlp_dim": 256},
}


def build_sam(config: dict[str, Any]) -> Sam:
    """A randomly initialised ``Sam`` in eval mode from one :data:`SAM_CONFIGS` entry."""
    img_size, patch, dim = config["img_size"], config["patch_size"], config["prompt_embed_dim"]
    grid = img_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config["encoder_depth"], embed_dim=config["encoder_embed_dim"], img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config["encoder_num_heads"],
            patch_size=patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(config["encoder_global_attn_indexes"]), window_size=config["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config["decoder_depth"], embedding_dim=dim,
                                          mlp_dim=config["decoder_mlp_dim"], num_heads=config["decoder_num_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


@dataclass(frozen=True)
class SamEmbedding:
    """One image's SAM embedding and the geometry needed to use it.

    Attributes:
        embedding: float32 tensor [1, 256, g, g] over the padded ``img_size`` square (g = img_size / 16).
        input_size: (h', w') of the resized image inside the padded square.
        original_size: (H, W) of the pixels that were embedded.
    """

    embedding: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    return load_tensors(path)


def _describe_state(state: dict[str, torch.Tensor]) -> str:
    """What SAM variant a state dict looks like, for error messages."""
    proj = state.get("image_encoder.patch_embed.proj.weight")
    if proj is None:
        return "not a SAM checkpoint (no image_encoder.patch_embed weights)"
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    width = int(proj.shape[0])
    for name, cfg in SAM_CONFIGS.items():
        if cfg["encoder_embed_dim"] == width and cfg["encoder_depth"] == depth:
            return f"a SAM {name} checkpoint (encoder width {width}, depth {depth})"
    return f"a SAM checkpoint of an unknown variant (encoder width {width}, depth {depth})"


def load_sam_checkpoint(sam: Sam, path: str | Path, variant: str) -> None:
    """Load an official-format state dict into ``sam`` strictly; a mismatch raises ``ValueError``."""
    path = Path(path)
    state = _read_state_dict(path)
    expected = sam.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        first = (missing + unexpected + wrong_shape)[0]
        raise ValueError(
            f"{path.name} does not fit SAM variant {variant!r}: it looks like {_describe_state(state)}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} wrongly shaped tensors "
            f"(first: {first})")
    sam.load_state_dict(state, strict=True)


#: Boxes per mask-decoder batch on CPU (see :class:`SamSegmenter`).
CPU_DECODE_CHUNK = 4


class SamSegmenter:
    """Embed an image once, then turn pixel boxes into masks and mask-pooled 256-d features.

    Holds no per-image state: safe to share between threads. ``n_embed`` / ``n_decode`` count model
    calls (image-encoder passes / batched decode requests) for tests and profiling.

    Args:
        sam: a ``segment_anything.modeling.Sam`` (eval mode, on its device).
        weights: provenance of its weights.
        variant: the :data:`SAM_CONFIGS` key it was built from.
        decode_chunk: boxes per mask-decoder batch inside one :meth:`decode` request. None: all boxes in
            one batch on CUDA, :data:`CPU_DECODE_CHUNK` on CPU. The decoder copies the 256x64x64
            embedding once per box, so on a CPU one 30-box batch is memory-bound: measured here
            (vit_b, 2 threads) 3.03 s for 30 boxes in one batch, 1.84 s in batches of 4, 1.95 s one by one.
        encoder_bf16: run the image encoder under bf16 autocast; None: where the hardware has native bf16
            (:func:`skinapp.precision.bf16_enabled`). The embedding is returned in float32 either way.
    """

    def __init__(self, sam: Sam, weights: WeightsInfo, variant: str, decode_chunk: int | None = None,
                 encoder_bf16: bool | None = None) -> None:
        self.sam = sam.eval()
        self.encoder_bf16 = bf16_enabled(self.sam.device) if encoder_bf16 is None else bool(encoder_bf16)
        self.weights = weights
        self.variant = variant
        if decode_chunk is not None and decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1; got {decode_chunk}")
        self.decode_chunk = decode_chunk
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.n_embed = 0
        self.n_decode = 0
        self._count_lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.sam.device

    @property
    def img_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def grid_size(self) -> int:
        """Side of the (square) embedding grid."""
        return int(self.sam.prompt_encoder.image_embedding_size[0])

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def embed(self, pixels: np.ndarray) -> SamEmbedding:
        """One image-encoder pass.

        Args:
            pixels: uint8 RGB [H, W, 3].

        Returns:
            The :class:`SamEmbedding` (embedding float32 [1, 256, g, g]).
        """
        return self.embed_batch([pixels])[0]

    def embed_batch(self, images: list[np.ndarray]) -> list[SamEmbedding]:
        """One image-encoder pass over a batch of photos (each resized and padded as :meth:`embed` does).

        Args:
            images: uint8 RGB arrays [H_i, W_i, 3] (sizes may differ).

        Returns:
            One :class:`SamEmbedding` per photo, in order (as :meth:`embed` gives, within float tolerance).
        """
        inputs, sizes = [], []
        for pixels in images:
            if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3
                    or pixels.shape[2] != 3):
                raise ValueError(f"SAM expects uint8 RGB pixels [H, W, 3]; got "
                                 f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '')}")
            if min(pixels.shape[:2]) < 1:
                raise ValueError(f"SAM got an empty image {pixels.shape}")
            resized = self.transform.apply_image(np.ascontiguousarray(pixels))
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
            inputs.append(self.sam.preprocess(x))  # normalised, padded to img_size x img_size
            sizes.append(((int(resized.shape[0]), int(resized.shape[1])), (int(pixels.shape[0]), int(pixels.shape[1]))))
        with torch.inference_mode(), precision.autocast(self.device, self.encoder_bf16):
            embeddings = self.sam.image_encoder(torch.cat(inputs)).float()
        embeddings = embeddings.clone()  # normal tensors, so later stages may use them under autograd
        with self._count_lock:
            self.n_embed += len(images)
        return [SamEmbedding(embedding=embeddings[i:i + 1], input_size=input_size, original_size=original_size)
                for i, (input_size, original_size) in enumerate(sizes)]

    def _check_embedding(self, emb: SamEmbedding) -> None:
        g = self.grid_size
        if tuple(emb.embedding.shape[-3:]) != (self.sam.prompt_encoder.embed_dim, g, g):
            raise ValueError(f"embedding of shape {tuple(emb.embedding.shape)} does not come from this segmenter "
                             f"(expects [1, {self.sam.prompt_encoder.embed_dim}, {g}, {g}])")

    def _check_boxes(self, emb: SamEmbedding, boxes_xyxy: np.ndarray | torch.Tensor) -> torch.Tensor:
        boxes = (boxes_xyxy.detach().cpu().float() if torch.is_tensor(boxes_xyxy)
                 else torch.from_numpy(np.array(boxes_xyxy, dtype=np.float32)))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be [n, 4] (x0, y0, x1, y1) pixels; got {tuple(boxes.shape)}")
        if not torch.isfinite(boxes).all():
            raise ValueError("boxes contain NaN or infinite values")
        if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
            raise ValueError("boxes must have x1 >= x0 and y1 >= y0")
        h, w = emb.original_size
        return torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                            boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)

    def decode(self, emb: SamEmbedding, boxes_xyxy: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Masks for all boxes in one decode request (single-mask output), on the one cached embedding.

        The boxes go through the prompt encoder and mask decoder in batches: all at once on CUDA,
        ``decode_chunk`` at a time on CPU (faster there; see :class:`SamSegmenter`).

        Args:
            emb: the image's embedding from :meth:`embed`.
            boxes_xyxy: float [n, 4] (x0, y0, x1, y1) in the embedded image's pixels (clipped to it).

        Returns:
            masks: bool [n, H, W] at the embedded image's size (logits > ``sam.mask_threshold``).
            scores: float32 [n], SAM's predicted IoU of each mask.
        """
        logits, scores = self.decode_logits(emb, boxes_xyxy)
        return (logits > self.sam.mask_threshold).cpu().numpy(), scores

    def decode_logits(self, emb: SamEmbedding,
                      boxes_xyxy: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """Like :meth:`decode`, but the mask logits: float32 tensor [n, H, W] (upsampled, padding removed)."""
        self._check_embedding(emb)
        boxes = self._check_boxes(emb, boxes_xyxy)
        h, w = emb.original_size
        if len(boxes) == 0:
            return torch.zeros((0, h, w), device=self.device), np.zeros((0,), np.float32)
        chunk = self.decode_chunk or (len(boxes) if self.device.type == "cuda" else CPU_DECODE_CHUNK)
        with torch.inference_mode(), self._autocast():
            boxes_in = self.transform.apply_boxes_torch(boxes, emb.original_size).to(self.device)
            image_embeddings = emb.embedding.to(self.device)
            image_pe = self.sam.prompt_encoder.get_dense_pe()
            outputs = []
            for start in range(0, len(boxes_in), chunk):
                sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes_in[start:start + chunk], masks=None)
                outputs.append(self.sam.mask_decoder(
                    image_embeddings=image_embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense, multimask_output=False))
            low_res = torch.cat([o[0] for o in outputs])
            iou = torch.cat([o[1] for o in outputs])
        with torch.inference_mode():
            logits = self.sam.postprocess_masks(low_res.float(), emb.input_size, emb.original_size)[:, 0]
            scores = iou[:, 0].float().cpu().numpy().astype(np.float32)
        with self._count_lock:
            self.n_decode += 1
        return logits, scores

    def cell_weights(self, emb: SamEmbedding, masks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The fraction of each embedding cell that each mask covers.

        Pixel (y, x) of the embedded image spans [y*sy, (y+1)*sy) x [x*sx, (x+1)*sx) of the resized
        input (sy = h'/H, sx = w'/W); cell (i, j) spans [16i, 16i+16) x [16j, 16j+16) of the padded
        square. The weight is the exact area overlap, so padding cells get zero and partly covered
        cells count in proportion.

        Args:
            emb: the image's embedding.
            masks: bool or float [n, H, W] at ``emb.original_size``.

        Returns:
            float32 [n, g, g] in [0, 1].
        """
        m = (torch.from_numpy(np.array(masks, dtype=np.float32)) if isinstance(masks, np.ndarray)
             else torch.as_tensor(masks)).to(self.device, torch.float32)
        if m.ndim != 3 or tuple(m.shape[1:]) != tuple(emb.original_size):
            raise ValueError(f"masks must be [n, {emb.original_size[0]}, {emb.original_size[1]}]; "
                             f"got {tuple(m.shape)}")
        (H, W), (h_in, w_in) = emb.original_size, emb.input_size
        cell = self.img_size / self.grid_size
        rows = self._overlap(H, h_in / H, cell)  # [g, H]
        cols = self._overlap(W, w_in / W, cell)  # [g, W]
        return torch.einsum("ih,nhw,jw->nij", rows, m, cols)

    def _overlap(self, n_pixels: int, scale: float, cell: float) -> torch.Tensor:
        """[g, n_pixels]: overlap of each pixel's span with each cell, as a fraction of the cell side."""
        edges = torch.arange(n_pixels + 1, dtype=torch.float64, device=self.device) * scale
        lo, hi = edges[:-1][None, :], edges[1:][None, :]
        cells = torch.arange(self.grid_size, dtype=torch.float64, device=self.device)[:, None] * cell
        return ((torch.minimum(hi, cells + cell) - torch.maximum(lo, cells)).clamp(min=0) / cell).float()

    def pool_features(self, emb: SamEmbedding, masks: np.ndarray | torch.Tensor,
                      boxes_xyxy: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """Average of the embedding under each mask (area-weighted over the cells it covers).

        An empty mask (or one too thin to cover any cell area) falls back to its box's area when
        ``boxes_xyxy`` is given; when that is empty too, or no boxes are given, to the mean over
        the cells the image covers (never a padding cell, never a zero vector).

        Args:
            emb: the image's embedding (no further encoder pass is made).
            masks: bool [n, H, W] at ``emb.original_size``.
            boxes_xyxy: optional float [n, 4] pixel boxes, one per mask.

        Returns:
            float32 tensor [n, 256] on the segmenter's device.
        """
        self._check_embedding(emb)
        weights = self.cell_weights(emb, masks)
        n = weights.shape[0]
        if n == 0:
            return torch.zeros((0, emb.embedding.shape[1]), device=self.device)
        empty = weights.flatten(1).sum(1) <= 1e-6
        if empty.any() and boxes_xyxy is not None:
            boxes = self._check_boxes(emb, boxes_xyxy)
            if len(boxes) != n:
                raise ValueError(f"got {n} masks but {len(boxes)} boxes")
            weights[empty] = self.cell_weights(emb, self._box_masks(boxes[empty.cpu()], emb.original_size))
            empty = weights.flatten(1).sum(1) <= 1e-6
        if empty.any():
            whole = torch.ones((1, *emb.original_size), dtype=torch.float32)
            weights[empty] = self.cell_weights(emb, whole).expand(int(empty.sum()), -1, -1)
        grid = emb.embedding[0].to(self.device, torch.float32)  # [C, g, g]
        summed = torch.einsum("nij,cij->nc", weights, grid)
        return summed / weights.flatten(1).sum(1, keepdim=True)

    @staticmethod
    def _box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Float [n, H, W] masks of the pixel boxes (x0, y0, x1, y1), pixel centres inside."""
        h, w = size
        ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5
        xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
        b = boxes[:, :, None, None]
        return ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).float()


def build_segmenter(profile: str = "tiny", variant: str = "vit_b", checkpoint: str | Path | None = None,
                    device: str | torch.device = "cpu", decode_chunk: int | None = None,
                    encoder_bf16: bool | None = None, sdpa: bool | None = None) -> SamSegmenter:
    """A :class:`SamSegmenter` for a profile (``decode_chunk``, ``encoder_bf16``: see :class:`SamSegmenter`;
    ``sdpa``: fused attention in the image encoder, :func:`skinapp.concepts.sam_sdpa.sdpa_default`).

    Args:
        profile: "tiny" (small random SAM, 256 px) or "full" (an official variant, 1024 px).
        variant: "vit_b", "vit_l" or "vit_h" for the full profile (ignored for "tiny").
        checkpoint: an official-format ``sam_vit_*.pth`` (plain state dict) or ``.safetensors``; without
            one the weights are random and marked untrained.
        device: where the model runs.

    Raises:
        ValueError: unknown profile/variant, or a checkpoint that does not fit the architecture.
    """
    if profile == "tiny":
        variant = "tiny"
    elif profile == "full":
        if variant not in SAM_CONFIGS or variant == "tiny":
            raise ValueError(f"unknown SAM variant {variant!r}; choose one of vit_b, vit_l, vit_h")
    else:
        raise ValueError(f"unknown profile {profile!r}; choose 'tiny' or 'full'")
    sam = build_sam(copy.deepcopy(SAM_CONFIGS[variant]))
    name = f"sam_{variant}"
    if checkpoint is not None:
        load_sam_checkpoint(sam, checkpoint, variant)
        weights = WeightsInfo(name=name, trained=True, source=str(checkpoint))
    else:
        weights = untrained(name, "random init (tiny profile)" if profile == "tiny" else "random init (no checkpoint)")
        if profile == "full":
            log.warning("SAM %s has random weights (no checkpoint given): masks are meaningless", variant)
    sam.to(device)
    use_sdpa(sam.image_encoder, sdpa_default(sdpa))
    return SamSegmenter(sam, weights, variant, decode_chunk=decode_chunk, encoder_bf16=encoder_bf16)
