"""Time one refinement click: SAM's prompt encoder + mask decoder on a cached embedding (tiny SAM, and the
full-size vit_b decoder with random weights), and GrabCut (demo mode).

``python -m skinapp.bench.refine_timing [--threads 1 2] [--repeats 10]`` prints the median and the spread per
method and thread count. The vit_b embedding is random (the decoder's cost does not depend on its values), so no
encoder pass is timed or needed; the GrabCut photo is synthetic at the app's working size unless --photo is given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from skinapp.concepts.refine import grabcut_refine, sam_refine
from skinapp.concepts.segmenter import SamEmbedding, build_segmenter
from skinapp.image import load_image
from skinapp.synthetic import make_skin_photo


def _clicks(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(threads: int, repeats: int, photo: str | None = None) -> dict[str, list[float]]:
    """Seconds per click, ``repeats`` clicks per method, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    image = load_image(photo) if photo else load_image(make_skin_photo(seed=2, size=(768, 1024)).pixels)
    h, w = image.pixels.shape[:2]
    box, point = (w * 0.3, h * 0.3, w * 0.7, h * 0.7), [[w * 0.5, h * 0.5]]
    results = {}
    for name, profile in (("sam_tiny", "tiny"), ("sam_vit_b_decoder", "full")):
        seg = build_segmenter(profile, variant="vit_b", encoder_bf16=False)
        g = seg.grid_size
        scale = seg.img_size / max(h, w)
        emb = SamEmbedding(torch.randn(1, 256, g, g), (round(h * scale), round(w * scale)), (h, w))
        first = sam_refine(seg, emb, box, point, [1])  # warm-up; later clicks carry the mask prompt
        results[name] = _clicks(lambda s=seg, e=emb, f=first: sam_refine(s, e, box, point + [[w * 0.4, h * 0.4]],
                                                                        [1, 0], mask_input=f.low_res_logits), repeats)
    previous = grabcut_refine(image.pixels, box, [], []).mask
    results["grabcut"] = _clicks(lambda: grabcut_refine(image.pixels, box, point, [1], previous=previous), repeats)
    results["_size"] = [float(h), float(w)]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinapp.bench.refine_timing", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--photo", default=None)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    for threads in args.threads:
        results = measure(threads, args.repeats, args.photo)
        h, w = results.pop("_size")
        for name, times in results.items():
            print(f"threads={threads} {name:18s} photo {int(w)}x{int(h)}: "
                  f"median {statistics.median(times) * 1000:7.1f} ms "
                  f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
