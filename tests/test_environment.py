"""The running environment is the locked one: the adapters were written and tested against these versions."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: the packages whose internals our adapters and loaders depend on (gdino_compat, SAM, open_clip, timm, the UI).
ADAPTED = ("transformers", "groundingdino-py", "open-clip-torch", "segment-anything", "timm", "gradio", "torch")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a pip-compile/uv lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            pins[_normalise(match.group(1))] = match.group(2)
    return pins


def drift(lock: dict[str, str], names, installed=None) -> list[str]:
    """Human-readable differences between ``lock`` and the installed versions of ``names``."""
    installed = installed or (lambda name: metadata.version(name))
    problems = []
    for name in names:
        want = lock.get(_normalise(name))
        if want is None:
            problems.append(f"{name} is not in the lock")
            continue
        try:
            have = installed(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (lock: {want})")
            continue
        if have != want:
            problems.append(f"{name} {have} is installed but the lock says {want}")
    return problems


def test_installed_adapted_packages_match_the_lock():
    allowed = {_normalise(n) for n in os.environ.get("SKINAPP_ALLOW_DRIFT", "").split(",") if n}
    problems = drift(read_lock(ROOT / "requirements-dev.txt"), [n for n in ADAPTED if _normalise(n) not in allowed])
    assert not problems, ("environment drifted from the lock: " + "; ".join(problems)
                          + ". Reinstall with `.venv/bin/pip install -r requirements-dev.txt`, or refresh the lock "
                          "on purpose (`bash .ci/lock`, README).")


def test_drift_is_reported_by_name_and_versions():
    lock = {"transformers": "5.24.0", "gradio": "6.31.0"}
    fake = {"transformers": "5.25.0", "gradio": "6.31.0"}.__getitem__
    assert drift(lock, ["transformers", "gradio"], fake) == [
        "transformers 5.25.0 is installed but the lock says 5.24.0"]
    assert drift(lock, ["timm"], fake) == ["timm is not in the lock"]


@pytest.mark.parametrize("lock_name", ["requirements.txt", "requirements-dev.txt"])
def test_lock_satisfies_the_direct_requirements_with_hashes(lock_name):
    lock_path = ROOT / lock_name
    lock = read_lock(lock_path)
    direct = ["requirements.in"] + (["requirements-dev.in"] if lock_name == "requirements-dev.txt" else [])
    for source in direct:
        for line in (ROOT / source).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-"):
                continue
            requirement = Requirement(line)
            pinned = lock.get(_normalise(requirement.name))
            assert pinned is not None, f"{requirement.name} ({source}) is missing from {lock_name}: run bash .ci/lock"
            assert requirement.specifier.contains(pinned, prereleases=True), \
                f"{lock_name} pins {requirement.name}=={pinned}, outside {source}'s {requirement.specifier}"
    text = lock_path.read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    unhashed = [b.split()[0] for b in blocks if _PIN.match(b) and "--hash=sha256:" not in b]
    assert not unhashed, f"{lock_name}: pins without hashes: {unhashed}"


def test_runtime_and_dev_locks_agree():
    runtime, dev = read_lock(ROOT / "requirements.txt"), read_lock(ROOT / "requirements-dev.txt")
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, f"requirements.txt and requirements-dev.txt pin different versions: {differ}"
