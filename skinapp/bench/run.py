"""Run the benchmark: stage times, ours vs naive side by side, agreement checks, scaling, memory.

    python -m skinapp.bench [--device cpu|cuda] [--quick] [--out bench_results] [--threads 2]

``--quick`` uses the tiny profile and few repeats (a CI-sized run, part of the test suite); the full
form uses the full-size architectures with random weights (compute does not depend on weight values).
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinapp import precision
from skinapp.bench import levers
from skinapp.bench.models import BenchModels, build_bench_models
from skinapp.bench.pipelines import StageClock, upload_naive, upload_ours
from skinapp.bench.timing import peak_rss_mib, rss_mib, synchronize, time_stage
from skinapp.clip.text import encode_texts
from skinapp.explain import encode_image_for_explain, explain_from_pass
from skinapp.explain.naive import naive_maps
from skinapp.image import load_image
from skinapp.synthetic import make_skin_photo

log = logging.getLogger(__name__)

PROMPTS = ("lesion", "arm", "leg", "hand")
PHRASES = ("irregular streaks", "blue-whitish veil", "ulcer with undermined edges", "atypical pigment network",
           "regression structures", "irregular dots and globules", "atypical vascular pattern",
           "irregular pigmentation", "asymmetric lesion", "dark brown and black colours", "raspberry-like papilloma",
           "burrows and excoriated papules", "hypopigmented anaesthetic patch", "swelling with draining sinuses",
           "plaque with raised borders", "typical pigment network", "milia-like cysts", "scale on a red plaque",
           "wheals on the forearm", "crusted erosion")
METHODS = ("gradcam", "grad_eclip", "medgrad_eclip")
UPLOAD_STAGES = ("load", "grounding_dino", "sam_embedding", "sam_decode", "concept_features", "vit", "fusion",
                 "clip_image_pass")
UNAVOIDABLE = ("grounding_dino", "sam_embedding", "sam_decode", "vit", "clip_image_pass")


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures."""

    profile: str
    repeats: int
    warmup: int
    phrase_counts: tuple[int, ...]
    image_sides: tuple[int, ...]
    concept_counts: tuple[int, ...]
    max_concepts: int
    naive_explain_counts: tuple[int, ...]
    detector_sizes: tuple[int, ...] = ()
    lever_rounds: int = 2
    lever_warmup: int = 1
    peak_matmul_n: int = 2048
    compile_sam: bool = False  # torch.compile the SAM encoder as one more lever (minutes of compilation on a CPU)

    @classmethod
    def quick(cls) -> BenchSettings:
        return cls("tiny", repeats=2, warmup=1, phrase_counts=(1, 5), image_sides=(256, 512),
                   concept_counts=(5, 15), max_concepts=15, naive_explain_counts=(1, 5),
                   detector_sizes=(256,), lever_rounds=1, lever_warmup=0, peak_matmul_n=1024)

    @classmethod
    def full(cls) -> BenchSettings:
        return cls("full", repeats=2, warmup=1, phrase_counts=(1, 5, 20), image_sides=(512, 1024, 2048),
                   concept_counts=(5, 15, 30), max_concepts=30, naive_explain_counts=(1, 5, 20),
                   detector_sizes=(640, 512), lever_rounds=2)


def _photo(side: int, seed: int = 3) -> np.ndarray:
    h = int(round(side * 0.75))
    return make_skin_photo(seed=seed, size=(h, side), lesion_colour="dark_brown").pixels


def _upload_runs(fn, models: BenchModels, photo: np.ndarray, settings: BenchSettings, runs: int,
                 **kw: Any) -> tuple[list[StageClock], Any]:
    clocks, out = [], None
    for _ in range(runs):
        clock = StageClock(models.device)
        out = fn(models, photo, PROMPTS, settings.max_concepts, clock, **kw)
        clocks.append(clock)
    return clocks, out


def _median_stages(clocks: Sequence[StageClock]) -> dict[str, float]:
    names = {n for c in clocks for n in c.seconds}
    return {n: statistics.median(c.seconds.get(n, 0.0) for c in clocks) for n in names}


def _mask_ious(first: np.ndarray, second: np.ndarray) -> list[float]:
    """IoU of each pair of bool masks [n, H, W] (1.0 for two empty masks)."""
    return [float((a & b).sum() / max((a | b).sum(), 1)) for a, b in zip(first, second)]


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a @ b) / denom) if denom > 0 else float("nan")


def bench_upload(models: BenchModels, settings: BenchSettings) -> dict[str, Any]:
    """Ours vs naive upload path on one 1024-px photo, per stage, with agreement checks."""
    photo = _photo(1024)
    _upload_runs(upload_ours, models, photo, settings, settings.warmup)
    ours_clocks, ours = _upload_runs(upload_ours, models, photo, settings, settings.repeats)
    naive_clocks, naive = _upload_runs(upload_naive, models, photo, settings, 1, boxes_for_masks=ours.detections)
    ours_stages, naive_stages = _median_stages(ours_clocks), _median_stages(naive_clocks)
    ours_total = statistics.median(c.total() for c in ours_clocks)
    naive_total = naive_clocks[0].total()
    floor = sum(ours_stages.get(n, 0.0) for n in UNAVOIDABLE)
    ious = _mask_ious(ours.masks, naive.masks)
    feat_err = float((ours.features - naive.features).abs().max()) if len(ours.features) else 0.0
    return {
        "n_prompts": len(PROMPTS),
        "n_concepts": len(ours.detections),
        "ours": {"stages_s": ours_stages, "total_s": ours_total,
                 "calls": dict(ours_clocks[0].calls)},
        "naive": {"stages_s": naive_stages, "total_s": naive_total, "calls": dict(naive_clocks[0].calls)},
        "speedup": naive_total / ours_total,
        "unavoidable_sum_s": floor,
        "overhead_ratio": ours_total / floor if floor else float("nan"),
        "agreement": {"min_mask_iou": min(ious) if ious else 1.0, "max_feature_abs_diff": feat_err,
                      "probs_max_abs_diff": float(np.abs(ours.probs - naive.probs).max())},
        "rss_mib": rss_mib(),
    }


def bench_precision(models: BenchModels, settings: BenchSettings) -> dict[str, Any]:
    """SAM's image encoder in fp32 vs under bf16 autocast, each end to end on the same photo (same boxes: the
    detector is untouched), with the agreement of masks, concept features and class probabilities."""
    photo = _photo(1024)
    segmenter = models.segmenter
    default = segmenter.encoder_bf16
    runs: dict[str, Any] = {}
    try:
        for name, bf16 in (("fp32", False), ("bf16_sam_encoder", True)):
            segmenter.encoder_bf16 = bf16
            _upload_runs(upload_ours, models, photo, settings, settings.warmup)
            clocks, out = _upload_runs(upload_ours, models, photo, settings, settings.repeats)
            runs[name] = {"stages_s": _median_stages(clocks), "total_s": statistics.median(c.total() for c in clocks),
                          "outputs": out}
    finally:
        segmenter.encoder_bf16 = default
    ref, low = runs["fp32"].pop("outputs"), runs["bf16_sam_encoder"].pop("outputs")
    same_boxes = np.array_equal(ref.detections.boxes, low.detections.boxes)
    ious = _mask_ious(ref.masks, low.masks)
    cosine = torch.nn.functional.cosine_similarity(ref.features.double(), low.features.double(), dim=1)
    return {
        **runs, "default_bf16": default, "same_boxes": same_boxes,
        "sam_embedding_speedup": runs["fp32"]["stages_s"]["sam_embedding"]
        / runs["bf16_sam_encoder"]["stages_s"]["sam_embedding"],
        "agreement": {"min_mask_iou": min(ious) if ious else 1.0,
                      "mean_mask_iou": float(np.mean(ious)) if ious else 1.0,
                      "min_feature_cosine": float(cosine.min()) if len(cosine) else 1.0,
                      "probs_max_abs_diff": float(np.abs(ref.probs - low.probs).max())},
    }


def bench_explain(models: BenchModels, settings: BenchSettings) -> dict[str, Any]:
    """T phrases x 3 methods on one cached image pass vs a full forward+backward per phrase and method."""
    clip = models.clip
    image = load_image(_photo(1024))
    image_pass_t, ipass = time_stage("clip_image_pass", lambda: encode_image_for_explain(
        clip.model, image.pil(), preprocess=clip.preprocess), models.device, settings.repeats, settings.warmup)
    x = clip.preprocess(image.pil())[None]
    rows = []
    for T in settings.phrase_counts:
        phrases = list(PHRASES[:T])
        text_t, enc = time_stage(f"text_{T}", lambda p=phrases: encode_texts(clip.model, clip.tokenizer, p,
                                                                             cache=None),
                                 models.device, settings.repeats, settings.warmup)
        fast_t, fast = time_stage(f"explain_{T}", lambda f=enc.features: explain_from_pass(
            clip.model, ipass, f, METHODS), models.device, settings.repeats, settings.warmup)
        row: dict[str, Any] = {"phrases": T, "text_s": text_t.median, "fast_s": fast_t.median,
                               "fast_with_text_s": fast_t.median + text_t.median}
        if T in settings.naive_explain_counts:
            synchronize(models.device)
            t0 = time.perf_counter()
            slow = naive_maps(clip.model, x.to(models.device), enc.features.to(models.device), METHODS,
                              ipass.entropy_weight)
            synchronize(models.device)
            row["naive_s"] = time.perf_counter() - t0
            row["speedup"] = row["naive_s"] / row["fast_s"]
            row["min_pearson"] = min(_pearson(fast.maps[m], slow[m].cpu()) for m in METHODS)
        rows.append(row)
    return {"image_pass_s": image_pass_t.median, "rows": rows, "rss_mib": rss_mib()}


def bench_scaling(models: BenchModels, settings: BenchSettings) -> dict[str, Any]:
    """Upload time and memory against the photo's long side; SAM decode + pooling + fusion against n."""
    sizes = []
    for side in settings.image_sides:
        clock = StageClock(models.device)
        upload_ours(models, _photo(side), PROMPTS, settings.max_concepts, clock, max_side=side)
        sizes.append({"long_side": side, "total_s": clock.total(), "stages_s": dict(clock.seconds),
                      "rss_mib": rss_mib()})
    image = load_image(_photo(1024))
    emb = models.segmenter.embed(image.pixels)
    rng = np.random.default_rng(0)
    h, w = image.size
    counts = []
    for n in settings.concept_counts:
        x0, y0 = rng.uniform(0, w * 0.7, n), rng.uniform(0, h * 0.7, n)
        boxes = np.stack([x0, y0, x0 + rng.uniform(20, w * 0.3, n), y0 + rng.uniform(20, h * 0.3, n)], 1)
        dec_t, (masks, _) = time_stage(f"decode_{n}", lambda b=boxes: models.segmenter.decode(emb, b),
                                       models.device, settings.repeats, settings.warmup)
        pool_t, _ = time_stage(f"pool_{n}", lambda m=masks, b=boxes: models.segmenter.pool_features(emb, m, b),
                               models.device, settings.repeats, settings.warmup)
        counts.append({"n": n, "decode_s": dec_t.median, "pool_s": pool_t.median, "rss_mib": rss_mib()})
    return {"image_sizes": sizes, "concept_counts": counts}


def bench_levers(models: BenchModels, settings: BenchSettings, upload: dict[str, Any]) -> dict[str, Any]:
    """Each speed lever against float32 (:mod:`skinapp.bench.levers`), the FLOPs and GFLOP/s of every pass."""
    photo = _photo(1024)
    image = load_image(photo)
    clock = StageClock(models.device)
    ref = upload_ours(models, photo, PROMPTS, settings.max_concepts, clock)
    peak = {"fp32": levers.peak_gflops(torch.float32, settings.peak_matmul_n)}
    if models.device.type == "cpu" and precision.cpu_has_native_bf16():
        peak["bf16"] = levers.peak_gflops(torch.bfloat16, settings.peak_matmul_n)
    sam = levers.sam_levers(models, image.pixels, ref.detections.boxes, settings.lever_rounds, settings.lever_warmup,
                            compile_encoder=settings.compile_sam)
    gd = levers.gdino_levers(models, image.pixels, PROMPTS, settings.detector_sizes, settings.lever_rounds,
                             settings.lever_warmup, box_threshold=0.0, max_boxes=settings.max_concepts)
    flops = {"grounding_dino": gd["flops"], "sam_embedding": sam["flops"], **levers.pass_flops(models, photo)}
    stages = upload["ours"]["stages_s"]
    return {"peak_gflops": peak, "threads": levers.thread_settings(), "sam": sam, "grounding_dino": gd,
            "recommended": levers.recommend(sam, gd),
            "upload_gflops": {k: {"flops": f, "seconds": stages[k], "gflops_per_s": f / stages[k] / 1e9}
                              for k, f in flops.items() if stages.get(k)}}


def run_benchmark(device: str = "cpu", quick: bool = False, threads: int | None = 2,
                  sam_variant: str = "vit_b", compile_sam: bool = False) -> dict[str, Any]:
    """Run every part of the benchmark and return the results as a JSON-ready dict (``compile_sam``: add
    ``torch.compile`` of the SAM encoder to the levers)."""
    settings = replace(BenchSettings.quick() if quick else BenchSettings.full(), compile_sam=compile_sam)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    load_average = levers.thread_settings()["load_average"]
    load_t, models = time_stage("load_models", lambda: build_bench_models(settings.profile, device, sam_variant),
                                device, repeats=1, warmup=0)
    log.info("models built in %.1f s: %s", load_t.median, models.describe())
    results: dict[str, Any] = {
        "settings": settings.__dict__,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                    "gpu": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else None},
        "models": models.describe(),
        "load_models_s": load_t.median,
    }
    log.info("upload path (ours vs naive)...")
    results["upload"] = bench_upload(models, settings)
    log.info("speed levers (each against fp32)...")
    results["levers"] = bench_levers(models, settings, results["upload"])
    results["levers"]["threads"]["load_average"] = load_average
    log.info("precision levers (fp32 vs bf16)...")
    results["precision"] = bench_precision(models, settings)
    log.info("explain path (fast vs naive)...")
    results["explain"] = bench_explain(models, settings)
    log.info("scaling...")
    results["scaling"] = bench_scaling(models, settings)
    results["peak_rss_mib"] = peak_rss_mib()
    if torch.device(device).type == "cuda":
        results["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    results["wall_s"] = time.perf_counter() - t0
    return results


def _f(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _precision_markdown(p: dict[str, Any]) -> list[str]:
    a = p["agreement"]
    fp, bf = p["fp32"], p["bf16_sam_encoder"]
    return ["### Precision: SAM image encoder fp32 vs bf16 autocast (same photo, same detector)", "",
            "| setting | sam_embedding | end to end |", "|---|---|---|",
            f"| fp32 | {_f(fp['stages_s']['sam_embedding'])} | {_f(fp['total_s'])} |",
            f"| bf16 autocast | {_f(bf['stages_s']['sam_embedding'])} | {_f(bf['total_s'])} |", "",
            f"Encoder speed-up {p['sam_embedding_speedup']:.2f}x; same boxes: {p['same_boxes']}; mask IoU on the "
            f"same boxes min {a['min_mask_iou']:.4f} (mean {a['mean_mask_iou']:.4f}); concept-feature cosine min "
            f"{a['min_feature_cosine']:.5f}; class probabilities max difference {a['probs_max_abs_diff']:.2e}. "
            f"Default here: {'bf16' if p['default_bf16'] else 'fp32'} (`SKINAPP_BF16`=auto|on|off).", ""]


def to_markdown(r: dict[str, Any]) -> str:
    """The results as Markdown tables (for the README's Performance section)."""
    up, ex = r["upload"], r["explain"]
    m = r["machine"]
    lines = [f"Machine: {m['processor']}, {m['threads']} threads, torch {m['torch']}, device {m['device']}"
             + (f" ({m['gpu']})" if m.get("gpu") else "") + f"; profile `{r['settings']['profile']}` (random weights).",
             "", "Models: " + "; ".join(f"{k} {v}" for k, v in r["models"].items()), "",
             f"### Upload path: one photo (1024 px), {up['n_prompts']} prompts, {up['n_concepts']} concepts", "",
             "| stage | ours | naive | naive / ours |", "|---|---|---|---|"]
    for s in UPLOAD_STAGES:
        o, n = up["ours"]["stages_s"].get(s, 0.0), up["naive"]["stages_s"].get(s, 0.0)
        calls = f" ({up['naive']['calls'].get(s, 0)} calls)" if up["naive"]["calls"].get(s, 0) > 1 else ""
        lines.append(f"| {s} | {_f(o)} | {_f(n)}{calls} | {n / o:.1f}x |" if o > 0 else f"| {s} | - | {_f(n)} | |")
    lines += [f"| **end to end** | **{_f(up['ours']['total_s'])}** | **{_f(up['naive']['total_s'])}** | "
              f"**{up['speedup']:.1f}x** |", "",
              f"Sum of the unavoidable passes (one Grounding DINO, one SAM embedding + one batched decode, one ViT, "
              f"one CLIP image pass): {_f(up['unavoidable_sum_s'])}; our end to end / that sum = "
              f"**{up['overhead_ratio']:.3f}** (target <= 1.15).",
              f"Agreement ours vs naive on the same boxes: min mask IoU {up['agreement']['min_mask_iou']:.4f}, "
              f"max feature difference {up['agreement']['max_feature_abs_diff']:.2e}, max class-probability "
              f"difference {up['agreement']['probs_max_abs_diff']:.2e}.", "",
              *_precision_markdown(r["precision"]),
              *(levers.levers_markdown(r["levers"]) if "levers" in r else []),
              f"### Explain: phrases x 3 methods after the image pass ({_f(ex['image_pass_s'])})", "",
              "| phrases | text encoding | explain (fast) | naive (forward+backward per phrase x method) | speed-up "
              "| min Pearson |", "|---|---|---|---|---|---|"]
    for row in ex["rows"]:
        naive = _f(row["naive_s"]) if "naive_s" in row else "-"
        speed = f"{row['speedup']:.0f}x" if "speedup" in row else "-"
        pear = f"{row['min_pearson']:.6f}" if "min_pearson" in row else "-"
        lines.append(f"| {row['phrases']} | {_f(row['text_s'])} | {_f(row['fast_s'])} | {naive} | {speed} | {pear} |")
    sc = r["scaling"]
    lines += ["", "### Scaling", "", "| photo long side | upload end to end | RSS after |", "|---|---|---|"]
    lines += [f"| {s['long_side']} px | {_f(s['total_s'])} | {s['rss_mib']:.0f} MiB |" for s in sc["image_sizes"]]
    lines += ["", "| concepts n | SAM decode (one call) | feature pooling |", "|---|---|---|"]
    lines += [f"| {c['n']} | {_f(c['decode_s'])} | {_f(c['pool_s'])} |" for c in sc["concept_counts"]]
    peak = f"Peak process RSS {r['peak_rss_mib']:.0f} MiB"
    if r.get("cuda_max_allocated_mib") is not None:
        peak += f"; CUDA max allocated {r['cuda_max_allocated_mib']:.0f} MiB"
    lines += ["", peak + f"; model build {_f(r['load_models_s'])}; whole benchmark {r['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{results['settings']['profile']}_{results['machine']['device']}"
    json_path, md_path = out / f"bench_{tag}.json", out / f"bench_{tag}.md"
    json_path.write_text(json.dumps(results, indent=2, default=float))
    md_path.write_text(to_markdown(results))
    return json_path, md_path
