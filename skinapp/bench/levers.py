"""Speed levers side by side with float32 in one process: times (interleaved), FLOPs, GFLOP/s, agreement.

Each lever is timed against its float32 reference in rounds A B A B ... (best of the rounds), so a busy shared
CPU slows both alike. FLOPs are counted once per model pass with ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions, attention; elementwise work and Grounding DINO's bilinear sampling count zero), and the
achieved GFLOP/s is set against this CPU's peak, measured in the same run as the best of a few large
square matmuls (2048 x 2048; 1024 in the quick form) in float32 and in bf16.

Levers the app has no switch for are measured and marked ``measured_only``: dynamic int8 quantisation of every
``nn.Linear`` (``torch.ao.quantization.quantize_dynamic``, fbgemm; on a copy of the model) and, when asked,
``torch.compile`` of SAM's encoder (inductor; its first call, the compilation, is reported apart).

A lever becomes a recommended default (:func:`recommend`) only when the app can switch to it, it is faster by
more than 5 % and its agreement holds: SAM embedding cosine >= 0.999 and mask IoU >= 0.98 on the same boxes;
Grounding DINO the same boxes above threshold (each reference box matched, same prompt, IoU >= 0.9) and sigmoid
logits within 0.05.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from skinapp.bench.models import BenchModels
from skinapp.bench.timing import synchronize
from skinapp.concepts import gdino_speed
from skinapp.concepts.detector import build_caption, select_detections
from skinapp.concepts.sam_sdpa import sdpa_enabled, use_sdpa
from skinapp.concepts.types import Detections

SAM_COSINE, SAM_MASK_IOU = 0.999, 0.98
GDINO_BOX_IOU, GDINO_PROB_DIFF = 0.9, 0.05
MIN_GAIN = 1.05
# the SAM encoder settings the app can switch to (SKINAPP_BF16, SKINAPP_SAM_SDPA)
SAM_SWITCHES = ("fp32", "fp32_sdpa", "bf16", "bf16_sdpa")


def peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """Best achieved GFLOP/s of an n x n matmul in ``dtype`` (2 n^3 FLOPs), on the CPU."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (FlopCounterMode's count; see module docstring)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def interleaved(variants: dict[str, tuple[Callable[[], None], Callable[[], Any]]], rounds: int, warmup: int,
                device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Time each variant (``setup``, ``fn``) in rounds A B A B; best seconds and last output of each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, Any] = {}
    for r in range(warmup + rounds):
        for name, (setup, fn) in variants.items():
            setup()
            synchronize(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            synchronize(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}, outputs


def int8_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` dynamically quantised to int8 (weights int8 per tensor,
    activations quantised per batch at run time; fbgemm on x86). The original is left as it is."""
    with warnings.catch_warnings():  # torch.ao's quantised tensors are deprecated in favour of torchao (not used)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)


def _mask_ious(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float((x & y).sum() / max((x | y).sum(), 1)) for x, y in zip(a, b)]


def sam_levers(models: BenchModels, photo: np.ndarray, boxes: np.ndarray, rounds: int, warmup: int,
               compile_encoder: bool = False) -> dict:
    """SAM's image encoder: fp32, fp32 + SDPA, bf16, bf16 + SDPA, int8 dynamic (+ SDPA) and, with
    ``compile_encoder``, bf16 + SDPA under ``torch.compile``; agreement against fp32 on the same boxes."""
    seg = models.segmenter
    encoder = seg.sam.image_encoder
    before = (seg.encoder_bf16, sdpa_enabled(encoder))
    int8_encoder = int8_dynamic(encoder)
    use_sdpa(int8_encoder, True)

    def setting(bf16: bool, sdpa: bool, module: torch.nn.Module = encoder) -> Callable[[], None]:
        def setup() -> None:
            seg.encoder_bf16 = bf16
            use_sdpa(encoder, sdpa)
            seg.sam.image_encoder = module
        return setup

    variants = {name: (setting(bf16, sdpa), lambda: seg.embed(photo))
                for name, bf16, sdpa in (("fp32", False, False), ("fp32_sdpa", False, True),
                                         ("bf16", True, False), ("bf16_sdpa", True, True))}
    variants["int8_dynamic_sdpa"] = (setting(False, True, int8_encoder), lambda: seg.embed(photo))
    compile_seconds = None
    try:
        if compile_encoder:
            compiled = torch.compile(encoder)
            setting(True, True, compiled)()
            t0 = time.perf_counter()
            seg.embed(photo)  # the compilation
            compile_seconds = time.perf_counter() - t0
            variants["bf16_sdpa_compiled"] = (setting(True, True, compiled), lambda: seg.embed(photo))
        times, embs = interleaved(variants, rounds, warmup, models.device)
        setting(False, False)()
        flops = count_flops(lambda: seg.embed(photo))
    finally:
        setting(*before)()
    ref_masks, _ = seg.decode(embs["fp32"], boxes)
    rows = {}
    for name, emb in embs.items():
        masks, _ = seg.decode(emb, boxes)
        ious = _mask_ious(ref_masks, masks)
        cos = torch.nn.functional.cosine_similarity(embs["fp32"].embedding.flatten().double(),
                                                    emb.embedding.flatten().double(), dim=0)
        rows[name] = {"seconds": times[name], "speedup": times["fp32"] / times[name],
                      "gflops_per_s": flops / times[name] / 1e9, "embedding_cosine": float(cos),
                      "min_mask_iou": min(ious) if ious else 1.0}
        row = rows[name]
        row["agrees"] = row["embedding_cosine"] >= SAM_COSINE and row["min_mask_iou"] >= SAM_MASK_IOU
        row["measured_only"] = name not in SAM_SWITCHES
    return {"flops": flops, "n_boxes": len(boxes), "variants": rows, "default": _sam_default_name(before),
            "compile_seconds": compile_seconds}


def _sam_default_name(setting: tuple[bool, bool]) -> str:
    return ("bf16" if setting[0] else "fp32") + ("_sdpa" if setting[1] else "")


def box_agreement(ref: Detections, other: Detections, min_iou: float = GDINO_BOX_IOU) -> dict[str, Any]:
    """How many of ``ref``'s boxes ``other`` has too: same prompt and IoU >= ``min_iou`` (greedy, one to one)."""
    from torchvision.ops import box_iou

    if len(ref) == 0:
        return {"n_ref": 0, "n_other": len(other), "matched": 0, "min_matched_iou": 1.0, "same_boxes": len(other) == 0}
    iou = (box_iou(torch.as_tensor(ref.boxes), torch.as_tensor(other.boxes)).numpy() if len(other)
           else np.zeros((len(ref), 0)))
    same = np.array([[p == q for q in other.phrases] for p in ref.phrases]).reshape(iou.shape)
    iou = np.where(same, iou, 0.0)
    matched, best = 0, []
    for i in range(len(ref)):
        j = int(iou[i].argmax()) if iou.shape[1] else -1
        if j >= 0 and iou[i, j] >= min_iou:
            matched += 1
            best.append(float(iou[i, j]))
            iou[:, j] = 0.0
    return {"n_ref": len(ref), "n_other": len(other), "matched": matched,
            "min_matched_iou": min(best) if best else 0.0, "same_boxes": matched == len(ref) == len(other)}


def gdino_levers(models: BenchModels, photo: np.ndarray, prompts: tuple[str, ...], sizes: tuple[int, ...],
                 rounds: int, warmup: int, box_threshold: float, max_boxes: int) -> dict:
    """Grounding DINO: bf16 scopes at the official size, and float32 at smaller input sizes.

    Agreement against float32 at the profile's size: the top ``max_boxes`` detections above ``box_threshold``
    (IoU-matched, :func:`box_agreement`), and, at the same size, the sigmoid logits' max abs difference.
    """
    det = models.detector
    model, device = det.model, models.device
    before_scope, before_size = gdino_speed.bf16_scope(model), int(det.config["input_size"])
    int8_model = int8_dynamic(model)

    def setting(scope: str, size: int, module: torch.nn.Module = model) -> Callable[[], None]:
        def setup() -> None:
            det.model = module
            gdino_speed.set_bf16_scope(model, scope, device)
            if int(det.config["input_size"]) != size:
                det.set_input_size(size)
        return setup

    caption, phrases, spans = build_caption(prompts)
    phrase_map = det.phrase_map(caption, spans)

    def top_detections(probs: torch.Tensor, boxes: torch.Tensor) -> Detections:
        keep, ids, scores = select_detections(probs, boxes, phrase_map, box_threshold, 0.0, det.iou_threshold)
        keep, ids, scores = keep[:max_boxes], ids[:max_boxes], scores[:max_boxes]  # by decreasing score
        return Detections(boxes[keep].numpy().astype(np.float32), [phrases[i] for i in ids.tolist()],
                          scores.numpy().astype(np.float32))

    # name -> (bf16 scope, input size, model); the app can switch to every variant run on its own model.
    names = {"fp32": ("off", before_size, model), "bf16_backbone": ("backbone", before_size, model),
             "bf16_transformer": ("transformer", before_size, model),
             **{f"fp32_{s}px": ("off", s, model) for s in sizes if s != before_size},
             "int8_dynamic": ("off", before_size, int8_model)}
    variants = {name: (setting(*cfg), lambda: det.query_outputs(photo, caption)) for name, cfg in names.items()}
    try:
        times, raw = interleaved(variants, rounds, warmup, device)
        flops = {}
        for name, cfg in names.items():
            if cfg[0] == "off" and cfg[2] is model:  # FLOPs of float32 per input size (int8 counts as float32's)
                setting(*cfg)()
                flops[name] = count_flops(lambda: det.query_outputs(photo, caption))
    finally:
        setting(before_scope, before_size)()
    outs = {name: (probs, top_detections(probs, boxes)) for name, (probs, boxes) in raw.items()}
    ref_probs, ref_dets = outs["fp32"]
    rows = {}
    for name, (scope, size, module) in names.items():
        probs, dets = outs[name]
        n_flops = flops.get(name, flops["fp32"])
        row = {"seconds": times[name], "speedup": times["fp32"] / times[name], "input_size": size, "bf16_scope": scope,
               "flops": n_flops, "gflops_per_s": n_flops / times[name] / 1e9, **box_agreement(ref_dets, dets)}
        if size == before_size:
            row["probs_max_abs_diff"] = float((probs - ref_probs).abs().max())
        row["agrees"] = row["same_boxes"] and row.get("probs_max_abs_diff", 0.0) <= GDINO_PROB_DIFF
        row["measured_only"] = module is not model  # the app's switches: SKINAPP_GDINO_BF16, the input size
        rows[name] = row
    return {"flops": flops["fp32"], "variants": rows, "default": before_scope, "default_size": before_size}


def recommend(sam: dict, gdino: dict) -> dict[str, str]:
    """The fastest variant the app can switch to whose agreement holds and which beats float32 by > 5 % (else
    float32), per model."""
    def pick(rows: dict[str, dict]) -> str:
        good = [(r["seconds"], n) for n, r in rows.items()
                if n == "fp32" or (r["agrees"] and r["speedup"] > MIN_GAIN and not r.get("measured_only"))]
        return min(good)[1]
    return {"sam_encoder": pick(sam["variants"]), "grounding_dino": pick(gdino["variants"])}


def thread_settings() -> dict[str, Any]:
    """Torch's thread settings and the environment variables that set them."""
    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def pass_flops(models: BenchModels, photo: np.ndarray) -> dict[str, int]:
    """FLOPs of the ViT pass and the CLIP image pass on one photo (the detector's and SAM's come with their
    levers)."""
    from skinapp.explain import encode_image_for_explain
    from skinapp.image import load_image

    image = load_image(photo)
    with torch.inference_mode():
        vit = count_flops(lambda: models.vit.tokens(models.vit.preprocess(image).to(models.device)))
    clip = count_flops(lambda: encode_image_for_explain(models.clip.model, image.pil(),
                                                        preprocess=models.clip.preprocess))
    return {"vit": vit, "clip_image_pass": clip}


def _f(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _agrees(row: dict) -> str:
    return ("yes" if row["agrees"] else "NO") + (" (measured only: no app switch)" if row.get("measured_only") else "")


def levers_markdown(lv: dict[str, Any]) -> list[str]:
    """The levers section of the benchmark report."""
    peak = lv["peak_gflops"]
    th = lv["threads"]
    load = th.get("load_average")
    lines = ["### Speed levers, each against float32 in the same process (interleaved, best of rounds)", "",
             f"CPU peak measured in this run (best of large square matmuls): fp32 {peak['fp32']:.0f} GFLOP/s"
             + (f", bf16 {peak['bf16']:.0f} GFLOP/s" if peak.get("bf16") else "")
             + f"; torch threads {th['torch_threads']} (interop {th['interop_threads']}), "
             f"OMP_NUM_THREADS={th['OMP_NUM_THREADS']}, {th['cpu_count']} CPUs"
             + (f", load average {load[0]:.1f} at the start" if load else "") + ".", "",
             "| model | lever | time | speed-up | GFLOP/s (% of peak) | agreement with fp32 | agrees |",
             "|---|---|---|---|---|---|---|"]
    sam, gd = lv["sam"], lv["grounding_dino"]
    for name, r in sam["variants"].items():
        pk = peak.get("bf16") if name.startswith("bf16") and peak.get("bf16") else peak["fp32"]
        lines.append(f"| SAM encoder ({sam['flops'] / 1e9:.0f} GFLOP) | {name} | {_f(r['seconds'])} | "
                     f"{r['speedup']:.2f}x | {r['gflops_per_s']:.0f} ({100 * r['gflops_per_s'] / pk:.0f} %) | "
                     f"cosine {r['embedding_cosine']:.5f}, min mask IoU {r['min_mask_iou']:.4f} "
                     f"({sam['n_boxes']} boxes) | {_agrees(r)} |")
    for name, r in gd["variants"].items():
        pk = peak.get("bf16") if r["bf16_scope"] != "off" and peak.get("bf16") else peak["fp32"]
        probs = f", logits max diff {r['probs_max_abs_diff']:.3f}" if "probs_max_abs_diff" in r else ""
        lines.append(f"| Grounding DINO ({r['flops'] / 1e9:.0f} GFLOP at {r['input_size']} px) | {name} | "
                     f"{_f(r['seconds'])} | {r['speedup']:.2f}x | {r['gflops_per_s']:.0f} "
                     f"({100 * r['gflops_per_s'] / pk:.0f} %) | {r['matched']}/{r['n_ref']} boxes matched "
                     f"(IoU >= {GDINO_BOX_IOU}, min {r['min_matched_iou']:.3f}){probs} | "
                     f"{_agrees(r)} |")
    rec = lv["recommended"]
    if sam.get("compile_seconds") is not None:
        lines += ["", f"`torch.compile` of the SAM encoder: first call (compilation) {_f(sam['compile_seconds'])}."]
    lines += ["", f"Defaults in this run: SAM encoder `{sam['default']}`, Grounding DINO bf16 scope "
              f"`{gd['default']}` at {gd['default_size']} px. Recommended from these measurements (fastest lever "
              f"that agrees and gains > 5 %): SAM encoder `{rec['sam_encoder']}`, Grounding DINO "
              f"`{rec['grounding_dino']}`.", ""]
    up = lv.get("upload_gflops")
    if up:
        lines += ["| upload pass (defaults) | FLOPs | time | GFLOP/s |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['flops'] / 1e9:.0f} G | {_f(v['seconds'])} | {v['gflops_per_s']:.0f} |"
                  for k, v in up.items()]
        lines.append("")
    return lines
