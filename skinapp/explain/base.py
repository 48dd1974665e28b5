"""Shared machinery of the phrase explainers: the cached image pass and the last-block gradient context.

All three explainers read only the LAST vision block of an open_clip ViT. The image pass runs the
whole image tower once and keeps the last block's input tokens ``x_in`` [L, D] (detached), so any
number of phrases can be explained without touching the earlier blocks again.

:class:`LastBlock` recomputes the last block and the head in float32 from ``x_in`` with the model's
own modules and parameters (``ln_1``, the packed in-projection, ``out_proj``, ``ls_1``/``ls_2``,
``ln_2`` + ``mlp``, ``ln_post``, ``proj``). Only the class token reaches the image feature (token
pooling), so only its attention row is computed. :class:`GradContext` runs that graph once per batch
of phrases and gets every per-phrase gradient from ONE batched backward (``is_grads_batched``: S is a
vector over phrases). Explainers (one small class per method, as in pytorch-grad-cam) turn those
cached tensors into patch maps.

Notation (explainers.md): X = ln_1(x_in); q, k, v = in-projection of X with bias, [L, D];
o = attention output before the out-projection; S = cos(f_I, f_T).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

#: Grad E-CLIP / MedGrad E-CLIP attention modes (see grad_eclip.py).
ECLIP_MODES = ("multihead", "official")


def vision_tower(model: nn.Module) -> nn.Module:
    """The open_clip VisionTransformer of a CLIP model (or the tower itself)."""
    visual = getattr(model, "visual", model)
    if not hasattr(visual, "transformer") or not hasattr(visual.transformer, "resblocks"):
        raise ValueError(f"Phrase explanations need an open_clip ViT CLIP; got {type(visual).__name__} "
                         "(ResNet and timm towers are not supported).")
    return visual


def token_layout(transformer: nn.Module) -> str:
    """"batch_first" ([N, L, D], open_clip 3.x) or "length_first" ([L, N, D], OpenAI CLIP)."""
    return "batch_first" if getattr(transformer, "batch_first", False) else "length_first"


def tokens_to_ld(x: torch.Tensor, layout: str, n_tokens: int) -> torch.Tensor:
    """Tokens of image 0 as [L, D] from a captured [N, L, D] or [L, N, D] tensor; the shape is checked."""
    if x.ndim != 3:
        raise ValueError(f"Expected 3-D tokens, got {tuple(x.shape)}")
    tok = x[0] if layout == "batch_first" else x[:, 0]
    if tok.shape[0] != n_tokens:
        raise ValueError(f"Token layout check failed: the transformer reports {layout} but the last block's "
                         f"input has shape {tuple(x.shape)} (expected {n_tokens} tokens).")
    return tok


class LastBlock:
    """A float32 functional view of the last vision block and the head.

    Args:
        model: an open_clip CLIP (batch-first or length-first transformer, any parameter dtype).
    """

    def __init__(self, model: nn.Module):
        visual = vision_tower(model)
        block = visual.transformer.resblocks[-1]
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
            raise ValueError("The last vision block must be open_clip's ResidualAttentionBlock with a packed "
                             "nn.MultiheadAttention (custom/qk-norm blocks are not supported).")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("Only class-token pooling is supported (no attentional pooler, pool_type 'tok').")
        self.visual = visual
        self.block = block
        self.heads = int(attn.num_heads)
        self.grid = tuple(int(g) for g in visual.grid_size)

        def f32(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().float()

        self.w_in, self.b_in = f32(attn.in_proj_weight), f32(attn.in_proj_bias)
        self.w_out, self.b_out = f32(attn.out_proj.weight), f32(attn.out_proj.bias)
        self.proj = f32(visual.proj) if visual.proj is not None else None

    # --- per-token modules, run in float32 -------------------------------------------------------
    @staticmethod
    def _ln(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(norm, nn.Identity):
            return x
        return F.layer_norm(x, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)

    @staticmethod
    def _scale(ls: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if isinstance(ls, nn.Identity) else x * ls.gamma.float()

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block.mlp
        x = F.linear(x, mlp.c_fc.weight.float(), f32_or_none(mlp.c_fc.bias))
        x = mlp.gelu(x)
        return F.linear(x, mlp.c_proj.weight.float(), f32_or_none(mlp.c_proj.bias))

    # --- the block ----------------------------------------------------------------------------------
    def ln_1(self, x_in: torch.Tensor) -> torch.Tensor:
        """X = ln_1(x_in), [L, D]."""
        return self._ln(self.block.ln_1, x_in)

    def qkv(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw in-projection (with bias) q, k, v, each [L, D]."""
        return F.linear(X, self.w_in, self.b_in).chunk(3, dim=-1)

    def attend_cls(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention output of the class token before out-projection, o_cls [D], with ``heads`` heads."""
        L, D = k.shape
        dh = D // heads
        qh = q[0].view(heads, 1, dh) * dh ** -0.5
        kh, vh = k.view(L, heads, dh).transpose(0, 1), v.view(L, heads, dh).transpose(0, 1)
        attn = torch.softmax(qh @ kh.transpose(1, 2), dim=-1)  # [H, 1, L]
        return (attn @ vh).reshape(D)

    def head(self, x_in_cls: torch.Tensor, o_cls: torch.Tensor) -> torch.Tensor:
        """Image feature f_I [E] from the class token's residual input and attention output."""
        x = x_in_cls + self._scale(self.block.ls_1, F.linear(o_cls, self.w_out, self.b_out))
        x = x + self._scale(self.block.ls_2, self._mlp(self._ln(self.block.ln_2, x)))
        x = self._ln(self.visual.ln_post, x)
        return x @ self.proj if self.proj is not None else x


def f32_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


@dataclass
class ImagePass:
    """What one image pass leaves for the explainers (compute once per photo, reuse for any phrases).

    Attributes:
        x_in: float32 [L, D], the last vision block's input tokens (class token first), detached.
        image: float32 [1, 3, H, W], the model-input tensor (for metrics and display).
        image_features: float32 [E], the real forward's image feature (not normalised).
        entropy_weight: float32 [gh, gw] in [0, 1] (MedGrad E-CLIP), or None if not computed.
        grid: (gh, gw) patch grid.
        layout: token layout found on the model ("batch_first" or "length_first").
        weights: provenance of the CLIP weights.
    """

    x_in: torch.Tensor
    image: torch.Tensor
    image_features: torch.Tensor
    entropy_weight: torch.Tensor | None
    grid: tuple[int, int]
    layout: str
    weights: WeightsInfo
    model_ref: int = field(default=0, repr=False)


class GradContext:
    """The last-block graph for one image pass and a batch of T text features, with lazy batched gradients.

    Args:
        block: the model's :class:`LastBlock`.
        image_pass: the cached image pass.
        text_features: [T, E] (normalised or not).
    """

    def __init__(self, block: LastBlock, image_pass: ImagePass, text_features: torch.Tensor):
        self.block = block
        self.image_pass = image_pass
        self.grid = image_pass.grid
        self.entropy_weight = image_pass.entropy_weight
        self.device = block.w_in.device
        if self.entropy_weight is not None:
            self.entropy_weight = self.entropy_weight.to(self.device)
        self.text = F.normalize(text_features.detach().float().to(self.device), dim=-1)
        self.T = self.text.shape[0]
        self._cache: dict[str, torch.Tensor] = {}
        with torch.enable_grad():
            self.x_in = image_pass.x_in.detach().float().to(self.device).clone().requires_grad_(True)
            self.X = block.ln_1(self.x_in)
            self.q, self.k, self.v = block.qkv(self.X)
            self.o_cls = block.attend_cls(self.q, self.k, self.v, block.heads)
            self.f = block.head(self.x_in[0], self.o_cls)
            self.S = F.normalize(self.f, dim=-1) @ self.text.T  # [T]
        self._eye = torch.eye(self.T, device=self.device)

    @property
    def similarities(self) -> torch.Tensor:
        """S [T] from the real (multi-head) forward."""
        return self.S.detach()

    def _grads(self, outputs: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per-phrase gradients of outputs [T] w.r.t. inputs, from one batched backward: each [T, *input]."""
        return torch.autograd.grad(outputs, inputs, grad_outputs=self._eye, is_grads_batched=True,
                                   retain_graph=True)

    def grad_tokens(self, target: str) -> torch.Tensor:
        """dS/dA [T, L, D] for A = x_in ("x_in", block input) or A = X ("ln_1", ln_1's output)."""
        key = f"grad_{target}"
        if key not in self._cache:
            tensor = {"x_in": self.x_in, "ln_1": self.X}[target]
            with torch.enable_grad():
                (self._cache[key],) = self._grads(self.S, [tensor])
        return self._cache[key]

    def grad_o_cls(self, mode: str) -> torch.Tensor:
        """Channel importance w = dS/do_cls [T, D].

        "multihead": the model's real attention. "official": the Grad E-CLIP reference recomputes
        the last block as ONE head over all D channels (scale D**-0.5); S and w then come from that
        modified forward, which is what the published code does.
        """
        key = f"w_{mode}"
        if key not in self._cache:
            with torch.enable_grad():
                if mode == "multihead":
                    (self._cache[key],) = self._grads(self.S, [self.o_cls])
                elif mode == "official":
                    o1 = self.block.attend_cls(self.q, self.k, self.v, heads=1)
                    f1 = self.block.head(self.x_in[0], o1)
                    s1 = F.normalize(f1, dim=-1) @ self.text.T
                    (self._cache[key],) = self._grads(s1, [o1])
                else:
                    raise ValueError(f"Unknown eclip_mode {mode!r}; choose from {ECLIP_MODES}")
        return self._cache[key]

    @property
    def patch_v(self) -> torch.Tensor:
        """v of the patch tokens [P, D] (detached)."""
        return self.v[1:].detach()

    def qk_lambda(self, mode: str) -> torch.Tensor:
        """Loosened spatial weight from cos(q_cls, k_i) over patches, min-max to [0, 1].

        Returns [P] for "official" (all D channels as one head) or [H, P] for "multihead" (per head).
        """
        q, k = self.q.detach(), self.k.detach()
        if mode == "official":
            return minmax(F.cosine_similarity(q[:1], k[1:], dim=-1), dim=-1)
        H = self.block.heads
        dh = q.shape[1] // H
        qh, kh = q[0].view(H, 1, dh), k[1:].view(-1, H, dh).transpose(0, 1)  # [H,1,dh], [H,P,dh]
        return minmax(F.cosine_similarity(qh, kh, dim=-1), dim=-1)  # [H, P]

    def to_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """[T, P] -> [T, gh, gw]."""
        return maps.reshape(maps.shape[0], *self.grid)


def minmax(x: torch.Tensor, dim: int | tuple[int, ...] = -1, eps: float = 1e-12) -> torch.Tensor:
    """Min-max normalise to [0, 1] along ``dim``; a constant slice becomes all zeros (never NaN)."""
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    span = hi - lo
    return torch.where(span > eps, (x - lo) / span.clamp_min(eps), torch.zeros_like(x))


class Explainer(ABC):
    """One phrase-explanation method: cached gradient context -> raw patch maps [T, gh, gw] (after ReLU)."""

    #: registry key, e.g. "gradcam".
    name: str = ""

    @abstractmethod
    def __call__(self, ctx: GradContext) -> torch.Tensor:
        """Raw maps [T, gh, gw], non-negative, not normalised."""
