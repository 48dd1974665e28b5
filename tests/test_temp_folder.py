"""The app's temporary folder is emptied at start-up, so it must be the app's own: a second app on the same folder
(or the same port), a folder of the user's files and a folder overlapping the review data are refused before
anything is deleted, with one log line; bad start-up options are argparse's one-line usage error."""

from __future__ import annotations

import logging
import socket
import time

import pytest
import torch
from PIL import Image

import app
from skinapp.analyze import main as analyze_main
from skinapp.models import DeviceError, pick_device
from skinapp.synthetic import make_skin_photo
from skinapp.ui.privacy import TEMP_MARKER, TempFolderError, TempSweeper


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def running(tmp_path):
    """A temporary folder claimed by a running app, holding an upload it has handed out."""
    root = tmp_path / "skinapp-tmp"
    sweeper = TempSweeper(root, retention=600).claim()
    upload = root / "gradio" / "abc123" / "photo.jpg"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"an upload")
    yield root, sweeper, upload
    sweeper.stop()


def test_a_second_claim_is_refused_and_deletes_nothing(running):
    root, _, upload = running
    before = _tree(root)
    with pytest.raises(TempFolderError, match="Another skinapp process is using the temporary folder"):
        TempSweeper(root, retention=600).claim()
    assert upload.read_bytes() == b"an upload" and _tree(root) == before


def test_a_second_app_on_the_same_folder_stops_with_one_line_and_the_first_keeps_its_files(running, tmp_path, caplog):
    root, _, upload = running
    argv = ["--port", str(_free_port()), "--temp-dir", str(root), "--data-dir", str(tmp_path / "data"),
            "--profile", "tiny", "--no-warmup"]
    with caplog.at_level(logging.ERROR):
        assert app.main(argv) == 2
    assert upload.exists(), "the second start deleted the running app's upload"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith("not starting: Another skinapp process")
    assert errors[0].exc_info is None


def test_a_start_on_a_busy_port_stops_before_touching_its_temporary_folder(tmp_path, caplog):
    root = tmp_path / "tmp"
    (root / "gradio" / "x").mkdir(parents=True)
    (root / TEMP_MARKER).touch()
    (root / "gradio" / "x" / "overlay.webp").write_bytes(b"handed out by the running app")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert app.main(["--port", str(port), "--temp-dir", str(root), "--data-dir", str(tmp_path / "d"),
                             "--profile", "tiny", "--no-warmup"]) == 2
    assert (root / "gradio" / "x" / "overlay.webp").exists()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"not starting: port {port} on 127.0.0.1 is in use (another app?); choose another with --port"]


def test_a_folder_of_the_users_files_is_refused_untouched(tmp_path):
    folder = tmp_path / "my-notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "important.txt").write_text("keep me")
    (folder / "sub" / "notes.md").write_text("and me")
    with pytest.raises(TempFolderError, match="holds files skinapp did not create"):
        TempSweeper(folder, retention=600).claim()
    assert _tree(folder) == {"sub", "important.txt", "sub/notes.md"}


@pytest.mark.parametrize("layout", ["data inside temp", "temp inside data", "same folder"])
def test_a_temporary_folder_overlapping_the_review_data_is_refused(tmp_path, layout):
    base = tmp_path / "base"
    temp, data = {"data inside temp": (base, base / "store"), "temp inside data": (base / "tmp", base),
                  "same folder": (base, base)}[layout]
    data.mkdir(parents=True)
    (data / "reviews.sqlite").write_bytes(b"saved reviews")
    with pytest.raises(TempFolderError, match="overlaps the data directory"):
        TempSweeper(temp, retention=600).claim(protect=[data])
    assert (data / "reviews.sqlite").read_bytes() == b"saved reviews"


def test_what_a_killed_run_left_is_emptied_and_the_folder_is_released_at_stop(tmp_path):
    root = tmp_path / "tmp"
    old = root / "gradio" / "left-by-a-killed-run" / "overlay.webp"  # no lock file: an older version's layout
    old.parent.mkdir(parents=True)
    old.write_bytes(b"derived from a photo")
    (root / "exports").mkdir()
    first = TempSweeper(root, retention=600).claim()
    assert _tree(root) == {TEMP_MARKER}
    first.stop()
    TempSweeper(root, retention=600).claim().stop()  # released: the next start may claim it


def test_the_sweep_keeps_the_lock_file_however_old(running):
    root, sweeper, upload = running
    assert sweeper.sweep(now=time.time() + 10_000) == 1  # the upload; not the lock file
    assert not upload.exists() and (root / TEMP_MARKER).exists()
    with pytest.raises(TempFolderError, match="Another skinapp process"):
        TempSweeper(root, retention=600).claim()


@pytest.mark.parametrize(("argv", "env", "says"), [
    (["--port", "99999"], {}, "a port is 1-65535; got 99999"),
    (["--port", "http"], {}, "not a port number: 'http'"),
    (["--retention", "0"], {}, "must be a positive number of seconds; got 0"),
    ([], {"SKINAPP_RETENTION_S": "abc"}, "not a number of seconds: 'abc'"),
    ([], {"GRADIO_SERVER_PORT": "-1"}, "a port is 1-65535; got -1"),
])
def test_bad_start_options_are_one_usage_line(argv, env, says, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as done:
        app.parse_args(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and says in err and "Traceback" not in err


def test_a_device_the_machine_lacks_is_refused_by_name():
    with pytest.raises(DeviceError, match="Unknown device 'banana'"):
        pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"Device 'cuda' was asked for, but this machine has 0 CUDA device"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_the_batch_command_on_a_missing_device_is_one_line(tmp_path, caplog):
    photo = tmp_path / "p.png"
    Image.fromarray(make_skin_photo(seed=1, size=(64, 64)).pixels).save(photo)
    with caplog.at_level(logging.ERROR):
        assert analyze_main([str(photo), "--out", str(tmp_path / "out"), "--profile", "tiny",
                             "--device", "banana"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["not starting: Unknown device 'banana': use cpu, cuda or cuda:N."]


def test_a_port_a_stopped_app_just_served_counts_as_free():
    """Connections a stopped server closed first wait in TIME_WAIT on its port; uvicorn binds over them
    (SO_REUSEADDR), so the start-up check must not call that port busy (a quick restart would be refused)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert app.port_in_use("127.0.0.1", port)
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
        client.close()
    assert not app.port_in_use("127.0.0.1", port)
