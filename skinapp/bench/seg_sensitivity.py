"""Sensitivity of the weight-free lesion extractor to its constants: each halved and doubled, one at a time.

    python -m skinapp.bench.seg_sensitivity --data ../shared/data/pad_ufes_20 --data ../shared/data/ham10000 \
        [--out bench_results/seg_sensitivity] [--side 1024] [--limit N]

For every numeric field of :class:`~skinapp.concepts.fallback_lesions.LesionConfig`, the analysis side of
:class:`~skinapp.concepts.fallback.FallbackConfig` and the module constants ``MIN_SPLIT_DELTA_E`` and
``JND_DELTA_E`` of :mod:`skinapp.concepts.fallback_lesions`, the benchmark (:mod:`skinapp.bench.segmentation`)
is run with that value x 0.5 and x 2 (integers rounded, at least 1 where 0 would disable the step) and the
top-1 IoU per data set is reported next to the defaults; each on/off step (the boolean fields: rim growth,
outline choice, ranking by the outline) is also switched. A result that holds only at the chosen value is
tuned, not designed: this table is how a reader checks that (Markdown + JSON in ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import torch

from skinapp.bench import segmentation as seg
from skinapp.bench.seg_methods import extractor_method
from skinapp.concepts import fallback_lesions as fl
from skinapp.concepts.fallback import ColourConceptExtractor, FallbackConfig

log = logging.getLogger(__name__)

#: Module constants of :mod:`skinapp.concepts.fallback_lesions` varied alongside the config fields.
MODULE_CONSTANTS = ("MIN_SPLIT_DELTA_E", "JND_DELTA_E")


@contextlib.contextmanager
def _constant(name: str, value: float) -> Iterator[None]:
    old = getattr(fl, name)
    setattr(fl, name, value)
    try:
        yield
    finally:
        setattr(fl, name, old)


def _scaled(value: float | int, factor: float) -> float | int:
    return max(1, round(value * factor)) if isinstance(value, int) else value * factor


def variants() -> list[tuple[str, str, FallbackConfig, tuple[str, float] | None]]:
    """(parameter, value shown, config, module constant to set or None): defaults first, then x0.5 and x2 each,
    then each boolean switched."""
    base = FallbackConfig()
    out: list[tuple[str, str, FallbackConfig, tuple[str, float] | None]] = [("defaults", "", base, None)]
    for f in dataclasses.fields(fl.LesionConfig):
        value = getattr(base.lesion, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        for factor in (0.5, 2.0):
            new = _scaled(value, factor)
            if new != value:
                out.append((f.name, f"{new:g}", dataclasses.replace(base, lesion=dataclasses.replace(
                    base.lesion, **{f.name: new})), None))
    for factor in (0.5, 2.0):
        out.append(("analysis_side", str(_scaled(base.analysis_side, factor)),
                    dataclasses.replace(base, analysis_side=_scaled(base.analysis_side, factor)), None))
    for name in MODULE_CONSTANTS:
        for factor in (0.5, 2.0):
            new = getattr(fl, name) * factor
            out.append((name, f"{new:g}", base, (name, new)))
    for f in dataclasses.fields(fl.LesionConfig):  # each on/off step of the method, switched
        value = getattr(base.lesion, f.name)
        if isinstance(value, bool):
            out.append((f.name, str(not value), dataclasses.replace(base, lesion=dataclasses.replace(
                base.lesion, **{f.name: not value})), None))
    return out


def run(folders: Sequence[str | Path], side: int | None = 1024, limit: int | None = None) -> list[dict]:
    """One row per variant: parameter, value, and top-1 IoU / misses per data set."""
    rows = []
    for name, shown, config, constant in variants():
        method = extractor_method("colour_fallback", ColourConceptExtractor(config=config, cache_size=1))
        with _constant(*constant) if constant else contextlib.nullcontext():
            summary = seg.summarise(seg.run(folders, [method], side, limit))
        row = {"parameter": name, "value": shown}
        for s in summary:
            row[s["dataset"]] = {"top1_iou": s["top1_iou"], "misses": s["misses"], "images": s["images"]}
        rows.append(row)
        log.info("%s %s: %s", name, shown, {k: round(v["top1_iou"], 3) for k, v in row.items() if isinstance(v, dict)})
    return rows


def to_markdown(rows: Sequence[dict]) -> str:
    """A table: parameter, value, top-1 IoU (misses) per data set."""
    datasets = [k for k in rows[0] if k not in ("parameter", "value")]
    lines = ["| parameter | value | " + " | ".join(f"{d} top-1 IoU (misses)" for d in datasets) + " |",
             "|---" * (2 + len(datasets)) + "|"]
    for r in rows:
        cells = [f"{r[d]['top1_iou']:.2f} ({r[d]['misses']})" for d in datasets]
        lines.append(f"| {r['parameter']} | {r['value'] or 'default'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinapp.bench.seg_sensitivity", description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="folder with labels.csv (repeatable)")
    ap.add_argument("--out", default="bench_results/seg_sensitivity", help="folder for sensitivity.json/.md")
    ap.add_argument("--side", type=int, default=1024, help="long side each photo is resized to (0: as stored)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many masked photos per folder (0: all)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows = run(args.data, args.side or None, args.limit or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(rows, indent=1))
    (out / "sensitivity.md").write_text(to_markdown(rows))
    print(to_markdown(rows))  # the report is this command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
