"""The checkpoint manifest (data in ``checkpoints/manifest.json``) and where checkpoints live.

Manifest source, first match wins: an override set with :func:`use_manifest` / :func:`set_manifest`
(a path or an already-parsed dict), the ``SKINAPP_MANIFEST`` environment variable (a path), then
``<repo>/checkpoints/manifest.json``. The manifest is re-read on each call (it is small), so overrides
and edits take effect at once.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from skinapp.checkpoints._errors import ManifestError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT / "checkpoints" / "manifest.json"
DEFAULT_CHECKPOINT_DIR = REPO_ROOT / "checkpoints"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ORIGINS = ("official", "trained")
#: Names whose SKINAPP_<NAME> variable already means something else.
_RESERVED = ("checkpoint_dir", "offline", "manifest")
_TRUE = ("1", "true", "yes", "on")

ManifestSource = str | os.PathLike | Mapping[str, Any]
_override: ManifestSource | None = None


@dataclass(frozen=True)
class HubFile:
    """Where a file lives on the Hugging Face Hub (downloaded with ``huggingface_hub.hf_hub_download``).

    Attributes:
        repo_id: "owner/name" of the model repository.
        filename: the file's path in the repository (e.g. "open_clip_model.safetensors").
        revision: a commit hash (pinned) or a branch/tag name such as "main" (not pinned: the SHA-256
            still refuses any other file).
    """

    repo_id: str
    filename: str
    revision: str = "main"

    @property
    def pinned(self) -> bool:
        """True when ``revision`` is a full commit hash."""
        return bool(_COMMIT_RE.match(self.revision))

    def describe(self) -> str:
        revision = self.revision if self.pinned else f"{self.revision} (not pinned)"
        return f"hf://{self.repo_id}/{self.filename} @ {revision}"


@dataclass(frozen=True)
class FileSpec:
    """One file of a checkpoint.

    Attributes:
        filename: bare file name (no directories) under the entry's location.
        url: where to download it; None for checkpoints we train ourselves.
        size: size in bytes, or None when unknown.
        sha256: lower-case hex SHA-256, or None when no verified hash is known (such files
            are never reported as verified).
        mirrors: further URLs tried in order when ``url`` fails.
        hub: where it is on the Hugging Face Hub, or None for files hosted only elsewhere. A Hub file is
            fetched with ``huggingface_hub`` into its cache (``HF_HOME``); ``url``/``mirrors`` are fallbacks.
    """

    filename: str
    url: str | None
    size: int | None
    sha256: str | None
    mirrors: tuple[str, ...] = ()
    hub: HubFile | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return ((self.url,) if self.url else ()) + self.mirrors

    @property
    def downloadable(self) -> bool:
        return self.hub is not None or bool(self.urls)

    @property
    def source(self) -> str:
        """Where it is downloaded from, for people: the Hub file, else the URL."""
        return self.hub.describe() if self.hub else (self.url or "no download source")


@dataclass(frozen=True)
class Entry:
    """One checkpoint the app uses.

    Attributes:
        name: manifest key, e.g. "sam_vit_b"; its environment variable is ``SKINAPP_<NAME>``.
        kind: model family: "sam", "groundingdino", "text_encoder", "open_clip", "timm", ...
        origin: "official" (published weights) or "trained" (produced by ``train/``).
        description / licence: for people.
        files: the file(s); an entry with ``directory`` resolves to that directory.
        directory: sub-directory that multi-file entries land in (e.g. "bert-base-uncased").
        how_to_get: for trained checkpoints, how to produce them.
    """

    name: str
    kind: str
    origin: str
    description: str
    licence: str
    files: tuple[FileSpec, ...]
    directory: str | None = None
    how_to_get: str | None = None

    @property
    def env_var(self) -> str:
        return f"SKINAPP_{self.name.upper()}"

    @property
    def is_directory(self) -> bool:
        return self.directory is not None

    @property
    def downloadable(self) -> bool:
        return all(f.downloadable for f in self.files)

    @property
    def on_hub(self) -> bool:
        """True when every file is a Hugging Face Hub file (the entry can be found in the Hub cache)."""
        return all(f.hub is not None for f in self.files)

    @property
    def size(self) -> int | None:
        """Total bytes, None when a size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)

    @property
    def pinned(self) -> bool:
        """True when every file has a verified SHA-256 in the manifest."""
        return all(f.sha256 for f in self.files)

    def location(self, base: Path) -> Path:
        """Where this entry lives under ``base``: the file, or the directory for multi-file entries."""
        return base / self.directory if self.directory else base / self.files[0].filename


def checkpoint_dir() -> Path:
    """The checkpoint directory: ``SKINAPP_CHECKPOINT_DIR`` or ``<repo>/checkpoints``."""
    env = os.environ.get("SKINAPP_CHECKPOINT_DIR")
    return Path(env).expanduser() if env else DEFAULT_CHECKPOINT_DIR


def offline() -> bool:
    """True when ``SKINAPP_OFFLINE`` forbids every download."""
    return os.environ.get("SKINAPP_OFFLINE", "").strip().lower() in _TRUE


def offline_reason(hub: bool = False) -> str | None:
    """The setting that forbids downloads ("SKINAPP_OFFLINE=1"; with ``hub=True`` also "HF_HUB_OFFLINE=1",
    which forbids the Hugging Face Hub only), or None. Read at each call."""
    if offline():
        return "SKINAPP_OFFLINE=1"
    if hub and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE=1"
    return None


def set_manifest(source: ManifestSource | None) -> None:
    """Use ``source`` (a manifest path or dict) instead of the default; None restores the default."""
    global _override
    _override = copy.deepcopy(source) if isinstance(source, Mapping) else source


@contextlib.contextmanager
def use_manifest(source: ManifestSource) -> Iterator[None]:
    """Context manager form of :func:`set_manifest` (restores the previous override on exit)."""
    global _override
    previous = _override
    set_manifest(source)
    try:
        yield
    finally:
        _override = previous


def manifest(source: ManifestSource | None = None) -> dict[str, Entry]:
    """Every checkpoint entry, keyed by name (see the module docstring for where it is read from)."""
    if source is None:
        source = _override if _override is not None else os.environ.get("SKINAPP_MANIFEST") or DEFAULT_MANIFEST
    if isinstance(source, Mapping):
        data, origin = source, "<dict>"
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ManifestError(f"checkpoint manifest not found: {path}") from err
        except json.JSONDecodeError as err:
            raise ManifestError(f"checkpoint manifest {path} is not valid JSON: {err}") from err
        origin = str(path)
    return _parse(data, origin)


def get_entry(name: str, source: ManifestSource | None = None) -> Entry:
    entries = manifest(source)
    if name not in entries:
        raise ManifestError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name]


def _parse(data: Any, origin: str) -> dict[str, Entry]:
    if not isinstance(data, Mapping) or not isinstance(data.get("checkpoints"), list):
        raise ManifestError(f"{origin}: expected an object with a 'checkpoints' list")
    entries: dict[str, Entry] = {}
    for raw in data["checkpoints"]:
        entry = _parse_entry(raw, origin)
        if entry.name in entries:
            raise ManifestError(f"{origin}: duplicate checkpoint name {entry.name!r}")
        entries[entry.name] = entry
    return entries


def _parse_entry(raw: Any, origin: str) -> Entry:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{origin}: every checkpoint must be an object, got {raw!r}")
    name = raw.get("name")
    where = f"{origin}: checkpoint {name!r}"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ManifestError(f"{where}: name must match {_NAME_RE.pattern}")
    if name in _RESERVED:
        raise ManifestError(f"{where}: name is reserved (SKINAPP_{name.upper()} is a setting)")
    for key in ("kind", "description", "licence"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ManifestError(f"{where}: missing text field {key!r}")
    origin_kind = raw.get("origin", "official")
    if origin_kind not in _ORIGINS:
        raise ManifestError(f"{where}: origin must be one of {_ORIGINS}")
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(f"{where}: 'files' must be a non-empty list")
    specs = tuple(_parse_file(f, where) for f in files)
    if len({s.filename for s in specs}) != len(specs):
        raise ManifestError(f"{where}: duplicate file names")
    directory = raw.get("directory")
    if directory is not None:
        _check_bare_name(directory, f"{where}: directory")
    elif len(specs) > 1:
        raise ManifestError(f"{where}: a multi-file checkpoint needs a 'directory' to land in")
    hubs = [s.hub for s in specs if s.hub is not None]
    # a Hub directory entry is found as one snapshot directory: one repo and revision, the files' own names
    if directory is not None and hubs and (len(hubs) != len(specs) or len({(h.repo_id, h.revision) for h in hubs})
                                           != 1 or any(s.hub.filename != s.filename for s in specs)):
        raise ManifestError(f"{where}: the files of a Hub directory entry must all come from one repo and "
                                "revision, under their own names")
    return Entry(name=name, kind=raw["kind"], origin=origin_kind, description=raw["description"],
                 licence=raw["licence"], files=specs, directory=directory, how_to_get=raw.get("how_to_get"))


def _parse_file(raw: Any, where: str) -> FileSpec:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: every file must be an object")
    filename = raw.get("filename")
    _check_bare_name(filename, f"{where}: filename")
    mirrors = raw.get("mirrors", [])
    if not isinstance(mirrors, list):
        raise ManifestError(f"{where}: {filename}: 'mirrors' must be a list of URLs")
    urls = [raw.get("url"), *mirrors]
    for url in urls:
        if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://"))):
            raise ManifestError(f"{where}: {filename}: URL must be http(s) or null, got {url!r}")
    size, sha = raw.get("size"), raw.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ManifestError(f"{where}: {filename}: size must be a non-negative integer or null")
    if sha is not None and not (isinstance(sha, str) and _SHA256_RE.match(sha)):
        raise ManifestError(f"{where}: {filename}: sha256 must be 64 lower-case hex digits or null")
    return FileSpec(filename=filename, url=raw.get("url"), size=size, sha256=sha, mirrors=tuple(mirrors),
                    hub=_parse_hub(raw.get("hub"), f"{where}: {filename}"))


def _parse_hub(raw: Any, where: str) -> HubFile | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: 'hub' must be an object with repo_id, filename and revision")
    repo_id, filename, revision = raw.get("repo_id"), raw.get("filename"), raw.get("revision", "main")
    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id):
        raise ManifestError(f"{where}: hub repo_id must look like 'owner/name', got {repo_id!r}")
    if not isinstance(filename, str) or not filename or any(p in ("", ".", "..") for p in filename.split("/")):
        raise ManifestError(f"{where}: hub filename must be a path inside the repository, got {filename!r}")
    if not isinstance(revision, str) or not revision:
        raise ManifestError(f"{where}: hub revision must be a commit hash or a branch name")
    return HubFile(repo_id=repo_id, filename=filename, revision=revision)


def _check_bare_name(value: Any, what: str) -> None:
    """Refuse names that could escape the checkpoint directory ("../x", "/etc/x", "a/b")."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        raise ManifestError(f"{what} must be a non-empty name, got {value!r}")
    if "/" in value or "\\" in value or PurePosixPath(value).name != value:
        raise ManifestError(f"{what} must be a bare name without directories, got {value!r}")
