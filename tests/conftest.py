"""Shared test fixtures. Nothing here downloads anything: every model is built small and random."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# No test may reach the internet: every name lookup in this process is checked. A lookup of any other host than
# this machine fails the test that made it (libraries phone home quietly: huggingface_hub fetched an
# "agent harnesses" list from huggingface.co inside a test of our fake Hub). Tests that fake DNS patch over this.
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None, socket.gethostname()}
_real_getaddrinfo = socket.getaddrinfo
_lookups: list[str] = []


def _local_only_getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _LOCAL_HOSTS and not str(name).startswith("127."):
        _lookups.append(str(name))
        raise socket.gaierror(socket.EAI_NONAME, f"tests may not look up {name}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _local_only_getaddrinfo


@pytest.fixture(autouse=True, scope="session")
def no_agent_registry_fetch():
    """huggingface_hub fetches an "agent harnesses" list from its default endpoint (not the one a download names)
    on its first request, to tag its user agent; tests run against a fake Hub, so give it its offline answer."""
    from huggingface_hub.utils import _detect_agent

    _detect_agent._registry = {"standardEnvVars": [], "harnesses": {}}
    yield


@pytest.fixture(autouse=True)
def no_internet_lookups():
    """Fail the test that looked up a remote host (the lookup itself was refused, as offline)."""
    _lookups.clear()
    yield
    assert not _lookups, f"this test looked up remote hosts {sorted(set(_lookups))}: tests must not reach the internet"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def skin_photo():
    """A synthetic 384x512 photo: a skin-coloured limb with one dark lesion, on clutter."""
    from skinapp.synthetic import make_skin_photo

    return make_skin_photo(seed=3, lesion_colour="dark_brown")
