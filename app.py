"""skinapp web app: ``python app.py [--host 127.0.0.1] [--port 7860] [--profile auto|tiny|full] [--download]``.

Binds 127.0.0.1 unless ``--host`` says otherwise. Optional login: set SKINAPP_USER and SKINAPP_PASSWORD.
Uploads and everything derived from them (output images, exports) live in the app's own temporary folder
(``--temp-dir``), emptied at start and shutdown and swept of files older than ``--retention`` seconds.
Reviews go to ``--data-dir`` (or $SKINAPP_DATA_DIR, default ./data/reviews). Without checkpoints the app
starts in demo mode (tiny untrained models, weight-free concepts) and says so on every result.
``--download`` (or SKINAPP_DOWNLOAD=1, or running on Hugging Face Spaces) first fetches every missing official
checkpoint; when that fails the app starts in demo mode and its banner says why.

``demo`` (what ``gradio app.py`` looks for) is built on first access, from environment settings:
SKINAPP_PROFILE, SKINAPP_DATA_DIR, SKINAPP_SAM_VARIANT, SKINAPP_DEVICE. Importing this module loads no model.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from skinapp import model_configs, provisioning  # noqa: E402
from skinapp.cli_types import checked_number  # noqa: E402
from skinapp.models import SETUP_ERRORS  # noqa: E402
from skinapp.pipeline import Analyzer  # noqa: E402
from skinapp.review import DATA_DIR_ENV, ReviewStore, default_data_dir  # noqa: E402
from skinapp.ui import build_demo  # noqa: E402
from skinapp.ui.blocks import CSS  # noqa: E402
from skinapp.ui.privacy import ExportGuard, TempFolderError, TempSweeper  # noqa: E402

log = logging.getLogger("skinapp.app")

#: Queue bounds: events waiting at most, and model events running at once.
QUEUE_MAX_SIZE = 32
MODEL_CONCURRENCY = 1
#: Seconds an upload or anything derived from it (overlays, plots, exports) is kept on disk.
DEFAULT_RETENTION_S = 600


#: argparse types: a TCP port, 1-65535; a positive, finite number of seconds.
_port = checked_number(int, lambda p: 1 <= p <= 65535, "not a port number: {text!r}", "a port is 1-65535; got {value}")
_seconds = checked_number(float, lambda s: 0 < s < math.inf, "not a number of seconds: {text!r}",
                          "must be a positive number of seconds; got {text}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (defaults from the environment variables the module docstring names); a bad value,
    from the command line or the environment, is argparse's one-line usage error (exit status 2)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to serve the network)")
    p.add_argument("--port", type=_port, default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    p.add_argument("--profile", choices=["auto", "tiny", "full"], default=os.environ.get("SKINAPP_PROFILE", "auto"))
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV) or str(default_data_dir()),
                   help="where saved reviews (SQLite, photos, masks) are kept")
    p.add_argument("--sam-variant", default=os.environ.get("SKINAPP_SAM_VARIANT", "vit_b"),
                   choices=["vit_b", "vit_l", "vit_h"])
    p.add_argument("--device", default=os.environ.get("SKINAPP_DEVICE") or None, help="cuda / cpu (default: auto)")
    p.add_argument("--download", action="store_true",
                   help="download every missing official checkpoint before loading (also SKINAPP_DOWNLOAD=1; "
                        "automatic on Hugging Face Spaces)")
    p.add_argument("--concurrency", type=int, default=MODEL_CONCURRENCY, help="model events running at once")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up pass at start-up")
    p.add_argument("--retention", type=_seconds,
                   default=os.environ.get("SKINAPP_RETENTION_S", str(DEFAULT_RETENTION_S)),
                   help="seconds uploads and their derivatives are kept (default %(default)s)")
    p.add_argument("--temp-dir", default=os.environ.get("SKINAPP_TEMP_DIR") or None,
                   help="the app's own temporary folder (default: <system temp>/skinapp-<port>); emptied at start")
    return p.parse_args(argv)


def gpu_decorator():
    """``spaces.GPU`` on Hugging Face Spaces (ZeroGPU), else None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces.GPU


def login() -> tuple[str, str] | None:
    """(user, password) from SKINAPP_USER / SKINAPP_PASSWORD, or None when neither is set."""
    user, password = os.environ.get("SKINAPP_USER"), os.environ.get("SKINAPP_PASSWORD")
    if bool(user) != bool(password):
        raise SystemExit("Set both SKINAPP_USER and SKINAPP_PASSWORD for login, or neither.")
    return (user, password) if user else None


def quiet_request_logs() -> None:
    """Uploads and their URLs are never logged: silence per-request access and HTTP-client logs."""
    for name in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").disabled = True


def temp_root(args: argparse.Namespace) -> Path:
    return Path(args.temp_dir or Path(tempfile.gettempdir()) / f"skinapp-{args.port}").resolve()


def build_app(args: argparse.Namespace) -> tuple[gr.Blocks, ReviewStore, dict[str, str | None], TempSweeper]:
    """The Blocks, the review store, the export-owner registry and the sweeper of our temporary folder.

    The folder is emptied first (what a killed run left behind), then Gradio is pointed at it.
    """
    root = temp_root(args)
    sweeper = TempSweeper(root, args.retention).claim(protect=[args.data_dir])
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # read by every component and the upload route
    model_configs.apply_from_env()
    failed = None
    if args.profile != "tiny" and provisioning.download_requested(args.download):
        failed = provisioning.provision(args.sam_variant)
    analyzer = Analyzer.create(profile=args.profile, device=args.device, sam_variant=args.sam_variant,
                               warmup=not args.no_warmup)
    if failed:  # the start banner says why the app is in demo mode
        analyzer.models.reasons.setdefault("download", []).append(f"Downloading the real models failed: {failed}")
    store = ReviewStore(args.data_dir)
    owners: dict[str, str | None] = {}
    retention = max(1, int(args.retention))
    demo = build_demo(analyzer, store, gpu=gpu_decorator(), model_concurrency=args.concurrency,
                      delete_cache=(max(1, retention // 4), retention), export_dir=root / "exports",
                      export_owners=owners, sam_variant=args.sam_variant)
    demo.queue(max_size=QUEUE_MAX_SIZE)
    sweeper.keep_current()  # example photos Gradio copied in: the app's own, not derived from uploads
    log.info("Saved reviews are kept in %s; temporary files live in %s for %d s", Path(args.data_dir).resolve(), root,
             retention)
    return demo, store, owners, sweeper


def exit_on_sigterm(signum: int, frame) -> None:
    """Exit through the atexit clean-up; a second SIGTERM (e.g. from a supervisor and `timeout` both) is ignored,
    so it cannot interrupt the clean-up half way and leave uploads behind."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(0)


def launch(demo: gr.Blocks, store: ReviewStore, args: argparse.Namespace,
           owners: dict[str, str | None] | None = None, sweeper: TempSweeper | None = None) -> None:
    from starlette.middleware import Middleware

    quiet_request_logs()
    auth = login()
    sweeper = (sweeper or TempSweeper(temp_root(args), args.retention)).start()
    atexit.register(sweeper.stop)  # shutdown: empty the folder again
    signal.signal(signal.SIGTERM, exit_on_sigterm)  # SIGTERM runs the atexit clean-up too
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                auth_message="skinapp: clinic login" if auth else None, max_file_size="60mb",
                show_error=False, ssr_mode=False, css=CSS, footer_links=["api"],
                app_kwargs={"middleware": [Middleware(ExportGuard, registry=owners if owners is not None else {})]})


def port_in_use(host: str, port: int) -> bool:
    """Whether another process already listens on ``host``:``port`` (a bind test, as the server will do)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as uvicorn does: connections of a stopped app in TIME_WAIT do not count, a listening socket does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def configure_logging() -> None:
    """One log format for the app; huggingface_hub's lines (e.g. its download retries) printed once, not twice.

    huggingface_hub gives its logger a handler of its own at import and lets records propagate too, so with
    a root handler each of its lines appears raw and again formatted; its own handler is removed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub_log = logging.getLogger("huggingface_hub")
    for handler in list(hub_log.handlers):
        if type(handler) is logging.StreamHandler:
            hub_log.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parse_args(argv)
    if port_in_use(args.host, args.port):  # before the temporary folder or any model is touched
        log.error("not starting: port %d on %s is in use (another app?); choose another with --port", args.port,
                  args.host)
        return 2
    try:
        app, store, owners, sweeper = build_app(args)
    except (*SETUP_ERRORS, TempFolderError) as exc:
        # a missing (--profile full), damaged or tampered checkpoint, a bad SKINAPP_MODEL_CONFIGS, a device this
        # machine lacks, a temporary folder another app holds or that is not ours: said in one line
        log.error("not starting: %s", exc)
        return 2
    launch(app, store, args, owners, sweeper)
    return 0


_DEMO: gr.Blocks | None = None


def __getattr__(name: str) -> gr.Blocks:
    """``app.demo``, built on first access from environment settings (``gradio app.py`` looks for it).

    Lazy on purpose: importing this module (tests, tools) loads no model; ``python app.py`` (what
    Hugging Face Spaces runs) goes through :func:`main`.
    """
    global _DEMO
    if name != "demo":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _DEMO is None:
        _DEMO, _, _, _ = build_app(parse_args([]))
    return _DEMO


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
