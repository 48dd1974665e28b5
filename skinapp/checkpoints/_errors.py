"""Errors raised by the checkpoint manager."""

from __future__ import annotations

from pathlib import Path


class ManifestError(ValueError):
    """The checkpoint manifest is malformed, or a name is not in it."""


class CheckpointMissing(FileNotFoundError):  # noqa: N818 (public name fixed by the API)
    """A checkpoint could not be found (and was not, or could not be, downloaded).

    The message says what is missing, where it was looked for, and how to get it.

    Attributes:
        name: the manifest name, e.g. "sam_vit_b".
        looked_in: the places searched, in resolution order.
        explicit: when an explicit path (argument or ``SKINAPP_<NAME>``) did not hold it: one line naming the
            path (and the variable) and what to do; None when it was looked for in the usual places.
    """

    def __init__(self, message: str, name: str, looked_in: list[str] | tuple[str, ...] = (),
                 explicit: str | None = None):
        super().__init__(message)
        self.name = name
        self.looked_in = tuple(looked_in)
        self.explicit = explicit

    def __str__(self) -> str:
        return str(self.args[0])


class ChecksumMismatchError(ValueError):
    """A file's SHA-256 (or size) differs from the manifest; the file was not accepted."""

    def __init__(self, path: Path | str, expected: str, actual: str, what: str = "SHA-256", hint: str | None = None):
        super().__init__(f"{what} mismatch for {path}: expected {expected}, got {actual}. "
                         + (hint or "The file was refused (deleted if it was a download); fetch it again."))
        self.path = Path(path)
        self.expected = expected
        self.actual = actual


class DownloadError(OSError):
    """A download failed after its retries; any partial data is kept in a ``.part`` file for resuming."""


class UnreachableError(DownloadError):
    """No source of a file could be reached at all (DNS lookup failed, connection refused, no route, timed out).

    Attributes:
        filename: the file that was not downloaded.
        hosts: {host: why} for each unreachable source, e.g. {"huggingface.co": "DNS lookup failed"}.
        short: "cannot reach HOST[, HOST] (why)", without the file name.
    """

    def __init__(self, filename: str, hosts: dict[str, str]):
        reasons = set(hosts.values())
        if len(reasons) == 1:
            self.short = f"cannot reach {', '.join(hosts)} ({reasons.pop()})"
        else:
            self.short = "cannot reach " + ", ".join(f"{host} ({why})" for host, why in hosts.items())
        super().__init__(f"could not download {filename}: {self.short}")
        self.filename = filename
        self.hosts = dict(hosts)

    def __str__(self) -> str:
        return str(self.args[0])


class UnsafeCheckpointError(ValueError):
    """A checkpoint file could not be loaded safely (it needs code execution, or is not a state dict)."""


class TrainedCheckpointError(ValueError):
    """A trained checkpoint (the fusion classifier, a fine-tuned CLIP) cannot be used as it is: damaged, its
    sidecar edited or missing, saved by an older skinapp, or needing a global encoder the app does not have.

    The message names the file, says what is wrong and what to do.
    """
