"""``python -m skinapp.analyze PATHS... --out DIR``: the app's analysis over many photos (see :mod:`skinapp.batch`).

PATHS are photos, folders (searched recursively), globs or CSV lists. The run resumes where it stopped (photos
with a record in DIR are skipped) when DIR's ``run.json`` shows the same setup (models' weights, classes, CLIP,
prompts, phrases; :mod:`skinapp.batch_setup`), and refuses otherwise; ``--restart`` starts over. It keeps going
past unreadable photos and broken links (listed in ``errors.csv``), and under ``torchrun --nproc_per_node N -m
skinapp.analyze ...`` (one or several nodes) each rank analyses every N-th photo; rank 0 waits for the others and
writes the summaries.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from skinapp import model_configs
from skinapp.batch import CSV_PATH_COLUMNS, IMAGE_SUFFIXES, analyse_photos, collect_photos, shard, write_summaries
from skinapp.batch_encode import CUDA_BATCH_SIZE, default_batch_size
from skinapp.batch_setup import SetupMismatchError, check_setup, describe_setup, discard_outputs, write_setup
from skinapp.cli_types import positive_int
from skinapp.concepts.prompts import normalise_prompts
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.models import SETUP_ERRORS
from skinapp.phrases import parse_phrases
from skinapp.pipeline import Analyzer

log = logging.getLogger("skinapp.analyze")


#: argparse type: a whole number >= 1.
def _prompts(text: str) -> str:
    """argparse type of --prompts: the text as typed, once :func:`normalise_prompts` finds phrases in it.

    An empty or blank value is refused, unlike the app's Analyse box (whose "" means the defaults): on a command
    line the defaults come from leaving the option out, and an empty value is most often a shell variable that
    expanded to nothing, which must not run (and record in run.json) other prompts than the ones meant.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError('empty: give concept prompts, e.g. "lesion . arm", or leave --prompts out '
                                         "for the app's default prompts")
    try:
        normalise_prompts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def read_phrases(path: Path) -> list[str]:
    """The Explain phrases of a UTF-8 text file, one per line (:func:`skinapp.phrases.parse_phrases`).

    Raises:
        ValueError: "--phrases PATH: ..." -- file not found, cannot be read, not UTF-8 text, or no usable phrase.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--phrases {path}: file not found") from None
    except OSError as exc:
        raise ValueError(f"--phrases {path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--phrases {path}: not UTF-8 text") from None
    try:
        return parse_phrases(text)
    except ValueError as exc:
        raise ValueError(f"--phrases {path}: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m skinapp.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+",
                        help="photos, folders, globs or CSV lists (first row: the column names; the photo path is "
                             f"read from the first column named {', '.join(CSV_PATH_COLUMNS)}, else from the first "
                             "column; paths relative to the CSV's folder)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (resumed when it exists and its run.json shows the same setup)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the results the batch wrote in --out (progress, summaries, overlays, heatmaps, "
                             "run.json) and start over")
    parser.add_argument("--profile", default="auto", choices=("auto", "tiny", "full"),
                        help="models, as the app's --profile (default auto: full where checkpoints resolve)")
    parser.add_argument("--prompts", type=_prompts, default=None,
                        help='concept prompts, e.g. "lesion . arm . leg"; leave it out for the app\'s default prompts '
                             f'({" . ".join(DEFAULT_PROMPTS)}); an empty value is refused')
    parser.add_argument("--phrases", type=Path, default=None,
                        help="a text file of diagnostic phrases, one per line: adds heatmaps/ and phrases.csv")
    parser.add_argument("--no-overlays", action="store_true", help="skip overlays/ (faster, less disk)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help=f"photos per image-encoder batch (default {CUDA_BATCH_SIZE} on CUDA, 1 on a CPU)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if distributed:
        torch.distributed.init_process_group(backend="gloo")  # only for the final barrier
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file; the batch writes a folder there.")
        photos = collect_photos(args.paths)
        if not photos:
            raise ValueError(f"no photos found in {', '.join(map(str, args.paths))} (photo files end in "
                             f"{', '.join(IMAGE_SUFFIXES)}).")
        phrases = read_phrases(args.phrases) if args.phrases else None
    except (FileNotFoundError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    device = args.device
    if device is None and distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        model_configs.apply_from_env()  # architecture configs before anything is built, as app.py
        analyzer = Analyzer.create(args.profile, device=device)
    except SETUP_ERRORS as exc:  # one line, as app.py
        log.error("not starting: %s", exc)
        return 2
    if rank == 0:
        log.info("%d photos; models: %s", len(photos), analyzer.describe())
    setup = describe_setup(analyzer, args.profile, args.prompts, phrases)
    try:  # every rank checks (read-only) before rank 0 writes anything: all refuse alike, none waits forever
        if not args.restart:
            check_setup(args.out, setup)
    except SetupMismatchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        if args.restart:
            discard_outputs(args.out)
        write_setup(args.out, setup)
    if distributed:  # the other ranks start once the folder is cleared and run.json is written
        torch.distributed.barrier()
    batch_size = args.batch_size or default_batch_size(analyzer.device)
    mine = shard(photos, rank, world)
    t0 = time.perf_counter()
    analysed, failed, skipped = analyse_photos(
        analyzer, mine, args.out, rank=rank, prompts=args.prompts, phrases=phrases,
        overlays=not args.no_overlays, batch_size=batch_size,
        progress=lambda it: tqdm(it, desc=f"rank {rank}" if distributed else "photos", unit="photo"))
    seconds = time.perf_counter() - t0
    log.info("rank %d: %d analysed, %d failed, %d already done (%.2f photos/s)", rank, analysed, failed, skipped,
             analysed / seconds if seconds > 0 and analysed else 0.0)
    if distributed:
        torch.distributed.barrier()
    if rank == 0:
        totals = write_summaries(args.out)
        log.info("%s: %d photos analysed, %d errors (errors.csv)", args.out, totals["analysed"], totals["errors"])
    if distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
