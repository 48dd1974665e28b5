"""Time the phrase path: image pass once, then T phrases x 3 methods, fast (batched) vs naive.

    python -m skinapp.explain.timing [--profile full] [--threads 2] [--repeats 3]

Full ViT-B/16 at 224 px with random weights by default. Numbers on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from PIL import Image

from skinapp.clip.model import build_clip
from skinapp.clip.text import encode_texts
from skinapp.explain.naive import naive_maps
from skinapp.explain.pipeline import METHODS, encode_image_for_explain, explain_from_pass
from skinapp.synthetic import make_skin_photo

log = logging.getLogger("skinapp.explain.timing")
PHRASES = ["irregular streaks", "blue-whitish veil", "ulcer with undermined edges", "atypical pigment network",
           "regression structures"]


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="full", choices=["tiny", "full"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    bundle = build_clip(args.profile, seed=0)
    model = bundle.model
    image = bundle.preprocess(Image.fromarray(make_skin_photo(seed=3).pixels))[None]
    res: dict[str, float] = {}
    with torch.no_grad():
        model.encode_image(image)  # warm-up
    res["image_pass_s"], ip = _timed(lambda: encode_image_for_explain(model, image), args.repeats)
    res["text_fast_5_s"], enc = _timed(lambda: encode_texts(model, bundle.tokenizer, PHRASES, cache=None),
                                       args.repeats)
    res["text_full_5_s"], _ = _timed(lambda: encode_texts(model, bundle.tokenizer, PHRASES, fast=False, cache=None),
                                     args.repeats)
    for T in (1, 5):
        feats = enc.features[:T]
        res[f"fast_{T}x3_s"], fast = _timed(lambda f=feats: explain_from_pass(model, ip, f, METHODS), args.repeats)
        t0 = time.perf_counter()
        slow = naive_maps(model, image, feats, METHODS, ip.entropy_weight)
        res[f"naive_{T}x3_s"] = time.perf_counter() - t0
        err = max(float((fast.maps[m].flatten(1) - slow[m]).norm() / slow[m].norm().clamp_min(1e-30))
                  for m in METHODS)
        res[f"max_rel_err_{T}"] = err
    log.info("CLIP %s, random weights, %d threads, median of %d (naive: 1 run)", args.profile, args.threads,
             args.repeats)
    for k, v in res.items():
        log.info("  %-16s %.4g", k, v)
    return res


if __name__ == "__main__":
    main()
