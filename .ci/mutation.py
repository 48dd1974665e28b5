"""Mutation testing with mutmut, one module group at a time, outside the default CI run.

Usage (from the repository root)::

    .venv/bin/python .ci/mutation.py pooling metrics checkpoints     # groups from pyproject.toml
    .venv/bin/python .ci/mutation.py --list
    .venv/bin/python .ci/mutation.py pipeline --workdir /scratch/mut --max-children 4
    .venv/bin/python .ci/mutation.py handlers --sample 60 --seed 1     # a seeded random sample of mutants
    .venv/bin/python .ci/mutation.py handlers --again                  # re-run what the last run left

The groups (files to mutate, tests that may kill them, and optionally ``deselect``: node ids of slow
tests left out of the mutant runs) are data in ``[tool.skinapp.mutation]`` of pyproject.toml. For each
group the tracked files are copied to ``<workdir>/<group>`` (the repository
never gets a ``mutants/`` directory), the copy's ``[tool.mutmut]`` is narrowed to that group, and
``mutmut run`` works there. The score is killed / (all mutants), where timeouts count as killed
(mutmut's convention: the mutant made the tests hang) and "no tests" / "survived" / "suspicious" as
not killed. A summary (counts, score, surviving mutant names) is printed and written to
``<workdir>/<group>/summary.json``; ``mutmut show NAME`` in that directory shows a mutant's diff.

Mutation sampling (``--sample N --seed S``): the group's mutants are generated (mutmut's generation step
only, no tests run), N of their names are drawn uniformly at random without replacement with
``random.Random(S)``, and only those are run (``mutmut run NAME...``). The sampled score k/N estimates the
score over all mutants; its 95 % Wilson score interval (Wilson 1927) is reported with the total mutant
count. Random mutant sampling ("x % selection"): Wong & Mathur 1995 (J. Systems and Software 31(3)).
``--again`` reuses ``<workdir>/<group>`` after the tests were strengthened: the current tests are copied in
and only the mutants not killed last time run again (the whole sample when the group's test list changed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
KILLED = ("killed", "timeout", "caught by type check", "segfault")
log = logging.getLogger("mutation")


def groups() -> dict[str, dict]:
    """The groups, each with ``paths``, ``tests`` and ``deselect`` (a group naming a ``test_set`` takes its
    tests and deselect from ``[tool.skinapp.mutation.test_sets.<name>]``)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["skinapp"]["mutation"]
    sets = data.get("test_sets", {})
    resolved = {}
    for name, group in data["groups"].items():
        group = dict(group)
        if "test_set" in group:
            shared = sets[group.pop("test_set")]
            group.setdefault("tests", shared["tests"])
            group.setdefault("deselect", shared.get("deselect", []))
        resolved[name] = group
    return resolved


def _copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the working tree, plus a link to its .venv."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    if dest.exists():
        shutil.rmtree(dest)
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def _narrow_config(dest: Path, group: dict) -> None:
    """Rewrite the copy's [tool.mutmut] so that only ``group`` is mutated and only its tests run."""
    text = (dest / "pyproject.toml").read_text()
    start = text.index("[tool.mutmut]")
    end = text.find("\n[", start + 1)
    base = tomllib.loads(text)["tool"]["mutmut"]
    base.update(only_mutate=group["paths"], pytest_add_cli_args_test_selection=group["tests"])
    # tests that exercise the group but are too slow to run for every mutant (named in the group as data)
    base["pytest_add_cli_args"] = [*base.get("pytest_add_cli_args", []),
                                   *(arg for test in group.get("deselect", []) for arg in ("--deselect", test))]
    lines = ["[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in base.items()]
    (dest / "pyproject.toml").write_text(text[:start] + "\n".join(lines) + "\n" + (text[end:] if end > 0 else ""))


def sample_names(names: list[str], size: int, seed: int) -> list[str]:
    """``size`` names drawn uniformly without replacement, reproducible from ``seed`` (sorted first, so the draw
    does not depend on the order mutmut lists them); all of them, sorted, when ``size >= len(names)``."""
    if size < 1:
        raise ValueError(f"sample size must be at least 1, got {size}")
    ordered = sorted(set(names))
    if size >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, size))


def wilson_interval(killed: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927, JASA 22(158)) for a binomial proportion ``killed / n``; scipy's
    ``binomtest(...).proportion_ci(method="wilson")``. Unlike the normal approximation it stays inside [0, 1]
    and is not empty when ``killed`` is 0 or ``n``."""
    from scipy.stats import binomtest

    if not 0 <= killed <= n or n < 1:
        raise ValueError(f"need 0 <= killed <= n and n >= 1, got killed={killed}, n={n}")
    ci = binomtest(killed, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _statuses(listing: str) -> dict[str, str]:
    """``mutmut results --all true`` output as {mutant name: status}."""
    return dict(re.findall(r"^\s+(\S+): (.+)$", listing, flags=re.MULTILINE))


# mutmut's own generation step (the first block of `mutmut run`): writes mutants/ and the .meta files listing
# every mutant as "not checked", without running a test
_GENERATE = """
from mutmut.__main__ import create_mutants
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants({children})
"""


def _generate(dest: Path, mutmut: str, env: dict, max_children: int) -> list[str]:
    subprocess.run([sys.executable, "-c", _GENERATE.format(children=max_children)], cwd=dest, env=env,
                   check=True, capture_output=True, text=True)
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=dest, env=env, capture_output=True,
                             text=True, check=True).stdout
    return sorted(_statuses(listing))


def _run_mutmut(dest: Path, mutmut: str, env: dict, max_children: int, names: list[str]) -> None:
    with open(dest / "run.log", "a") as out:  # written as it runs: `tail -f <workdir>/<group>/run.log`
        run = subprocess.run([mutmut, "run", "--max-children", str(max_children), *names], cwd=dest, env=env,
                             stdout=out, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0:
        tail = (dest / "run.log").read_text().replace("\r", "\n").strip().splitlines()[-15:]
        raise RuntimeError(f"mutmut failed in {dest} (exit {run.returncode}; add debug = true to its "
                           "[tool.mutmut] to see the tests' output):\n" + "\n".join(tail))


def run_group(name: str, group: dict, workdir: Path, max_children: int, sample: int | None = None,
              seed: int = 0, again: bool = False) -> dict:
    """Mutate ``group`` in ``<workdir>/<name>`` and summarise. ``again``: reuse that copy (its mutants and
    results), refresh its tests from the working tree, and re-run only the mutants not killed last time (all of
    the sample, or the group, when the group's test list changed: mutmut then resets every verdict)."""
    dest = workdir / name
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    sample_file = dest / "sample.txt"
    if again:
        previous = json.loads((dest / "summary.json").read_text())
        for test in (ROOT / "tests").rglob("*.py"):  # the strengthened tests, in the copy and in mutmut's copy
            for target in (dest, dest / "mutants"):
                (target / test.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(test, target / test.relative_to(ROOT))
        shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
        _narrow_config(dest, group)
        chosen = sample_file.read_text().split() if sample_file.exists() else []
        total, seed = previous.get("total_mutants"), previous.get("seed", seed)
        changed = (previous.get("tests"), previous.get("deselect", [])) != (group["tests"], group.get("deselect", []))
        if not changed:
            names = previous["not_killed"]
            log.info("%s: re-running the %d mutants not killed last time", name, len(names))
        else:  # the group's tests changed: mutmut resets every verdict, so the whole sample (or group) runs again
            names = chosen
            log.info("%s: the group's tests changed: re-running %s", name,
                     f"all {len(chosen)} sampled mutants" if chosen else "every mutant")
        if names or changed:  # changed and no sample: names == [] runs every mutant
            _run_mutmut(dest, mutmut, env, max_children, names)
    else:
        _copy_tree(dest)
        _narrow_config(dest, group)
        (dest / "mutants" / "checkpoints").mkdir(parents=True)  # mutmut copies also_copy files, not their folders
        chosen, total = [], None
        if sample is not None:
            every = _generate(dest, mutmut, env, max_children)
            total = len(every)
            chosen = sample_names(every, sample, seed)
            sample_file.write_text("\n".join(chosen) + "\n")
            log.info("%s: %d mutants, running a sample of %d (seed %d)", name, total, len(chosen), seed)
        _run_mutmut(dest, mutmut, env, max_children, chosen)
    listing = subprocess.run([mutmut, "results", "--all", "true"], cwd=dest, env=env, capture_output=True,
                             text=True, check=True).stdout
    statuses = _statuses(listing)
    if chosen:
        statuses = {k: statuses[k] for k in chosen}
    summary = summarise(statuses, sampled=bool(chosen))
    summary.update(group=name, paths=group["paths"], tests=group["tests"], deselect=group.get("deselect", []),
                   seconds=round(time.perf_counter() - t0, 1), again=again)
    if chosen:
        summary.update(total_mutants=total, sample_size=len(statuses), seed=seed)
    (dest / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarise(statuses: dict[str, str], sampled: bool = False) -> dict:
    """Counts, killed, score (timeouts count as killed) and the mutants not killed, from {mutant: status};
    for a sample also the 95 % Wilson interval of the score."""
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    killed = sum(counts.get(s, 0) for s in KILLED)
    summary = {"mutants": len(statuses), "killed": killed,
               "score": round(killed / len(statuses), 4) if statuses else None, "counts": counts,
               "not_killed": sorted(k for k, s in statuses.items() if s not in KILLED)}
    if sampled and statuses:
        low, high = wilson_interval(killed, len(statuses))
        summary.update(interval_95=[round(low, 6), round(high, 6)], interval_method="Wilson score")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("groups", nargs="*", help="group names from [tool.skinapp.mutation.groups]")
    p.add_argument("--list", action="store_true", help="list the groups and exit")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "skinapp-mutation")
    p.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--sample", type=int, metavar="N",
                   help="run a seeded uniform random sample of N mutants per group (score with a 95 %% interval)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--again", action="store_true",
                   help="reuse <workdir>/<group>: copy the current tests in and re-run only the mutants not killed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    known = groups()
    if args.list or not args.groups:
        for name, group in known.items():
            log.info("%-12s %s  <- %s", name, ", ".join(group["paths"]), ", ".join(group["tests"]))
        return 0
    unknown = [g for g in args.groups if g not in known]
    if unknown:
        log.error("unknown group(s) %s; known: %s", unknown, ", ".join(known))
        return 2
    unfinished = [g for g in args.groups if args.again and not (args.workdir / g / "summary.json").exists()]
    if unfinished:
        log.error("--again needs a finished run of %s in %s (no summary.json there): run it without --again",
                  ", ".join(unfinished), args.workdir)
        return 2
    rows = []
    for name in args.groups:
        log.info("mutating %s ...", name)
        summary = run_group(name, known[name], args.workdir, args.max_children, args.sample, args.seed,
                            args.again)
        rows.append(summary)
        log.info("%s: %d/%d killed (%.1f %%), %s, %.0f s", name, summary["killed"], summary["mutants"],
                 100 * (summary["score"] or 0), summary["counts"], summary["seconds"])
        if "sample_size" in summary:
            log.info("%s: sample of %d of %d mutants (seed %d); 95 %% Wilson interval %.1f-%.1f %%", name,
                     summary["sample_size"], summary["total_mutants"], summary["seed"],
                     *(100 * x for x in summary["interval_95"]))
        for mutant in summary["not_killed"]:
            log.info("    not killed: %s", mutant)
    log.info("\n| group | files | mutants | killed | score |\n|---|---|---|---|---|")
    for r in rows:
        extra = (f" (sample of {r['total_mutants']}, seed {r['seed']}; 95 % CI "
                 f"{100 * r['interval_95'][0]:.1f}-{100 * r['interval_95'][1]:.1f} %)" if "sample_size" in r else "")
        log.info("| %s | %s | %d | %d | %.1f %%%s |", r["group"], ", ".join(r["paths"]), r["mutants"], r["killed"],
                 100 * (r["score"] or 0), extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
