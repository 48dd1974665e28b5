"""Train and evaluate the fusion classifier (and its ablations / image baselines) with the paper's protocol.

    python -m train.fusion --data scin:/data/scin --variant cross_attention --train-ratio 0.5 --seeds 0,1,2,3,4
    torchrun --nproc_per_node 4 -m train.fusion --data manifest:/data/ntd.csv --profile full ...

``--data`` is ``scin:ROOT`` (official SCIN layout), ``manifest:CSV`` (``image_path,case_id,label``)
or ``folder:ROOT`` (``ROOT/<label>/<image>``). ``--variant`` and ``--train-ratio`` take comma lists;
one table row per (ratio, variant), mean +- std over ``--seeds``. Concepts (and, in the fast mode, ViT
tokens) are computed once per image into ``--cache`` (resumable).

``--protocol`` picks a preset (:data:`PROTOCOLS`, documented in docs/protocols.md); single options override it:

* ``paper`` (default): the paper's settings. ``--mode end_to_end`` (the ViT is fine-tuned with the fusion
  head on image batches, "we train all model parts simultaneously"; bf16 autocast on CUDA), a plain
  train/test split with exactly ``r`` of the cases training, a fixed number of epochs and the LAST epoch's
  weights (``--selection last``), padded concepts competing in top-k pooling (``--pool-padded all``) and
  ImageNet-pretrained baselines.
* ``fast``: cached ViT tokens (frozen ViT, ``--mode cached``: epochs take seconds); a validation part carved
  from the HELD-OUT cases (``--val-fraction`` of them; never the reported test cases) chooses the epoch by
  accuracy (``--selection val_accuracy``); real concepts first in pooling (``--pool-padded real_first``).

Every table row says how it was produced: ``training_mode``, ``init`` (pretrained / from scratch) and
``selection``. F1 is reported twice, each named: ``f1_paper`` (2PR/(P+R) of macro P and R, the paper's)
and ``f1_macro_per_class``.

Per run, ``OUT/<variant>_r<ratio>_s<seed>/`` gets the kept checkpoint (``fusion.safetensors`` + ``fusion.json``;
end-to-end runs also ``global_encoder.safetensors``, the fine-tuned ViT), ``confusion.png`` and
``curves.png``; ``OUT`` gets ``metrics_per_seed.csv``, ``metrics.csv`` and ``metrics.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from skinapp.cli_types import comma_list, fraction_or_zero, open_fraction, positive_float, positive_int, seed_int
from skinapp.concepts.types import DEFAULT_PROMPTS
from skinapp.fusion import BASELINES, FUSION_VARIANTS

#: Presets of ``--protocol`` (configs as data); see docs/protocols.md for the paper's wording of each.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"mode": "end_to_end", "selection": "last", "val_fraction": 0.0, "pool_padded": "all"},
    "fast": {"mode": "cached", "selection": "val_accuracy", "val_fraction": 0.2, "pool_padded": "real_first"},
}
MODES = ("cached", "end_to_end")
#: Epoch selection: the last epoch (no validation), or the best validation accuracy / paper-F1 epoch.
SELECTIONS = ("last", "val_accuracy", "val_f1_paper")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m train.fusion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="scin:ROOT | manifest:CSV | folder:ROOT")
    p.add_argument("--variant", type=comma_list(_variant, "variant"), default="cross_attention",
                   help=f"comma list of {sorted(FUSION_VARIANTS)} and/or baselines {list(BASELINES)}")
    p.add_argument("--train-ratio", type=comma_list(open_fraction, "train ratio"), default="0.5",
                   help="comma list of train/total case ratios, each strictly between 0 and 1")
    p.add_argument("--seeds", type=comma_list(seed_int, "seed"), default="0,1,2,3,4",
                   help="comma list of whole numbers >= 0")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper",
                   help="preset of mode/selection/val-fraction/pool-padded (docs/protocols.md); options override")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="end_to_end: fine-tune the ViT with the head (paper); cached: frozen ViT, cached tokens")
    p.add_argument("--selection", choices=SELECTIONS, default=None,
                   help="last: weights of the last epoch (paper); val_*: best epoch on the validation cases")
    p.add_argument("--val-fraction", type=fraction_or_zero, default=None,
                   help="share of the HELD-OUT cases used for validation (never trained on, never tested on)")
    p.add_argument("--pool-padded", choices=("real_first", "all"), default=None,
                   help="top-k pooling: padded copies compete (all, paper) or only fill (real_first)")
    p.add_argument("--baseline-checkpoint", action="append", default=[], metavar="NAME=PATH",
                   help="ImageNet weights of a baseline, e.g. resnet50=checkpoints/resnet50.a1_in1k.safetensors "
                        "(default in --profile full: the manifest entries resnet50_a1_in1k / vit_b16_augreg2 "
                        "when present; without weights the run is labelled 'from scratch')")
    p.add_argument("--profile", choices=("tiny", "full"), default="full")
    p.add_argument("--config", default=None, help="fusion config name (default: scin for SCIN, ntd otherwise; "
                                                   "tiny for the tiny profile)")
    p.add_argument("--n-concepts", type=positive_int, default=None)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=1e-4)
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
    args = p.parse_args(argv)
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _variant(text: str) -> str:
    """argparse type: a fusion variant or an image baseline."""
    if text not in FUSION_VARIANTS and text not in BASELINES:
        raise argparse.ArgumentTypeError(f"unknown {text!r}; choose from {sorted(FUSION_VARIANTS)} or "
                                         f"{list(BASELINES)}")
    return text
