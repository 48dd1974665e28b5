"""Where a model's weights came from, so that no output from untrained weights passes for a diagnosis."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The banner every output produced with untrained weights must carry.
UNTRAINED_WARNING = "UNTRAINED WEIGHTS \u2014 NOT A DIAGNOSIS"


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of one model's weights.

    Attributes:
        name: model name, e.g. "sam_vit_b" or "fusion".
        trained: True only when loaded from a real (official or our trained) checkpoint.
        source: a path, a manifest name, or a phrase such as "random init (tiny profile)".
    """

    name: str
    trained: bool
    source: str

    def describe(self) -> str:
        state = "trained" if self.trained else "untrained"
        return f"{self.name}: {state} ({self.source})"


def untrained(name: str, why: str = "random init (tiny profile)") -> WeightsInfo:
    return WeightsInfo(name=name, trained=False, source=why)


def all_trained(infos: list[WeightsInfo] | tuple[WeightsInfo, ...]) -> bool:
    return all(i.trained for i in infos)


def banner_text(weights: Iterable[WeightsInfo], reasons: Sequence[str] = ()) -> str:
    """"" when every model is trained; else the warning, the untrained models, and why."""
    weights = tuple(weights)
    bad = [w for w in weights if not w.trained]
    if not bad:
        return ""
    lines = [UNTRAINED_WARNING, "Untrained: " + ", ".join(w.describe() for w in bad) + "."]
    lines += list(reasons)
    return "\n".join(lines)
