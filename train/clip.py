"""Fine-tune CLIP on Derm7pt + PH2 image-text pairs (the MedGrad paper's recipe).

    python -m train.clip --derm7pt DERM7PT_ROOT --ph2 PH2_ROOT --out runs/clip \\
        --profile full --checkpoint checkpoints/clip_vit_b16_openai.safetensors [--device cuda]
    torchrun --nproc_per_node 4 -m train.clip ... --device cuda      # data-parallel (DDP)

Recipe (``--protocol paper``, the default; docs/protocols.md): one text per image, the diagnosis plus ALL
dermoscopic criteria in the data sets' words (``--text paper``; ``--text ours`` keeps present criteria
only, :mod:`train.data.text`); text augmentation reorders the criteria phrases, image augmentation flips,
rotates by multiples of 90 degrees and by a small random angle; images are seen as the app serves them,
the whole photo letterboxed to a square (``--view whole``; ``centre_crop`` for open_clip's crop); a
stratified 75/25 split BY CASE (seeded); Adam, lr 1e-5, batch 64, 30 epochs; the loss is the mean of the
image->text and text->image cross-entropies over the batch scaled by the model's logit_scale
(``open_clip.ClipLoss``, which also gathers features across ranks under DDP).

Reported before and after fine-tuning, on the held-out 25 %, each under its own name
(:mod:`train.clip_metrics`): the paper's "accuracy", i.e. in-batch image->text matching over batches of
``--match-batch-size`` (64) test pairs, with its precision / recall / F1 / specificity and the contrastive
loss over the same batches; 17-class zero-shot accuracy etc. with class prompts ("a dermoscopic image of
{class}"); the CLIP score (mean plain cosine of matched pairs, the paper's) and torchmetrics' CLIPScore.
Outputs in ``--out``: ``clip_finetuned.safetensors`` + ``.json`` sidecar
(config, class names, prompts, metrics, data hash, split seed), ``metrics.json``, ``report.md``,
``curves.png``, ``split.json``. The app finds the model as the manifest entry ``clip_finetuned``: copy
``clip_finetuned.safetensors`` and ``clip_finetuned.json`` from ``--out`` into ``checkpoints/`` (or pass
``--out checkpoints``); it is read back with ``skinapp.clip.load_clip_checkpoint``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from skinapp.cli_types import non_negative_int, open_fraction, positive_float, positive_int, seed_int
from skinapp.clip import build_clip, save_clip_checkpoint
from train.cli import run_main, user_errors, writable_folder
from train.clip_data import VIEWS, PairDataset, augment_image, collate, training_view  # noqa: F401
from train.clip_metrics import PAPER_MATCH_BATCH, clip_scores, in_batch_matching, zero_shot_metrics
from train.clip_report import REPORT_ROWS, datasets_used, json_safe, markdown_report, write_reports  # noqa: F401
from train.common import DistInfo, cleanup_distributed, init_distributed, seed_everything, unwrap
from train.data.derm7pt import read_derm7pt
from train.data.ph2 import read_ph2
from train.data.text import TEXT_BUILDERS, LesionRecord
from train.metrics import confusion_matrix
from train.splits import check_split_classes, count_mixed_label_cases, split_by_case

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "a dermoscopic image of {}"
#: Presets of ``--protocol``. "paper": the MedGrad paper's text, in-batch metric over its batch of 64, and the
#: view the app serves (the paper does not say how images were resized; see docs/protocols.md). "ours": our
#: shorter text (present criteria only).
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"text": "paper", "view": "whole", "match_batch_size": PAPER_MATCH_BATCH},
    "ours": {"text": "ours", "view": "whole", "match_batch_size": PAPER_MATCH_BATCH},
}
CHECKPOINT_NAME = "clip_finetuned.safetensors"


@dataclass
class ClipFinetuneConfig:
    """Settings of one fine-tuning run (paper defaults)."""

    derm7pt: str | None = None
    ph2: str | None = None
    out: str = "runs/clip"
    profile: str = "full"
    checkpoint: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-5
    seed: int = 0
    device: str = "cpu"
    labels: str = "merged"
    derm7pt_images: tuple[str, ...] = ("derm",)
    train_fraction: float = 0.75
    prompt: str = DEFAULT_PROMPT
    rotation_degrees: float = 15.0
    workers: int = 2
    protocol: str = "paper"
    text: str = "paper"
    view: str = "whole"
    match_batch_size: int = PAPER_MATCH_BATCH


@dataclass
class FinetuneResult:
    """What a run produced."""

    checkpoint: Path
    model: open_clip.CLIP
    before: dict[str, Any]
    after: dict[str, Any]
    history: dict[str, list[float]]
    epoch_seconds: list[float] = field(default_factory=list)


def records_hash(records: Sequence[LesionRecord]) -> str:
    """SHA-256 over (case, image file name and size, label, text) of every record: identifies the data."""
    rows = sorted((r.case_id, r.image_path.name, r.image_path.stat().st_size, r.label, r.text) for r in records)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def read_records(derm7pt: str | None, ph2: str | None, labels: str = "merged",
                 derm7pt_images: tuple[str, ...] = ("derm",)) -> list[LesionRecord]:
    """Read whichever data sets are given; at least one is required."""
    if not derm7pt and not ph2:
        raise ValueError("Give at least one data set (--derm7pt and/or --ph2)")
    records: list[LesionRecord] = []
    if derm7pt:
        records += read_derm7pt(derm7pt, labels=labels, images=derm7pt_images).records
    if ph2:
        records += read_ph2(ph2, labels=labels).records
    if not records:
        raise ValueError("No usable records were read (see the warnings above)")
    return records


def split_records(records: Sequence[LesionRecord], class_names: Sequence[str], train_fraction: float = 0.75,
                  seed: int = 0) -> tuple[list[LesionRecord], list[LesionRecord]]:
    """(train, test) records, stratified by class and split BY CASE with :func:`train.splits.split_by_case`.

    The paper's split has no validation part (``val_fraction`` 0): exactly ``train_fraction`` of the cases of
    each class (rounded) train, the rest are the test records.

    Raises:
        ValueError: a part would be empty, or a class would have no case in the train or the test part.
    """
    index = {name: i for i, name in enumerate(class_names)}
    case_ids, labels = [r.case_id for r in records], [index[r.label] for r in records]
    count_mixed_label_cases(case_ids, labels)
    split = split_by_case(case_ids, labels, train_fraction, seed, val_fraction=0.0)
    check_split_classes(split, case_ids, labels, class_names, train_fraction, seed)
    train_ids = set(split.train.tolist())
    return ([r for i, r in enumerate(records) if i in train_ids],
            [r for i, r in enumerate(records) if i not in train_ids])


@torch.no_grad()
def evaluate(model: open_clip.CLIP, tokenizer: Any, dataset: PairDataset, class_names: Sequence[str],
             prompt: str = DEFAULT_PROMPT, device: str | torch.device = "cpu", batch_size: int = 64,
             match_batch_size: int = PAPER_MATCH_BATCH, seed: int = 0) -> dict[str, Any]:
    """All reported metrics of ``dataset``, each under its own name (:mod:`train.clip_metrics`).

    One encoder pass over the pairs, then: in-batch image<->text matching over seeded random batches of
    ``match_batch_size`` pairs (``in_batch_accuracy`` is the paper's "accuracy"; ``loss`` is the contrastive
    loss over those same batches); 17-class zero-shot classification with ``prompt`` (``zero_shot_*``, with
    the ``zero_shot_confusion_matrix``); ``clip_score`` (mean plain cosine of matched pairs) and
    ``clipscore_torchmetrics``; ``n`` pairs.
    """
    was_training = model.training
    model.eval()
    prompts = tokenizer([prompt.format(name) for name in class_names]).to(device)
    class_features = model.encode_text(prompts, normalize=True)  # [C, D]
    images_f, texts_f, labels = [], [], []
    for images, texts, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        images_f.append(model.encode_image(images.to(device), normalize=True).float().cpu())  # [B, D]
        texts_f.append(model.encode_text(tokenizer(texts).to(device), normalize=True).float().cpu())  # [B, D]
        labels.append(y)
    model.train(was_training)
    image_features, text_features = torch.cat(images_f), torch.cat(texts_f)
    y_true = torch.cat(labels).tolist()
    y_pred = (image_features @ class_features.float().cpu().T).argmax(1).tolist()
    metrics: dict[str, Any] = {"n": len(y_true), "zero_shot_prompt": prompt}
    if len(y_true) >= 2:
        metrics.update(in_batch_matching(image_features, text_features, match_batch_size,
                                         float(model.logit_scale.exp()), seed))
    metrics.update(zero_shot_metrics(y_true, y_pred, len(class_names)))
    metrics["zero_shot_confusion_matrix"] = confusion_matrix(y_true, y_pred, len(class_names)).tolist()
    metrics.update(clip_scores(image_features, text_features))
    return metrics


def train_one_epoch(model: torch.nn.Module, tokenizer: Any, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    loss_fn: open_clip.ClipLoss, device: torch.device, dist: DistInfo, desc: str = "") -> float:
    """One pass over ``loader``; returns the mean training loss (averaged over ranks)."""
    model.train()
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    for images, texts, _ in tqdm(loader, desc=desc, leave=False, disable=not dist.is_main):
        if len(texts) < 2:
            continue  # a one-pair batch has no negatives
        image_features, text_features, scale = model(images.to(device), tokenizer(texts).to(device))[:3]
        loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            unwrap(model).logit_scale.clamp_(0, math.log(100))
        total += loss.detach() * len(texts)
        count += len(texts)
    if dist.enabled:
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(count)
    return float(total / count.clamp(min=1))


def finetune(config: ClipFinetuneConfig, records: Sequence[LesionRecord] | None = None) -> FinetuneResult | None:
    """Run one fine-tuning job; returns the result on the main rank (None on the others)."""
    dist, device = init_distributed(config.device)
    try:
        return _finetune(config, records, dist, device)
    finally:
        cleanup_distributed(dist)


def _finetune(config: ClipFinetuneConfig, records: Sequence[LesionRecord] | None, dist: DistInfo,
              device: torch.device) -> FinetuneResult | None:
    seed_everything(config.seed + dist.rank)
    if dist.is_main:
        writable_folder(config.out)  # before any training: the outputs must have a place
    with user_errors():
        if records is None:
            records = read_records(config.derm7pt, config.ph2, config.labels, config.derm7pt_images)
        class_names = sorted({r.label for r in records})
        train_records, test_records = split_records(records, class_names, config.train_fraction, config.seed)
    log.info("%d records, %d classes; train %d / test %d images", len(records), len(class_names),
             len(train_records), len(test_records))
    bundle = build_clip(config.profile, config.checkpoint, device=device, seed=config.seed)
    model, tokenizer = bundle.model, bundle.tokenizer
    preprocess = training_view(config.view, bundle)
    train_set = PairDataset(train_records, class_names, preprocess, augment=True,
                            rotation_degrees=config.rotation_degrees, text=config.text)
    test_set = PairDataset(test_records, class_names, preprocess, text=config.text)
    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True,
                                                               seed=config.seed) if dist.enabled else None)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=config.workers, collate_fn=collate, drop_last=False,
                        generator=torch.Generator().manual_seed(config.seed), pin_memory=device.type == "cuda")
    wrapped: torch.nn.Module = model
    if dist.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                            else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = open_clip.ClipLoss(gather_with_grad=True, rank=dist.rank, world_size=dist.world_size)

    def eval_now() -> dict[str, Any] | None:
        return evaluate(model, tokenizer, test_set, class_names, config.prompt, device, config.batch_size,
                        config.match_batch_size, config.seed) \
            if dist.is_main else None

    before = eval_now()
    history: dict[str, list[float]] = {"loss/train": [float("nan")]}
    if dist.is_main:
        history.update({"loss/test": [before["loss"]], "accuracy/in-batch test": [before["in_batch_accuracy"]],
                        "accuracy/zero-shot test": [before["zero_shot_accuracy"]]})
    epoch_seconds: list[float] = []
    after = before
    for epoch in range(config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        start = time.perf_counter()
        train_loss = train_one_epoch(wrapped, tokenizer, loader, optimizer, loss_fn, device, dist,
                                     desc=f"epoch {epoch + 1}/{config.epochs}")
        epoch_seconds.append(time.perf_counter() - start)
        history["loss/train"].append(train_loss)
        if dist.is_main:
            after = eval_now()
            history["loss/test"].append(after["loss"])
            history["accuracy/in-batch test"].append(after["in_batch_accuracy"])
            history["accuracy/zero-shot test"].append(after["zero_shot_accuracy"])
            log.info("epoch %d: train loss %.4f, test loss %.4f, in-batch acc %.3f, zero-shot acc %.3f (%.1f s)",
                     epoch + 1, train_loss, after["loss"], after["in_batch_accuracy"], after["zero_shot_accuracy"],
                     epoch_seconds[-1])
        if dist.enabled:
            torch.distributed.barrier()
    if not dist.is_main:
        return None
    return _write_outputs(config, model, bundle.config, records, train_records, test_records, class_names,
                          before, after, history, epoch_seconds)


def _write_outputs(config: ClipFinetuneConfig, model: open_clip.CLIP, model_config: dict[str, Any],
                   records: Sequence[LesionRecord], train_records: Sequence[LesionRecord],
                   test_records: Sequence[LesionRecord], class_names: list[str], before: dict[str, Any],
                   after: dict[str, Any], history: dict[str, list[float]], epoch_seconds: list[float]
                   ) -> FinetuneResult:
    out = writable_folder(config.out)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    datasets = datasets_used(records)
    meta = json_safe({
        "label": f"fine-tuned ({' + '.join(datasets)})", "datasets": datasets, "class_names": class_names,
        "prompts": [config.prompt.format(c) for c in class_names], "prompt_template": config.prompt,
        "metrics_before": before, "metrics_after": after, "data_hash": records_hash(records),
        "split_seed": config.seed, "epochs": config.epochs, "label_scheme": config.labels,
        "base_checkpoint": config.checkpoint, "profile": config.profile, "settings": settings,
        "n_train": len(train_records), "n_test": len(test_records), "protocol": config.protocol,
        "text": config.text, "view": config.view,
        "preprocessing": "whole photo letterboxed to a square (CLIP mean colour), bicubic resize"
        if config.view == "whole" else "open_clip eval transform: resize short side, centre crop",
    })
    checkpoint = save_clip_checkpoint(model, out / CHECKPOINT_NAME, model_config, meta)
    split = {"seed": config.seed, "train_cases": sorted({r.case_id for r in train_records}),
             "test_cases": sorted({r.case_id for r in test_records})}
    summary = {"before": before, "after": after, "history": history, "epoch_seconds": epoch_seconds,
               "class_names": class_names, "datasets": datasets, "data_hash": meta["data_hash"],
               "settings": settings, "checkpoint": str(checkpoint)}
    write_reports(out, config, summary, split, class_names, len(train_records), len(test_records))
    log.info("saved %s; in-batch matching accuracy (batch %d) %.4f -> %.4f; zero-shot accuracy %.4f -> %.4f",
             checkpoint, after["in_batch_size"], before["in_batch_accuracy"], after["in_batch_accuracy"],
             before["zero_shot_accuracy"], after["zero_shot_accuracy"])
    return FinetuneResult(checkpoint=checkpoint, model=model, before=before, after=after, history=history,
                          epoch_seconds=epoch_seconds)


def parse_args(argv: Sequence[str] | None = None) -> ClipFinetuneConfig:
    p = argparse.ArgumentParser(prog="python -m train.clip", description=__doc__.split("\n")[0])
    p.add_argument("--derm7pt", help="folder holding release_v0 (or release_v0 itself)")
    p.add_argument("--ph2", help="folder holding PH2Dataset (or PH2Dataset itself)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--profile", choices=("tiny", "full"), default="full")
    p.add_argument("--checkpoint", help="pretrained CLIP weights (e.g. OpenAI ViT-B-16); random init when absent")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-5)
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the split, the init and the augmentation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--labels", choices=("merged", "subtypes"), default="merged",
                   help="merged: melanoma subtypes -> melanoma (17 classes); subtypes: keep them (22)")
    p.add_argument("--derm7pt-images", nargs="+", choices=("derm", "clinic"), default=["derm"])
    p.add_argument("--train-fraction", type=open_fraction, default=0.75,
                   help="share of the cases that train, strictly between 0 and 1 (the rest test)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="zero-shot prompt template with one {}")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader worker processes")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper",
                   help="preset of --text / --view / --match-batch-size (docs/protocols.md); options override")
    p.add_argument("--text", choices=sorted(TEXT_BUILDERS), default=None,
                   help="paper: diagnosis + all criteria in the data sets' words; ours: present criteria only")
    p.add_argument("--view", choices=VIEWS, default=None,
                   help="whole: the letterboxed whole photo the app explains; centre_crop: open_clip's eval crop")
    p.add_argument("--match-batch-size", type=positive_int, default=None,
                   help="pairs per batch of the in-batch matching metric (the paper: 64)")
    a = p.parse_args(argv)
    for key, value in PROTOCOLS[a.protocol].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.profile == "full" and not a.checkpoint:
        log.warning("--profile full without --checkpoint trains from random weights (the paper starts from OpenAI's)")
    return ClipFinetuneConfig(derm7pt=a.derm7pt, ph2=a.ph2, out=a.out, profile=a.profile, checkpoint=a.checkpoint,
                              epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device=a.device,
                              labels=a.labels, derm7pt_images=tuple(a.derm7pt_images),
                              train_fraction=a.train_fraction, prompt=a.prompt, workers=a.workers,
                              protocol=a.protocol, text=a.text, view=a.view, match_batch_size=a.match_batch_size)


def main(argv: Sequence[str] | None = None) -> FinetuneResult | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return finetune(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_main(main))
