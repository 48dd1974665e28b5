"""The reachability probe (skinapp/checkpoints/_reach.py): a DNS lookup and a TCP connect, faked here.

``socket.getaddrinfo`` and ``socket.socket.connect`` are replaced; no test opens a real socket or asks a DNS server.
"""

from __future__ import annotations

import socket

import pytest

from skinapp.checkpoints import _reach

URL = "https://dl.example.invalid/sam.pth"
ADDRESS = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 443))  # TEST-NET-1: never routed


@pytest.fixture
def net(monkeypatch):
    """Fake DNS (``answers[host]``: a list of addresses, or an exception) and connects (``refuse``: the error)."""
    state = {"answers": {}, "lookups": [], "connects": [], "refuse": None}

    def getaddrinfo(host, port, *args, **kwargs):
        state["lookups"].append((host, port))
        answer = state["answers"].get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def connect(sock, address):
        state["connects"].append((address, sock.gettimeout()))
        if state["refuse"] is not None:
            raise state["refuse"]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return state


def test_a_host_that_answers_is_reachable_with_one_short_connect(net):
    net["answers"]["dl.example.invalid"] = [ADDRESS]
    assert _reach.why_unreachable(URL) is None
    assert net["lookups"] == [("dl.example.invalid", 443)]
    assert net["connects"] == [(("192.0.2.7", 443), pytest.approx(_reach.TIMEOUT_S, abs=0.5))]


@pytest.mark.parametrize("error, why", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (TimeoutError("timed out"), "timed out"),
    (OSError(113, "No route to host"), "No route to host")])
def test_a_host_that_does_not_accept_the_connection_says_why_in_a_few_words(net, error, why):
    net["answers"]["dl.example.invalid"] = [ADDRESS]
    net["refuse"] = error
    assert _reach.unreachable([URL, "http://dl.example.invalid:8080/x"]) == {"dl.example.invalid": why}
    assert net["lookups"] == [("dl.example.invalid", 443), ("dl.example.invalid", 8080)]


def test_a_name_that_does_not_resolve_is_not_connected_to(net):
    assert _reach.unreachable([URL]) == {"dl.example.invalid": "DNS lookup failed"}
    assert net["connects"] == []


def test_inside_a_remembered_block_each_host_is_probed_once(net):
    with _reach.remembered():
        assert _reach.why_unreachable(URL) == _reach.why_unreachable(URL) == "DNS lookup failed"
        with _reach.remembered():  # nested: same answers
            assert _reach.why_unreachable(URL) == "DNS lookup failed"
    assert len(net["lookups"]) == 1
    net["answers"]["dl.example.invalid"] = [ADDRESS]  # back online: outside a block the answer is fresh
    assert _reach.why_unreachable(URL) is None and len(net["lookups"]) == 2


def test_behind_a_proxy_the_origin_is_not_probed(net, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.invalid:3128")
    assert _reach.why_unreachable(URL) is None
    assert net["lookups"] == [] and net["connects"] == []
