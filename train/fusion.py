"""Train and evaluate the fusion classifier (and its ablations / image baselines) with the paper's protocol.

The command line (``python -m train.fusion``), its presets and outputs are described in :mod:`train.fusion_cli`
and docs/protocols.md; results tables are written by :mod:`train.fusion_report`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import sys
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
from skinapp.fusion import (
    FUSION_VARIANTS,
    PREPROCESSING,
    build_baseline,
    build_fusion,
    build_global_encoder,
    fusion_config,
    global_encoder_meta,
    mil_loss,
    save_fusion_checkpoint,
)
from train.cli import run_main, user_errors, writable_folder
from train.common import DistInfo, cleanup_distributed, init_distributed, unwrap
from train.data.manifest import LabelledImages, SkipLog
from train.feature_cache import FeatureCache
from train.fusion_cli import MODES, PROTOCOLS, SELECTIONS, parse_args  # noqa: F401  (re-exported)
from train.fusion_data import (  # noqa: F401  (re-exported: train.fusion is the public entry point)
    EndToEndFusion,
    FusionData,
    assemble,
    baseline_checkpoints,
    checked_split,
    end_to_end_batch,
    fusion_batch,
    image_tensors,
    images_for,
    load_data,
    make_extractor,
    split_summary,
)
from train.fusion_report import write_results, write_run_report
from train.metrics import METRICS, classification_metrics, confusion_matrix
from train.splits import Split, check_class_images, count_mixed_label_cases

log = logging.getLogger("train.fusion")

_SELECTION_LABELS = {"last": "last epoch", "val_accuracy": "best val accuracy", "val_f1_paper": "best val F1"}


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


def _autocast_forward(forward: Callable, device: torch.device, amp: bool) -> Callable:
    """``forward`` under bf16 autocast on CUDA when ``amp`` (mixed precision only on GPUs), scores as float32."""
    if not (amp and device.type == "cuda"):
        return forward

    def run(model: nn.Module, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            return forward(model, inputs).float()

    return run


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


def _selection_key(selection: str, metrics: dict[str, float], loss: float) -> tuple[float, float]:
    """Larger is better: (validation accuracy or paper F1, -validation loss as the tie-break)."""
    return (metrics["accuracy"] if selection == "val_accuracy" else metrics["f1_paper"], -loss)


def train_run(model: nn.Module, forward: Callable, batches: Callable, labels: torch.Tensor, split: Split,
              n_classes: int, epochs: int, batch_size: int, lr: float, seed: int, device: torch.device,
              desc: str = "", selection: str = "val_accuracy", amp: bool = False) -> RunResult:
    """Adam on the training cases for ``epochs`` epochs; keep the weights that ``selection`` says.

    ``selection``: "last" (the paper: a fixed number of epochs, no validation; ``split.val`` may be empty),
    "val_accuracy" (the epoch with the best validation accuracy, ties: lower validation loss) or
    "val_f1_paper" (best validation paper-F1). The validation cases come from the held-out side
    (:func:`train.splits.split_by_case`) and never include a test case. The test cases are evaluated once,
    with the kept state. ``amp``: bf16 autocast on CUDA (ignored on the CPU).

    ``batches(indices, generator) -> (*inputs, labels)``; ``forward(model, inputs) -> scores [B, C]``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown selection {selection!r}; choose from {SELECTIONS}.")
    validate = len(split.val) > 0
    if selection != "last" and not validate:
        raise ValueError(f"Selection {selection!r} needs validation cases; use --val-fraction > 0 or "
                         "--selection last.")
    forward = _autocast_forward(forward, device, amp)
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
    history: dict[str, list[float]] = {"train_loss": []}
    if validate:
        history.update({"val_loss": [], "val_accuracy": [], "val_f1": []})
    best: tuple[float, float] = (-float("inf"), -float("inf"))
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
        history["train_loss"].append(total / max(count, 1))
        if validate:
            val_loss, val_pred = evaluate(unwrap(model), forward, batches, split.val, labels, batch_size, device)
            val = classification_metrics(labels[split.val].numpy(), val_pred, n_classes)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val["accuracy"])
            history["val_f1"].append(val["f1_macro_per_class"])
        if selection == "last":
            if epoch == epochs:
                best_epoch = epoch
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()})
        elif _selection_key(selection, val, val_loss) > best:
            best, best_epoch = _selection_key(selection, val, val_loss), epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()})
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", best=best_epoch)
    core = unwrap(model)
    if best_state is None:  # zero epochs: the initial weights
        best_state = copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()})
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


def _save_baseline(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({**meta, "sha256": sha256_file(path)}, indent=2, default=str))


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
    variants, ratios, seeds = args.variant, args.train_ratio, args.seeds
    out = writable_folder(args.out)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    with user_errors():  # refused before any model pass: the data, its classes and every planned split
        data = load_data(args.data, classes)
        check_class_images(data.labels, data.class_names, data.source)
        count_mixed_label_cases(data.case_ids, data.labels)
        for ratio in ratios:
            for seed in seeds:
                checked_split(data.case_ids, data.labels, data.class_names, ratio, seed, args.val_fraction)
    skips = data.skipped
    config_name = args.config or ("tiny" if args.profile == "tiny" else
                                  "scin" if args.data.startswith("scin:") else "ntd")
    overrides = {k: v for k, v in (("n_concepts", args.n_concepts), ("top_k", args.top_k),
                                   ("pool_padded", args.pool_padded)) if v is not None}
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
    log.info("protocol %s: mode %s, selection %s, validation %.0f%% of the held-out cases, pooling %s, %d epochs",
             args.protocol, args.mode, args.selection, 100 * args.val_fraction, config["pool_padded"], args.epochs)
    rows: list[dict] = []
    memo: dict[str, Any] = {"baseline_checkpoints": baseline_checkpoints(args.baseline_checkpoint, args.profile)}
    for ratio in ratios:
        for variant in variants:
            for seed in seeds:
                row = _one_run(variant, ratio, seed, args, data, fusion_data, encoder, config, n_classes, device,
                               out, rank, memo)
                rows.append(row)
    if rank == 0:
        write_results(rows, out, skips)
    return rows


def _one_run(variant: str, ratio: float, seed: int, args: argparse.Namespace, data: LabelledImages,
             fusion_data: FusionData | None, encoder: Any, config: dict, n_classes: int, device: torch.device,
             out: Path, rank: int, memo: dict[str, Any]) -> dict:
    """Train and evaluate one (variant, ratio, seed); rank 0 writes its checkpoint and plots. ``memo`` holds
    the preprocessed images across runs and the baselines' weights."""
    run_dir = out / f"{variant}_r{ratio}_s{seed}"
    desc = f"{variant} r={ratio} seed={seed}"
    amp = device.type == "cuda"
    vit_init = "pretrained" if encoder.weights.trained else "from scratch"
    finetuned_vit = None
    if variant in FUSION_VARIANTS:
        fd = fusion_data
        split = checked_split(fd.case_ids, fd.labels.tolist(), data.class_names, ratio, seed, args.val_fraction)
        sizes = split_summary(split, fd.case_ids, ratio)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_fusion(variant, n_classes, config)
        n, noise = int(config["n_concepts"]), float(config["pad_noise"])
        if args.mode == "end_to_end":
            images, kept = images_for(data, encoder, fd, memo)
            where = {record: row for row, record in enumerate(kept)}
            missing = [i for i in fd.record_index if i not in where]
            if missing:
                raise ValueError(f"{len(missing)} images have concept features but could not be read as images.")
            rows = torch.tensor([where[i] for i in fd.record_index], dtype=torch.long)
            trainable = EndToEndFusion(copy.deepcopy(encoder.vit).float().train(), model)
            result = train_run(trainable, fusion_forward,
                               lambda idx, g: end_to_end_batch(fd, images, rows, idx, n, noise, g), fd.labels,
                               split, n_classes, args.epochs, args.batch_size, args.lr, seed, device, desc,
                               args.selection, amp)
            trainable.load_state_dict(result.state)
            finetuned_vit = trainable.vit
        else:
            result = train_run(model, fusion_forward, lambda idx, g: fusion_batch(fd, idx, n, noise, g), fd.labels,
                               split, n_classes, args.epochs, args.batch_size, args.lr, seed, device, desc,
                               args.selection, amp)
            model.load_state_dict(result.state)
        mode, init = args.mode, f"ViT {vit_init}"
        data_hash = fd.data_hash()
    else:
        images, kept = images_for(data, encoder, fusion_data, memo)
        labels = torch.tensor([data.labels[i] for i in kept])
        case_ids = [data.records[i].case_id for i in kept]
        split = checked_split(case_ids, labels.tolist(), data.class_names, ratio, seed, args.val_fraction)
        sizes = split_summary(split, case_ids, ratio)
        model = build_baseline(variant, n_classes, args.profile, seed, memo["baseline_checkpoints"][variant])

        def batches(idx, g):
            x = images[torch.as_tensor(np.asarray(idx))].float()
            flip = torch.rand(len(idx), generator=g) < 0.5
            return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), labels[torch.as_tensor(np.asarray(idx))]

        result = train_run(model, image_forward, batches, labels, split, n_classes, args.epochs, args.batch_size,
                           args.lr, seed, device, desc, args.selection, amp)
        model.load_state_dict(result.state)
        mode, init = "end_to_end", model.init
        data_hash = hashlib.sha256("".join(sorted(str(data.records[i].path) for i in kept)).encode()).hexdigest()
    selection = _SELECTION_LABELS[args.selection] + (f" ({args.epochs})" if args.selection == "last" else "")
    test_metrics = {m: result.test_metrics[m] for m in METRICS}
    row = {"train_ratio": ratio, "variant": variant, "seed": seed, "training_mode": mode, "init": init,
           "selection": selection, "best_epoch": result.best_epoch, "epoch_seconds": result.epoch_seconds,
           **sizes, **test_metrics}
    log.info("%s: %d of %d cases train (%.1f %%), %d validate (held-out side), %d test", desc, sizes["train_cases"],
             sizes["total_cases"], 100 * sizes["train_ratio_actual"], sizes["val_cases"], sizes["test_cases"])
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"class_names": data.class_names, "preprocessing": PREPROCESSING, "data": data.source,
                "data_hash": data_hash, "metrics": test_metrics, "train_ratio": ratio, "seed": seed,
                "best_epoch": result.best_epoch, "epochs": args.epochs, "lr": args.lr, "protocol": args.protocol,
                "training_mode": mode, "init": init, "selection": selection, "split": sizes,
                "global_encoder": {"weights": encoder.weights.describe(), "trained": encoder.weights.trained,
                                   **global_encoder_meta(args.profile, args.vit_checkpoint)},
                "concepts": args.concepts}
        if variant in FUSION_VARIANTS:
            if finetuned_vit is not None:
                vit_path = run_dir / "global_encoder.safetensors"
                save_file({k: v.detach().contiguous().cpu() for k, v in finetuned_vit.state_dict().items()},
                          str(vit_path))
                meta["global_encoder"].update(global_encoder_meta(args.profile, fine_tuned=vit_path))
            save_fusion_checkpoint(model.cpu(), run_dir / "fusion.safetensors", meta)
        else:
            _save_baseline(model.cpu(), run_dir / f"{variant}.safetensors", {**meta, "variant": variant})
        write_run_report(result, data.class_names, run_dir, desc, mode, init, selection, test_metrics)
    return row


if __name__ == "__main__":
    sys.exit(run_main(main))
