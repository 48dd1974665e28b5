"""The naive explainer path, for timing comparisons only: one full forward + backward per phrase and method.

It reads the last block through hooks on the real modules (x_in via a pre-hook on the block; X and the
attention output y via hooks on ``attn``; dS/do = dS/dy W_out). Results equal the fast path's
(multi-head mode); use :func:`skinapp.explain.explain_from_pass` in real code.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from skinapp.explain.base import minmax, token_layout, tokens_to_ld, vision_tower


def _forward_with_hooks(model: nn.Module, image: torch.Tensor, leaf_input: bool) -> tuple[torch.Tensor, dict]:
    visual = vision_tower(model)
    block = visual.transformer.resblocks[-1]
    n_tokens = 1 + visual.grid_size[0] * visual.grid_size[1]
    layout = token_layout(visual.transformer)
    store: dict = {"layout": layout, "n": n_tokens}

    def pre_block(mod, args):
        if leaf_input:
            leaf = args[0].detach().requires_grad_(True)
            store["x_in"] = leaf
            return (leaf,) + args[1:]
        return None

    def pre_attn(mod, args, kwargs):
        store["X"] = args[0]

    def post_attn(mod, args, kwargs, out):
        store["y"] = out[0]

    handles = [block.register_forward_pre_hook(pre_block),
               block.attn.register_forward_pre_hook(pre_attn, with_kwargs=True),
               block.attn.register_forward_hook(post_attn, with_kwargs=True)]
    try:
        f = model.encode_image(image)
    finally:
        for h in handles:
            h.remove()
    return f[0], store


def naive_map(model: nn.Module, image: torch.Tensor, text: torch.Tensor, method: str,
              entropy_w: torch.Tensor | None = None) -> torch.Tensor:
    """One method's raw map [P] for one text feature [E]: a full forward and backward."""
    visual = vision_tower(model)
    block = visual.transformer.resblocks[-1]
    f, st = _forward_with_hooks(model, image, leaf_input=(method == "gradcam"))
    S = F.cosine_similarity(f, text, dim=0)
    ld = lambda x: tokens_to_ld(x, st["layout"], st["n"])  # noqa: E731
    if method == "gradcam":
        (g,) = torch.autograd.grad(S, [st["x_in"]])
        A, g = ld(st["x_in"]).detach(), ld(g)
        return F.relu(A[1:] @ g.mean(0))
    (gy,) = torch.autograd.grad(S, [st["y"]])
    w = ld(gy)[0] @ block.attn.out_proj.weight
    q, k, v = F.linear(ld(st["X"]).detach(), block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    if method == "medgrad_eclip":
        return F.relu((v[1:] @ w) * entropy_w.flatten())
    H = block.attn.num_heads
    dh = q.shape[1] // H
    lam = minmax(F.cosine_similarity(q[0].view(H, 1, dh), k[1:].view(-1, H, dh).transpose(0, 1), dim=-1))
    per_head = (v[1:].view(-1, H, dh) * w.view(1, H, dh)).sum(-1)  # [P, H]
    return F.relu((per_head * lam.T).sum(-1))


def naive_maps(model: nn.Module, image: torch.Tensor, text_features: torch.Tensor, methods,
               entropy_w: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """method -> [T, P] raw maps, each from its own full forward + backward."""
    return {m: torch.stack([naive_map(model, image, t, m, entropy_w).detach() for t in text_features])
            for m in methods}
