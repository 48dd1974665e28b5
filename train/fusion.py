"""Train and evaluate the fusion classifier (and its ablations / image baselines) with the paper's protocol.

    python -m train.fusion --data scin:/data/scin --variant cross_attention --train-ratio 0.5 --seeds 0,1,2,3,4
    torchrun --nproc_per_node 4 -m train.fusion --data manifest:/data/ntd.csv --profile full ...

``--data`` is ``scin:ROOT`` (official SCIN layout), ``manifest:CSV`` (``image_path,case_id,label``)
or ``folder:ROOT`` (``ROOT/<label>/<image>``). ``--variant`` and ``--train-ratio`` take comma lists;
one table row per (ratio, variant), mean +- std over ``--seeds``. Concepts and ViT tokens are
computed once per image into ``--cache`` (resumable); epochs then run on cached tensors.

Per run, ``OUT/<variant>_r<ratio>_s<seed>/`` gets the best-validation-epoch checkpoint
(``fusion.safetensors`` + ``fusion.json``), ``confusion.png`` and ``curves.png``; ``OUT`` gets
``metrics_per_seed.csv``, ``metrics.csv`` and ``metrics.md``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from skinapp.checkpoints import sha256_file
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.fusion import (
    BASELINES,
    FUSION_VARIANTS,
    PREPROCESSING,
    build_baseline,
    build_fusion,
    build_global_encoder,
    fusion_config,
    mil_loss,
    pad_concepts,
    save_fusion_checkpoint,
)
from skinapp.image import InvalidImageError, load_image
from train.common import DistInfo, cleanup_distributed, init_distributed, unwrap
from train.data.folder import load_folder
from train.data.manifest import LabelledImages, SkipLog, load_manifest
from train.data.scin import load_scin
from train.feature_cache import CachedFeatures, FeatureCache
from train.metrics import classification_metrics, confusion_matrix, plot_confusion, plot_curves, summarise, write_table
from train.splits import Split, split_by_case

log = logging.getLogger("train.fusion")


# ----------------------------------------------------------------------------------------------- data

def load_data(spec: str, class_names: Sequence[str] | None = None) -> LabelledImages:
    """``scin:ROOT`` | ``manifest:CSV`` | ``folder:ROOT`` -> LabelledImages."""
    kind, sep, where = spec.partition(":")
    if not sep or not where:
        raise ValueError(f"--data must be scin:PATH, manifest:PATH.csv or folder:PATH; got {spec!r}.")
    if kind == "scin":
        return load_scin(where, conditions=class_names)
    if kind == "manifest":
        return load_manifest(where, class_names)
    if kind == "folder":
        return load_folder(where, class_names)
    raise ValueError(f"Unknown data kind {kind!r} in --data {spec!r}; use scin, manifest or folder.")


@dataclass
class FusionData:
    """Cached fusion inputs of a data set, in memory: tokens [N, 196, D] float16, per-image concepts, labels [N]."""

    tokens: torch.Tensor
    features: list[torch.Tensor]
    scores: list[torch.Tensor]
    labels: torch.Tensor
    case_ids: list[str]
    image_keys: list[str]

    def __len__(self) -> int:
        return len(self.case_ids)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for case, key, label in sorted(zip(self.case_ids, self.image_keys, self.labels.tolist())):
            h.update(f"{case}|{key}|{label}\n".encode())
        return h.hexdigest()


def assemble(data: LabelledImages, cached: Sequence[CachedFeatures | None], skips: SkipLog) -> FusionData:
    """Keep the images whose features exist; report cases left with no readable image."""
    labels = data.labels
    keep = [i for i, c in enumerate(cached) if c is not None]
    all_cases = {r.case_id for r in data.records}
    kept_cases = {data.records[i].case_id for i in keep}
    for case in sorted(all_cases - kept_cases):
        skips.skip("cases with all images unreadable", f"case {case}: none of its images could be read")
    if not keep:
        raise ValueError(f"No readable images in {data.source} ({skips.summary()}).")
    return FusionData(
        tokens=torch.stack([cached[i].tokens for i in keep]),
        features=[cached[i].features for i in keep], scores=[cached[i].scores for i in keep],
        labels=torch.tensor([labels[i] for i in keep], dtype=torch.long),
        case_ids=[data.records[i].case_id for i in keep], image_keys=[cached[i].image_key for i in keep])


def fusion_batch(data: FusionData, indices: Sequence[int], n: int, noise: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """tokens [B, 196, D], concepts [B, n, 256] padded by perturbation, mask [B, n], labels [B]."""
    padded = [pad_concepts(data.features[i], n, data.scores[i], noise, generator)[:2] for i in indices]
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    return (data.tokens[idx].float(), torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded]),
            data.labels[idx])


# ------------------------------------------------------------------------------------------- training

@dataclass
class RunResult:
    """One trained run: best-epoch state, its validation/test metrics and the learning curves."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    history: dict[str, list[float]]
    test_metrics: dict[str, float]
    confusion: np.ndarray
    epoch_seconds: float


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def evaluate(model: nn.Module, forward: Callable, batches: Callable, indices: np.ndarray, labels: torch.Tensor,
             batch_size: int, device: torch.device) -> tuple[float, np.ndarray]:
    """Mean loss and predicted classes over ``indices`` (deterministic padding, eval mode)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    losses, preds = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        *inputs, y = batches(chunk, gen)
        scores = forward(model, [x.to(device) for x in inputs])
        losses.append(float(mil_loss(scores, y.to(device))) * len(chunk))
        preds.append(scores.argmax(dim=1).cpu().numpy())
    return sum(losses) / max(len(indices), 1), np.concatenate(preds) if preds else np.zeros(0, np.int64)


def train_run(model: nn.Module, forward: Callable, batches: Callable, labels: torch.Tensor, split: Split,
              n_classes: int, epochs: int, batch_size: int, lr: float, seed: int, device: torch.device,
              desc: str = "") -> RunResult:
    """Adam on the training cases; keep the epoch with the best validation macro-F1 (ties: lower val loss).

    ``batches(indices, generator) -> (*inputs, labels)``; ``forward(model, inputs) -> scores [B, C]``.
    The test cases are evaluated once, with the kept state.
    """
    torch.manual_seed(seed)
    model = model.to(device)
    if _is_dist():
        # global-only and local-only variants leave a branch unused on batches without fallback rows
        unused = getattr(model, "variant", "") in ("global", "local")
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_ids = list(range(len(split.train)))
    if _is_dist():
        sampler = DistributedSampler(train_ids, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(train_ids, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(train_ids, batch_size=batch_size, sampler=sampler, collate_fn=lambda b: b)
    gen = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_f1": []}
    best: tuple[float, float] = (-1.0, float("inf"))
    best_state, best_epoch, epoch_times = None, 0, []
    show = not _is_dist() or dist.get_rank() == 0
    bar = tqdm(range(1, epochs + 1), desc=desc or "epochs", disable=not show)
    for epoch in bar:
        t0 = time.perf_counter()
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        for chunk in loader:
            *inputs, y = batches(split.train[chunk], gen)
            loss = mil_loss(forward(model, [x.to(device) for x in inputs]), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(chunk), count + len(chunk)
        epoch_times.append(time.perf_counter() - t0)
        val_loss, val_pred = evaluate(unwrap(model), forward, batches, split.val, labels, batch_size, device)
        val_f1 = classification_metrics(labels[split.val].numpy(), val_pred, n_classes)["f1"]
        history["train_loss"].append(total / max(count, 1))
        history["val_loss"].append(val_loss)
        history["val_f1"].append(val_f1)
        if (val_f1, -val_loss) > (best[0], -best[1]):
            best, best_epoch = (val_f1, val_loss), epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()})
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", val_f1=f"{val_f1:.3f}", best=best_epoch)
    core = unwrap(model)
    core.load_state_dict(best_state)
    _, test_pred = evaluate(core, forward, batches, split.test, labels, batch_size, device)
    y_test = labels[split.test].numpy()
    metrics = classification_metrics(y_test, test_pred, n_classes)
    return RunResult(best_state, best_epoch, history, metrics, confusion_matrix(y_test, test_pred, n_classes),
                     float(np.median(epoch_times)) if epoch_times else 0.0)


def fusion_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    tokens, concepts, mask = inputs
    return model(tokens, concepts, mask).scores


def image_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return model(inputs[0])


# ----------------------------------------------------------------------------------------------- CLI

def make_extractor(kind: str, profile: str, device: torch.device, sam_checkpoint: str | None = None,
                   dino_checkpoint: str | None = None, text_encoder: str | None = None) -> Any:
    """The concept extractor: "grounded" (Grounding DINO + SAM) or "fallback" (weight-free colour concepts)."""
    if kind == "fallback":
        from skinapp.concepts.fallback import ColourConceptExtractor

        return ColourConceptExtractor()
    if kind == "grounded":
        from skinapp.concepts.detector import build_detector
        from skinapp.concepts.extractor import GroundedSamExtractor
        from skinapp.concepts.segmenter import build_segmenter

        return GroundedSamExtractor(
            build_detector(profile, checkpoint=dino_checkpoint, text_encoder=text_encoder, device=device),
            build_segmenter(profile, checkpoint=sam_checkpoint, device=device))
    raise ValueError(f"Unknown --concepts {kind!r}; use grounded or fallback.")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.fusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="scin:ROOT | manifest:CSV | folder:ROOT")
    p.add_argument("--variant", default="cross_attention",
                   help=f"comma list of {sorted(FUSION_VARIANTS)} and/or baselines {list(BASELINES)}")
    p.add_argument("--train-ratio", default="0.5", help="comma list of train/total case ratios")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the training cases used for validation")
    p.add_argument("--profile", choices=("tiny", "full"), default="full")
    p.add_argument("--config", default=None, help="fusion config name (default: scin for SCIN, ntd otherwise; "
                                                   "tiny for the tiny profile)")
    p.add_argument("--n-concepts", type=int, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--concepts", choices=("grounded", "fallback"), default="grounded")
    p.add_argument("--prompts", default=",".join(DEFAULT_PROMPTS))
    p.add_argument("--vit-checkpoint", default=None, help="timm ViT-B/16 weights (.safetensors/.pth)")
    p.add_argument("--sam-checkpoint", default=None)
    p.add_argument("--dino-checkpoint", default=None)
    p.add_argument("--text-encoder", default=None, help="local bert-base-uncased folder for Grounding DINO (full)")
    p.add_argument("--classes", default=None, help="comma list fixing the class list (and its order)")
    p.add_argument("--cache", default=None, help="feature cache folder (default OUT/cache)")
    p.add_argument("--out", default="runs/fusion")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    return p.parse_args(argv)


def _save_baseline(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha256_file(path)}, indent=2, default=str))


def image_tensors(data: LabelledImages, encoder: Any, skips: SkipLog) -> tuple[torch.Tensor, list[int]]:
    """Preprocessed images [N, 3, 224, 224] (float16) for the image baselines, and the kept record indices."""
    kept, images = [], []
    for i, r in enumerate(tqdm(data.records, desc="loading images")):
        try:
            images.append(encoder.preprocess(load_image(r.path))[0].half())
            kept.append(i)
        except InvalidImageError as exc:
            skips.skip("unreadable images", f"{r.origin or r.path}: {r.path.name}: {exc}")
    if not images:
        raise ValueError(f"No readable images in {data.source}.")
    return torch.stack(images), kept


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dist_info, device = init_distributed(args.device)
    try:
        return _main(args, dist_info, device)
    finally:
        cleanup_distributed(dist_info)


def _main(args: argparse.Namespace, dist_info: DistInfo, device: torch.device) -> list[dict]:
    rank, world = dist_info.rank, dist_info.world_size
    variants = [v.strip() for v in args.variant.split(",") if v.strip()]
    for v in variants:
        if v not in FUSION_VARIANTS and v not in BASELINES:
            raise SystemExit(f"Unknown variant {v!r}; choose from {sorted(FUSION_VARIANTS)} or {list(BASELINES)}.")
    ratios = [float(r) for r in args.train_ratio.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    data = load_data(args.data, classes)
    skips = data.skipped
    config_name = args.config or ("tiny" if args.profile == "tiny" else
                                  "scin" if args.data.startswith("scin:") else "ntd")
    overrides = {k: v for k, v in (("n_concepts", args.n_concepts), ("top_k", args.top_k)) if v is not None}
    encoder = build_global_encoder(args.profile, args.vit_checkpoint)
    config = fusion_config(config_name, global_dim=encoder.width, **overrides)
    n_classes = len(data.class_names)
    fusion_data = None
    if any(v in FUSION_VARIANTS for v in variants):
        extractor = make_extractor(args.concepts, args.profile, device, args.sam_checkpoint, args.dino_checkpoint,
                                   args.text_encoder)
        cache = FeatureCache(args.cache or out / "cache", extractor, encoder.to(device),
                             [p.strip() for p in args.prompts.split(",") if p.strip()])
        if world > 1:  # ranks share the model passes, then everyone reads the complete cache
            cache.build(data.records, SkipLog(), shard=(rank, world))
            dist.barrier()
        fusion_data = assemble(data, cache.build(data.records, skips), skips)
    rows: list[dict] = []
    memo: dict[str, Any] = {}
    for ratio in ratios:
        for variant in variants:
            for seed in seeds:
                row = _one_run(variant, ratio, seed, args, data, fusion_data, encoder, config, n_classes, device,
                               out, rank, memo)
                rows.append(row)
    if rank == 0:
        import pandas as pd

        pd.DataFrame(rows).to_csv(out / "metrics_per_seed.csv", index=False)
        summary = summarise(rows)
        write_table(summary, out / "metrics.csv", out / "metrics.md")
        log.info("results:\n%s", (out / "metrics.md").read_text())
        log.info("skipped: %s", skips.summary())
    return rows


def _one_run(variant: str, ratio: float, seed: int, args: argparse.Namespace, data: LabelledImages,
             fusion_data: FusionData | None, encoder: Any, config: dict, n_classes: int, device: torch.device,
             out: Path, rank: int, memo: dict[str, Any]) -> dict:
    """Train and evaluate one (variant, ratio, seed); rank 0 writes its checkpoint and plots. ``memo`` holds
    the preprocessed images of the baselines across runs."""
    run_dir = out / f"{variant}_r{ratio}_s{seed}"
    desc = f"{variant} r={ratio} seed={seed}"
    if variant in FUSION_VARIANTS:
        fd = fusion_data
        split = split_by_case(fd.case_ids, fd.labels.tolist(), ratio, seed, args.val_fraction)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_fusion(variant, n_classes, config)
        n, noise = int(config["n_concepts"]), float(config["pad_noise"])
        result = train_run(model, fusion_forward, lambda idx, g: fusion_batch(fd, idx, n, noise, g), fd.labels,
                           split, n_classes, args.epochs, args.batch_size, args.lr, seed, device, desc)
        data_hash = fd.data_hash()
    else:
        if "images" not in memo:
            # unreadable files are already counted when the fusion variants cached their features
            memo["images"] = image_tensors(data, encoder, data.skipped if fusion_data is None else SkipLog())
        images, kept = memo["images"]
        labels = torch.tensor([data.labels[i] for i in kept])
        split = split_by_case([data.records[i].case_id for i in kept], labels.tolist(), ratio, seed,
                              args.val_fraction)
        model = build_baseline(variant, n_classes, args.profile, seed)

        def batches(idx, g):
            x = images[torch.as_tensor(np.asarray(idx))].float()
            flip = torch.rand(len(idx), generator=g) < 0.5
            return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), labels[torch.as_tensor(np.asarray(idx))]

        result = train_run(model, image_forward, batches, labels, split, n_classes, args.epochs, args.batch_size,
                           args.lr, seed, device, desc)
        data_hash = hashlib.sha256("".join(sorted(str(data.records[i].path) for i in kept)).encode()).hexdigest()
    row = {"train_ratio": ratio, "variant": variant, "seed": seed, "best_epoch": result.best_epoch,
           "epoch_seconds": result.epoch_seconds, "n_train": len(split.train), "n_val": len(split.val),
           "n_test": len(split.test), **result.test_metrics}
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"class_names": data.class_names, "preprocessing": PREPROCESSING, "data": data.source,
                "data_hash": data_hash, "metrics": result.test_metrics, "train_ratio": ratio, "seed": seed,
                "best_epoch": result.best_epoch, "epochs": args.epochs, "lr": args.lr,
                "global_encoder": {"profile": args.profile, "weights": encoder.weights.describe(),
                                   "trained": encoder.weights.trained},
                "concepts": args.concepts}
        if variant in FUSION_VARIANTS:
            model.load_state_dict(result.state)
            save_fusion_checkpoint(model.cpu(), run_dir / "fusion.safetensors", meta)
        else:
            model.load_state_dict(result.state)
            _save_baseline(model.cpu(), run_dir / f"{variant}.safetensors", {**meta, "variant": variant})
        plot_confusion(result.confusion, data.class_names, run_dir / "confusion.png", desc)
        plot_curves(result.history, run_dir / "curves.png", desc)
        log.info("%s: %s (best epoch %d, %.3f s/epoch)", desc,
                 ", ".join(f"{k} {v:.3f}" for k, v in result.test_metrics.items()), result.best_epoch,
                 result.epoch_seconds)
    return row


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:  # bad data or arguments: one clear line, no traceback
        log.error("%s", exc)
        raise SystemExit(2) from None
