"""Faithfulness evaluation of the three phrase explainers over a folder of images.

    python -m skinapp.explain.evaluate --images DIR --phrases FILE --out DIR \\
        [--profile tiny|full] [--checkpoint PATH] [--masks DIR] [--steps 20] \\
        [--deletion-substrate zero|blur|mean] [--insertion-substrate blur|zero|mean] [--pointing-tolerance 15]

For every image x phrase x method: CLIP similarity, deletion AUC, insertion AUC and, when a mask
``<masks>/<image stem>.png`` exists (non-zero = inside, e.g. the lesion mask), energy inside the mask
and the pointing game. Defaults are the published definitions (RISE deletion onto zeros, insertion from a
blur with kernel 11 and sigma 5; pointing game with Zhang et al.'s 15 px tolerance). Writes ``metrics.csv``
(one row each), ``summary.csv`` (means per method), ``curves.png`` (mean deletion/insertion curves per
method) and ``overlays/<stem>.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import CenterCrop, InterpolationMode, Resize  # noqa: E402
from tqdm import tqdm  # noqa: E402

from skinapp.clip.model import build_clip, letterbox, whole_photo_preprocess  # noqa: E402
from skinapp.clip.text import encode_texts  # noqa: E402
from skinapp.explain.metrics import (  # noqa: E402
    DEFAULT_SUBSTRATES,
    POINTING_TOLERANCE_PX,
    SUBSTRATES,
    deletion_curve,
    energy_in_mask,
    insertion_curve,
    pointing_game,
)
from skinapp.explain.pipeline import METHODS, encode_image_for_explain, explain_from_pass  # noqa: E402
from skinapp.image import InvalidImageError, load_image  # noqa: E402
from skinapp.provenance import UNTRAINED_WARNING  # noqa: E402

log = logging.getLogger("skinapp.explain.evaluate")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FIELDS = ["image", "phrase", "method", "similarity", "deletion_auc", "insertion_auc", "energy_in_mask",
          "pointing_game", "weights"]


def read_phrases(path: Path) -> list[str]:
    """One phrase per line; blank lines and lines starting with '#' are ignored."""
    phrases = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    phrases = [p for p in phrases if p and not p.startswith("#")]
    if not phrases:
        raise ValueError(f"{path} holds no phrases (one per line)")
    return phrases


#: Views of the photo the explainers can be evaluated on: "whole" (letterboxed, what the app explains and
#: train.clip fine-tunes on) or "centre_crop" (open_clip's eval transform).
VIEWS = ("whole", "centre_crop")


def load_mask(masks_dir: Path | None, stem: str, size: int, view: str = "whole") -> np.ndarray | None:
    """The mask for an image [size, size] bool, in the same view as the model input (nearest neighbour)."""
    if masks_dir is None:
        return None
    path = masks_dir / f"{stem}.png"
    if not path.is_file():
        return None
    m = Image.open(path).convert("L")
    if view == "whole":
        square = letterbox(np.repeat(np.asarray(m)[..., None], 3, axis=2), fill=(0, 0, 0))[..., 0]
        m = Image.fromarray(square).resize((size, size), Image.Resampling.NEAREST)
    else:
        m = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.NEAREST)(m))
    return np.asarray(m) > 0


def _overlay_figure(expl, path: Path, title: str) -> None:
    T, methods = len(expl.phrases), expl.methods
    fig, axes = plt.subplots(T, len(methods) + 1, figsize=(3 * (len(methods) + 1), 3 * T), squeeze=False)
    rgb = expl.input_rgb()
    for t in range(T):
        axes[t, 0].imshow(rgb)
        axes[t, 0].set_title(f"{expl.phrases[t][:30]}\nS={expl.similarities[t]:.3f}", fontsize=8)
        for j, m in enumerate(methods, start=1):
            axes[t, j].imshow(expl.overlay(m, t, rgb))
            axes[t, j].set_title(m, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _curves_figure(curves: dict[str, dict[str, list]], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for m in METHODS:
            runs = curves[m][kind]
            if not runs:
                continue
            x = runs[0].fractions
            mean = np.mean([c.scores for c in runs], axis=0)
            ax.plot(x, mean, label=f"{m} (AUC {np.mean([c.auc for c in runs]):.4f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'restored'}")
        ax.set_ylabel("CLIP similarity S")
        ax.set_title(kind)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(images_dir: Path, phrases: list[str], out_dir: Path, profile: str = "tiny",
             checkpoint: Path | None = None, masks_dir: Path | None = None, steps: int = 20,
             substrate: str | None = None, eclip_mode: str = "multihead", batch_size: int = 16,
             deletion_substrate: str = DEFAULT_SUBSTRATES["deletion"],
             insertion_substrate: str = DEFAULT_SUBSTRATES["insertion"],
             pointing_tolerance: float = POINTING_TOLERANCE_PX, view: str = "whole") -> list[dict]:
    """Run the evaluation; returns the metric rows (also written to ``out_dir``).

    Defaults are the published metrics (:mod:`skinapp.explain.metrics`): deletion onto zeros, insertion from a
    blur (kernel 11, sigma 5), pointing game with a 15 px tolerance. ``substrate`` (when given) sets both curves.
    ``view`` (:data:`VIEWS`): the photo as the app explains it ("whole", letterboxed) or centre-cropped.
    """
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; choose from {VIEWS}")
    if substrate is not None:
        deletion_substrate = insertion_substrate = substrate
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images_dir}")
    bundle = build_clip(profile, checkpoint=checkpoint)
    model, weights = bundle.model, bundle.weights
    title = f"CLIP: {bundle.label} - {weights.describe()}"
    if not weights.trained:
        log.warning(UNTRAINED_WARNING)
        title = f"{UNTRAINED_WARNING} | {title}"
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    text = encode_texts(model, bundle.tokenizer, phrases)
    rows: list[dict] = []
    curves = {m: {"deletion": [], "insertion": []} for m in METHODS}
    for path in tqdm(paths, desc="images"):
        try:
            loaded = load_image(path)
        except InvalidImageError as exc:
            log.warning("Skipping %s: %s", path.name, exc)
            continue
        preprocess = whole_photo_preprocess(bundle.image_size) if view == "whole" else bundle.preprocess
        ip = encode_image_for_explain(model, loaded.pil(), preprocess=preprocess, weights=weights)
        expl = explain_from_pass(model, ip, text.features, METHODS, eclip_mode)
        expl.phrases = text.phrases
        mask = load_mask(masks_dir, path.stem, bundle.image_size, view)
        for t, phrase in enumerate(text.phrases):
            for m in METHODS:
                heat = expl.heatmap(m, t)
                kw = dict(steps=steps, batch_size=batch_size)
                dc = deletion_curve(model, ip.image, text.features[t], heat, substrate=deletion_substrate, **kw)
                ic = insertion_curve(model, ip.image, text.features[t], heat, substrate=insertion_substrate, **kw)
                curves[m]["deletion"].append(dc)
                curves[m]["insertion"].append(ic)
                rows.append({"image": path.name, "phrase": phrase, "method": m,
                             "similarity": float(expl.similarities[t]), "deletion_auc": dc.auc,
                             "insertion_auc": ic.auc,
                             "energy_in_mask": energy_in_mask(heat, mask) if mask is not None else float("nan"),
                             "pointing_game": pointing_game(heat, mask, pointing_tolerance) if mask is not None
                             else float("nan"),
                             "weights": weights.describe()})
        _overlay_figure(expl, out_dir / "overlays" / f"{path.stem}.png", title)
    if not rows:
        raise ValueError(f"None of the images in {images_dir} could be read")
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "n", "deletion_auc", "insertion_auc", "energy_in_mask", "pointing_game"])
        for m in METHODS:
            sel = [r for r in rows if r["method"] == m]
            means = [float(np.nanmean([r[k] for r in sel])) if any(np.isfinite(r[k]) for r in sel) else float("nan")
                     for k in ("deletion_auc", "insertion_auc", "energy_in_mask", "pointing_game")]
            writer.writerow([m, len(sel), *[f"{v:.6f}" for v in means]])
    _curves_figure(curves, out_dir / "curves.png", title)
    log.info("Wrote %d rows to %s", len(rows), out_dir / "metrics.csv")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of images")
    ap.add_argument("--phrases", type=Path, required=True, help="text file, one phrase per line")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--profile", default="tiny", choices=["tiny", "full"])
    ap.add_argument("--checkpoint", type=Path, default=None, help="CLIP weights (default: random, untrained)")
    ap.add_argument("--masks", type=Path, default=None, help="folder of <stem>.png reference masks")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--substrate", default=None, choices=list(SUBSTRATES),
                    help="one substrate for both curves (default: the published ones, below)")
    ap.add_argument("--deletion-substrate", default=DEFAULT_SUBSTRATES["deletion"], choices=list(SUBSTRATES),
                    help="RISE deletion: zeros of the model input (default)")
    ap.add_argument("--insertion-substrate", default=DEFAULT_SUBSTRATES["insertion"], choices=list(SUBSTRATES),
                    help="RISE insertion: Gaussian blur, kernel 11, sigma 5 (default)")
    ap.add_argument("--pointing-tolerance", type=float, default=POINTING_TOLERANCE_PX,
                    help="pointing-game tolerance in mask pixels (Zhang et al.: 15; 0 = strict)")
    ap.add_argument("--view", default="whole", choices=list(VIEWS),
                    help="whole: the letterboxed photo the app explains (default); centre_crop: open_clip's crop")
    ap.add_argument("--eclip-mode", default="multihead", choices=["multihead", "official"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    for name in ("images", "masks"):
        p = getattr(args, name)
        if p is not None and not p.is_dir():
            ap.error(f"--{name} {p} is not a folder")
    if not args.phrases.is_file():
        ap.error(f"--phrases {args.phrases} is not a file")
    try:
        evaluate(args.images, read_phrases(args.phrases), args.out, args.profile, args.checkpoint, args.masks,
                 args.steps, args.substrate, args.eclip_mode, args.batch_size, args.deletion_substrate,
                 args.insertion_substrate, args.pointing_tolerance, args.view)
    except ValueError as exc:
        ap.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
