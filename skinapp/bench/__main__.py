"""python -m skinapp.bench [--device cpu|cuda] [--quick] [--out DIR] [--threads N] [--sam vit_b|vit_l|vit_h]
[--compile]"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from skinapp.bench.run import run_benchmark, to_markdown, write_results
from skinapp.cli_types import non_negative_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m skinapp.bench", description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny models, few repeats (CI-sized)")
    ap.add_argument("--out", default="bench_results", help="directory for the JSON and Markdown results")
    ap.add_argument("--threads", type=non_negative_int, default=os.environ.get("OMP_NUM_THREADS") or "2",
                    help="torch CPU threads (default: $OMP_NUM_THREADS, else 2; 0: torch's default)")
    ap.add_argument("--sam", default="vit_b", choices=["vit_b", "vit_l", "vit_h"], help="SAM variant (full form)")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile of the SAM encoder (its compilation takes minutes on a CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available")
    results = run_benchmark(args.device, quick=args.quick, threads=args.threads or None, sam_variant=args.sam,
                            compile_sam=args.compile)
    json_path, md_path = write_results(results, args.out)
    print(to_markdown(results))  # the report is this command's output
    logging.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
