"""transformers ``CLIPModel`` checkpoints (e.g. MONET, ``suinleelab/monet``) as open_clip ViT CLIP models.

MONET (Kim et al., "Transparent medical image AI via an image-text foundation model grounded in medical
literature", Nature Medicine 2024) is a CLIP ViT-L/14 distributed in the transformers layout: a directory
with ``config.json`` (a ``CLIPConfig``), ``model.safetensors``, ``preprocessor_config.json`` (its image
size and normalisation: MONET's says ImageNet's mean/std, not OpenAI's) and the CLIP BPE tokenizer files
(``vocab.json``, ``merges.txt``). The explainers run on open_clip's modules, so the weights are renamed
into an open_clip ``CLIP`` state dict; the computation is the same (checked in tests/test_clip_formats.py:
image and text features equal to the transformers model's within 1e-5).

Mapping (transformers -> open_clip), per tower; ``L`` is a layer index:
    embeddings.class_embedding                  -> visual.class_embedding
    embeddings.patch_embedding.weight           -> visual.conv1.weight
    embeddings.position_embedding.weight        -> visual.positional_embedding / positional_embedding
    embeddings.token_embedding.weight           -> token_embedding.weight
    pre_layrnorm                                -> visual.ln_pre
    encoder.layers.L.layer_norm1 / layer_norm2  -> (visual.)transformer.resblocks.L.ln_1 / ln_2
    encoder.layers.L.self_attn.{q,k,v}_proj     -> ...resblocks.L.attn.in_proj_{weight,bias} (q, k, v stacked)
    encoder.layers.L.self_attn.out_proj         -> ...resblocks.L.attn.out_proj
    encoder.layers.L.mlp.fc1 / fc2              -> ...resblocks.L.mlp.c_fc / c_proj
    post_layernorm / final_layer_norm           -> visual.ln_post / ln_final
    visual_projection.weight [E, D]             -> visual.proj [D, E] (transposed)
    text_projection.weight [E, W]               -> text_projection [W, E] (transposed)
    logit_scale                                 -> logit_scale
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from skinapp.checkpoints import load_tensors
from skinapp.clip.architecture import resolve_config
from skinapp.provenance import WeightsInfo

log = logging.getLogger(__name__)

#: transformers activation name -> open_clip ``quick_gelu``.
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
_OPEN_CLIP_LN_EPS = 1e-5


def _tower_config(cfg: dict[str, Any], what: str) -> dict[str, Any]:
    act = cfg.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"{what}: activation {act!r} is not supported (only {sorted(_ACTIVATIONS)})")
    eps = float(cfg.get("layer_norm_eps", _OPEN_CLIP_LN_EPS))
    if abs(eps - _OPEN_CLIP_LN_EPS) > 1e-12:
        raise ValueError(f"{what}: layer_norm_eps={eps} differs from open_clip's {_OPEN_CLIP_LN_EPS}")
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if width % heads:
        raise ValueError(f"{what}: hidden_size {width} is not a multiple of num_attention_heads {heads}")
    return cfg


def open_clip_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The open_clip ``CLIP`` constructor config of a transformers ``CLIPConfig`` (as its ``config.json`` dict).

    Raises:
        ValueError: not a CLIP config, or a setting open_clip's CLIP cannot reproduce (activation, LayerNorm eps,
            different activations in the two towers).
    """
    if hf_config.get("model_type", "clip") != "clip" or "vision_config" not in hf_config:
        raise ValueError(f"not a transformers CLIPModel config (model_type={hf_config.get('model_type')!r})")
    v = _tower_config(hf_config["vision_config"], "vision_config")
    t = _tower_config(hf_config["text_config"], "text_config")
    if v.get("hidden_act", "quick_gelu") != t.get("hidden_act", "quick_gelu"):
        raise ValueError("the two towers use different activations; open_clip's CLIP uses one for both")
    v_width, t_width = int(v["hidden_size"]), int(t["hidden_size"])
    return {
        "embed_dim": int(hf_config.get("projection_dim", 512)),
        "vision_cfg": {"image_size": int(v.get("image_size", 224)), "patch_size": int(v.get("patch_size", 32)),
                       "width": v_width, "layers": int(v["num_hidden_layers"]),
                       "head_width": v_width // int(v["num_attention_heads"]),
                       "mlp_ratio": int(v["intermediate_size"]) / v_width,
                       "pool_type": "tok", "final_ln_after_pool": False},
        "text_cfg": {"context_length": int(t.get("max_position_embeddings", 77)),
                     "vocab_size": int(t.get("vocab_size", 49408)), "width": t_width,
                     "heads": int(t["num_attention_heads"]), "layers": int(t["num_hidden_layers"]),
                     "mlp_ratio": int(t["intermediate_size"]) / t_width,
                     "pool_type": "argmax", "no_causal_mask": False, "final_ln_after_pool": False},
        "quick_gelu": _ACTIVATIONS[v.get("hidden_act", "quick_gelu")],
    }


def _blocks(hf: dict[str, torch.Tensor], src: str, dst: str, n_layers: int, out: dict[str, torch.Tensor]) -> None:
    for i in range(n_layers):
        s, d = f"{src}.encoder.layers.{i}", f"{dst}transformer.resblocks.{i}"
        out[f"{d}.ln_1.weight"], out[f"{d}.ln_1.bias"] = hf[f"{s}.layer_norm1.weight"], hf[f"{s}.layer_norm1.bias"]
        out[f"{d}.ln_2.weight"], out[f"{d}.ln_2.bias"] = hf[f"{s}.layer_norm2.weight"], hf[f"{s}.layer_norm2.bias"]
        for part in ("weight", "bias"):
            out[f"{d}.attn.in_proj_{part}"] = torch.cat([hf[f"{s}.self_attn.{p}_proj.{part}"] for p in "qkv"])
            out[f"{d}.attn.out_proj.{part}"] = hf[f"{s}.self_attn.out_proj.{part}"]
            out[f"{d}.mlp.c_fc.{part}"] = hf[f"{s}.mlp.fc1.{part}"]
            out[f"{d}.mlp.c_proj.{part}"] = hf[f"{s}.mlp.fc2.{part}"]


def convert_state_dict(hf: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state dict -> an open_clip CLIP state dict for ``config`` (see the module table).

    Raises:
        KeyError: a tensor the mapping needs is missing (not a CLIPModel state dict, or a different depth).
    """
    hf = {k: v for k, v in hf.items() if not k.endswith("position_ids")}  # buffers older files carry
    out: dict[str, torch.Tensor] = {}
    vm, tm = "vision_model", "text_model"
    out["visual.class_embedding"] = hf[f"{vm}.embeddings.class_embedding"]
    out["visual.conv1.weight"] = hf[f"{vm}.embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = hf[f"{vm}.embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"] = hf[f"{vm}.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = hf[f"{vm}.pre_layrnorm.bias"]
    _blocks(hf, vm, "visual.", int(config["vision_cfg"]["layers"]), out)
    out["visual.ln_post.weight"] = hf[f"{vm}.post_layernorm.weight"]
    out["visual.ln_post.bias"] = hf[f"{vm}.post_layernorm.bias"]
    out["visual.proj"] = hf["visual_projection.weight"].T.contiguous()
    out["token_embedding.weight"] = hf[f"{tm}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = hf[f"{tm}.embeddings.position_embedding.weight"]
    _blocks(hf, tm, "", int(config["text_cfg"]["layers"]), out)
    out["ln_final.weight"] = hf[f"{tm}.final_layer_norm.weight"]
    out["ln_final.bias"] = hf[f"{tm}.final_layer_norm.bias"]
    out["text_projection"] = hf["text_projection.weight"].T.contiguous()
    out["logit_scale"] = hf["logit_scale"].reshape(())
    return out


def read_preprocessor(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """(mean, std, crop size) from a transformers ``preprocessor_config.json``; OpenAI's when it is absent.

    Raises:
        ValueError: the file states a mean/std that is not three numbers.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    path = directory / "preprocessor_config.json"
    if not path.is_file():
        log.warning("%s has no preprocessor_config.json: using OpenAI's normalisation", directory.name)
        return OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, None
    cfg = json.loads(path.read_text(encoding="utf-8"))
    mean, std = cfg.get("image_mean", OPENAI_DATASET_MEAN), cfg.get("image_std", OPENAI_DATASET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path.name}: image_mean and image_std must have 3 values, got {mean} and {std}")
    crop = cfg.get("crop_size", cfg.get("size"))
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("shortest_edge"))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), (int(crop) if crop else None)


def check_clip_bpe(directory: Path) -> None:
    """Refuse a tokenizer whose vocabulary is not CLIP's BPE (open_clip's tokenizer is used for the text).

    Compares ``vocab.json`` (when present) with open_clip's byte-level BPE vocabulary, token by token.
    Raises:
        ValueError: the vocabularies differ.
    """
    import open_clip

    path = directory / "vocab.json"
    if not path.is_file():
        log.warning("%s has no vocab.json: assuming CLIP's BPE tokenizer", directory.name)
        return
    theirs = json.loads(path.read_text(encoding="utf-8"))
    tok = open_clip.SimpleTokenizer()
    # the two special tokens are spelt differently ("<|startoftext|>" vs open_clip 3's "<start_of_text>"):
    # compare their ids, and every other token by spelling and id
    specials = {"<|startoftext|>": tok.sot_token_id, "<|endoftext|>": tok.eot_token_id}
    ours = {k: v for k, v in tok.encoder.items() if v not in specials.values()}
    rest = {k: v for k, v in theirs.items() if k not in specials}
    if rest != ours or any(theirs.get(k) != v for k, v in specials.items()):
        diff = sorted(set(rest.items()) ^ set(ours.items()))[:3]
        raise ValueError(f"{directory.name}/vocab.json is not CLIP's BPE vocabulary (e.g. {diff}); unsupported")


def load_hf_clip(directory: str | Path, device: str | torch.device = "cpu", label: str = "MONET",
                 licence: str = ""):
    """Load a transformers CLIPModel directory as a :class:`~skinapp.clip.model.ClipBundle` (open_clip model).

    Args:
        directory: holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (+ tokenizer).
        device: where the model runs.
        label, licence: for the UI.

    Raises:
        FileNotFoundError: the directory or a required file is missing.
        ValueError: unsupported config, tokenizer, or weights that do not fit.
    """
    from skinapp.clip.model import make_bundle, model_from_state

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory.name}: {name} not found (a transformers CLIPModel directory)")
    config = open_clip_config(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    state = convert_state_dict(load_tensors(directory / "model.safetensors"), config)
    config, notes = resolve_config(config, state, f"{directory.name}/model.safetensors")
    mean, std, crop = read_preprocessor(directory)
    size = int(config["vision_cfg"]["image_size"])
    if crop is not None and crop != size:
        raise ValueError(f"{directory.name}: preprocessor crop {crop} px differs from the model's {size} px input")
    check_clip_bpe(directory)
    model = model_from_state(config, state, f"{directory.name} (converted weights)")
    for note in notes:
        log.info("%s: %s", directory.name, note)
    weights = WeightsInfo(name="clip", trained=True, source=f"{directory} (transformers CLIPModel, converted)")
    bundle = make_bundle(model, config, weights, label, device, mean=mean, std=std)
    bundle.licence = licence
    log.info("Loaded %s from %s (%d px, mean %s)", label, directory, size, mean)
    return bundle
