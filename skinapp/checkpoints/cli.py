"""Command line: ``python -m skinapp.checkpoints list | download NAME [--dir D] | verify [NAME]``.

Exit codes: 0 success; 1 a file is missing, has the wrong SHA-256, or a download failed; 2 usage error
(unknown name, bad manifest); 3 (verify) files present but some have no pinned SHA-256 to check against.
``verify`` checks our trained checkpoints (no pins in the manifest) against the SHA-256 their JSON sidecars record,
and an end-to-end fusion classifier's fine-tuned ViT file too; a missing sidecar counts as a missing file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from skinapp.checkpoints._errors import CheckpointMissing, ChecksumMismatchError, DownloadError, ManifestError
from skinapp.checkpoints._hashing import FileState, sha256_file
from skinapp.checkpoints._manifest import checkpoint_dir, manifest, offline, use_manifest
from skinapp.checkpoints._resolve import EntryStatus, download, status
from skinapp.checkpoints._sidecar import SidecarCheck, sidecar_checks

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNVERIFIED = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.manifest:
            with use_manifest(args.manifest):
                return args.func(args)
        return args.func(args)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m skinapp.checkpoints",
                                     description="List, download and verify the checkpoints skinapp uses.")
    parser.add_argument("--manifest", help="manifest JSON to use instead of checkpoints/manifest.json")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    p_list = sub.add_parser("list", help="show every checkpoint: present/missing and verification state")
    p_list.set_defaults(func=_cmd_list)
    p_dl = sub.add_parser("download", help="download one checkpoint (resumable, SHA-256 checked)")
    p_dl.add_argument("name")
    p_dl.add_argument("--dir", help="destination directory (default: the checkpoint directory)")
    p_dl.add_argument("--retries", type=int, default=3, help="retries per URL after a dropped connection")
    p_dl.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_dl.set_defaults(func=_cmd_download)
    p_verify = sub.add_parser("verify", help="recompute SHA-256 of present files and report mismatches")
    p_verify.add_argument("name", nargs="?", help="one checkpoint (default: all)")
    p_verify.add_argument("--skip-missing", action="store_true", help="do not fail on checkpoints that are absent")
    p_verify.set_defaults(func=_cmd_verify)
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"checkpoint dir: {checkpoint_dir()}{'  (offline: SKINAPP_OFFLINE=1)' if offline() else ''}")
    for name in manifest():
        st = status(name)
        size = sum(f.spec.size or 0 for f in st.files)
        size_text = f"{size / 2**20:8.1f} MiB" if size else "       ? MiB"
        print(f"{name:24s} {st.entry.origin:8s} {size_text}  {_summary(st):45s} {st.location}")
    return EXIT_OK


def _cmd_download(args: argparse.Namespace) -> int:
    try:
        location = download(args.name, dest_dir=args.dir, retries=args.retries, progress=not args.no_progress)
    except (CheckpointMissing, ChecksumMismatchError, DownloadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    st = status(args.name, path=location)
    for f in st.files:
        verdict = "verified" if f.state is FileState.VERIFIED else "UNVERIFIED (no pinned SHA-256)"
        # an unpinned file's digest is what a user compares with the publisher's to pin it
        digest = f.sha256 or (sha256_file(f.path) if f.path.is_file() else "?")
        print(f"{digest:64s}  {f.path}  {verdict}")
    return EXIT_OK if st.verified else EXIT_UNVERIFIED


def _cmd_verify(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(manifest())
    missing = mismatched = unverified = False
    for name in names:
        st = status(name, recompute=True)
        if not st.present and args.skip_missing:
            print(f"{name}: skipped (missing)")
            continue
        checks = sidecar_checks(st)  # our trained checkpoints: against the SHA-256 their sidecars record
        if checks is None:
            checks = [SidecarCheck(f.path, f.state, f.sha256, f.state.value) for f in st.files]
        for c in checks:
            print(f"{name}: {c.path}: {c.text}" + (f" (sha256 {c.sha256})" if c.sha256 else ""))
        states = {c.state for c in checks}
        missing |= FileState.MISSING in states
        mismatched |= FileState.MISMATCH in states
        unverified |= FileState.UNPINNED in states
    if missing or mismatched:
        return EXIT_FAILED
    return EXIT_UNVERIFIED if unverified else EXIT_OK


def _summary(st: EntryStatus) -> str:
    states = [f.state for f in st.files]
    if FileState.MISSING in states:
        n_missing = states.count(FileState.MISSING)
        return "missing" if n_missing == len(states) else f"incomplete ({n_missing}/{len(states)} files missing)"
    if FileState.MISMATCH in states:
        return "SHA-256 MISMATCH"
    if all(s is FileState.VERIFIED for s in states):
        return "present, verified"
    if FileState.UNPINNED in states:
        return "present, UNVERIFIED (no pinned SHA-256)"
    return "present, not checked (run verify)"
