"""Segment Anything as a stateless per-image stage: one image embedding, all boxes decoded in one call.

Built from segment_anything's own modules (``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``
with ``TwoWayTransformer``, ``Sam``) from configs-as-data (:mod:`skinapp.concepts.sam_build`, re-exported
here). Unlike ``SamPredictor``, nothing about an image is stored on the :class:`SamSegmenter`:
:meth:`SamSegmenter.embed` returns a :class:`SamEmbedding` that the caller keeps (and caches), so one
segmenter serves several users at once; :meth:`SamSegmenter.decode_interactive` is SAM's click-by-click step.

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
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from skinapp import precision
from skinapp.concepts.sam_build import SAM_CONFIGS, build_sam, load_sam_checkpoint
from skinapp.precision import bf16_enabled
from skinapp.provenance import WeightsInfo, untrained

log = logging.getLogger(__name__)


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
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"SAM expects uint8 RGB pixels [H, W, 3]; got "
                             f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '')}")
        if min(pixels.shape[:2]) < 1:
            raise ValueError(f"SAM got an empty image {pixels.shape}")
        resized = self.transform.apply_image(np.ascontiguousarray(pixels))
        with torch.inference_mode(), precision.autocast(self.device, self.encoder_bf16):
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].float()
            embedding = self.sam.image_encoder(self.sam.preprocess(x)).float()
        embedding = embedding.clone()  # a normal tensor, so later stages may use it under autograd
        with self._count_lock:
            self.n_embed += 1
        return SamEmbedding(embedding=embedding, input_size=(int(resized.shape[0]), int(resized.shape[1])),
                            original_size=(int(pixels.shape[0]), int(pixels.shape[1])))

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

    def decode_interactive(self, emb: SamEmbedding, box: np.ndarray | None, points: np.ndarray, labels: np.ndarray,
                           mask_input: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """One interactive step (``SamPredictor.predict`` with ``multimask_output=False``): box + clicks + the
        previous low-res logits through the prompt encoder and mask decoder, on the cached embedding.

        Args:
            emb: the image's embedding from :meth:`embed` (no encoder pass here).
            box: float [4] (x0, y0, x1, y1) in the embedded image's pixels (clipped to it), or None.
            points: float [k, 2] (x, y) pixels; labels: int [k], 1 positive / 0 negative (k may be 0).
            mask_input: float [1, 1, 4g, 4g] low-res logits of the previous step, or None.

        Returns:
            mask: bool [H, W] at the embedded image's size; low_res_logits: float32 [1, 1, 4g, 4g] (the next
            step's ``mask_input``); score: SAM's predicted IoU of the mask.

        Raises:
            ValueError: a foreign embedding, neither box nor point, mismatched points / labels, a bad
                ``mask_input`` shape.
        """
        self._check_embedding(emb)
        pts = np.asarray(points, np.float32).reshape(-1, 2)
        lab = np.asarray(labels, np.int64).reshape(-1)
        if len(pts) != len(lab):
            raise ValueError(f"got {len(pts)} points but {len(lab)} labels")
        if box is None and not len(pts):
            raise ValueError("an interactive step needs a box or at least one point")
        expected = (1, 1, *self.sam.prompt_encoder.mask_input_size)
        if mask_input is not None and tuple(np.shape(mask_input)) != expected:
            raise ValueError(f"mask_input must be {list(expected)} low-res logits; got {list(np.shape(mask_input))}")
        with torch.inference_mode():
            point_prompt = box_prompt = dense_in = None
            if len(pts):
                coords = self.transform.apply_coords_torch(torch.from_numpy(pts), emb.original_size)
                point_prompt = (coords[None].to(self.device), torch.from_numpy(lab)[None].to(self.device))
            if box is not None:
                box_t = self._check_boxes(emb, np.asarray(box, np.float32).reshape(1, 4))
                box_prompt = self.transform.apply_boxes_torch(box_t, emb.original_size).to(self.device)
            if mask_input is not None:
                dense_in = torch.as_tensor(np.asarray(mask_input, np.float32), device=self.device)
            sparse, dense = self.sam.prompt_encoder(points=point_prompt, boxes=box_prompt, masks=dense_in)
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=emb.embedding.to(self.device), image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
            logits = self.sam.postprocess_masks(low_res.float(), emb.input_size, emb.original_size)[0, 0]
            mask = (logits > self.sam.mask_threshold).cpu().numpy()
        with self._count_lock:
            self.n_decode += 1
        return mask, low_res.float().cpu().numpy(), float(iou[0, 0])

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
                    encoder_bf16: bool | None = None) -> SamSegmenter:
    """A :class:`SamSegmenter` for a profile (``decode_chunk``, ``encoder_bf16``: see :class:`SamSegmenter`).

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
    return SamSegmenter(sam, weights, variant, decode_chunk=decode_chunk, encoder_bf16=encoder_bf16)
