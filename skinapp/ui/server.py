"""Run ``app.py`` as a child process on a free local port (tests, benchmarks, screenshots)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class AppProcess:
    """``python app.py --profile P --data-dir D --port N`` in a child process.

    Use as a context manager; :meth:`kill` sends SIGKILL (no clean shutdown), :meth:`stop` SIGTERM.

    Args:
        data_dir: the review data directory.
        profile: "tiny" (default: fast, no checkpoints), "auto" or "full".
        port: None picks a free port.
        extra_args: more command-line arguments.
        env: extra environment variables.
        startup_timeout: seconds to wait for the server to answer.
    """

    def __init__(self, data_dir: str | Path, profile: str = "tiny", port: int | None = None,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 startup_timeout: float = 180.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(REPO_ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                     "--profile", profile, "--data-dir", str(self.data_dir), *(extra_args or [])]
        self.env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir.parent / f"app-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AppProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/gradio_api/info", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, behind the login
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"app.py did not answer on {self.url} within {self.startup_timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
