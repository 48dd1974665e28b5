"""Can a download server be reached at all? A cheap probe before a download, so that a machine with no
internet fails in seconds with one line instead of minutes of retries (``huggingface_hub`` retries a
failed connection five times, 23 s per file, and offers no setting to stop it).

The probe is a DNS lookup (``socket.getaddrinfo``) and a TCP connect with a short timeout to the URL's
host and port; nothing is sent. Inside a :func:`remembered` block (one download, or the five checkpoints
of one "Download" click) each host is probed once; outside one, every call probes again. Behind a proxy
(``HTTPS_PROXY`` etc. covering the URL) the origin is not probed: only the proxy knows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from requests.utils import get_environ_proxies

#: Seconds for the TCP connect of one probe (all addresses of a host together).
TIMEOUT_S = 3.0

_local = threading.local()  # .answers: {(host, port): why or None} inside a remembered() block


def host_of(url: str) -> str:
    """The host name of ``url`` ("" when it has none)."""
    return urlsplit(url).hostname or ""


def why_unreachable(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``url``'s server accepts a TCP connection (or a proxy is in the way), else a few words why not:
    "DNS lookup failed", "connection refused", "timed out", or the OS's wording (e.g. "No route to host")."""
    parts = urlsplit(url)
    if not parts.hostname or get_environ_proxies(url):
        return None
    key = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    answers = getattr(_local, "answers", None)
    if answers is not None and key in answers:
        return answers[key]
    answer = _probe(*key, timeout_s)
    if answers is not None:
        answers[key] = answer
    return answer


def unreachable(urls: Iterable[str], timeout_s: float = TIMEOUT_S) -> dict[str, str]:
    """{host: why} for the hosts of ``urls`` that cannot be reached, in the order first met."""
    down: dict[str, str] = {}
    for url in urls:
        why = why_unreachable(url, timeout_s)
        if why is not None:
            down.setdefault(host_of(url), why)
    return down


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """Within the block (this thread), each host is probed once; nested blocks share the outer one's answers."""
    if getattr(_local, "answers", None) is not None:
        yield
        return
    _local.answers = {}
    try:
        yield
    finally:
        _local.answers = None


def _probe(host: str, port: int, timeout_s: float) -> str | None:
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return "DNS lookup failed"
    except OSError as err:
        return err.strerror or type(err).__name__
    deadline = time.monotonic() + timeout_s
    why = "no address"
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
            return None
        except TimeoutError:
            why = "timed out"
        except ConnectionRefusedError:
            why = "connection refused"
        except OSError as err:
            why = err.strerror or type(err).__name__
    return why
