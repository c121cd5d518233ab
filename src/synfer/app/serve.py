"""``synfer app``: the face studio in the browser, served locally by Gradio (``pip install 'synfer[app]'``).

Offline and private by default: it binds to 127.0.0.1, sends no analytics, loads no fonts or scripts from the
web, and keeps Gradio's upload cache inside the output folder, the only folder it writes to.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..models.classifiers import DEFAULT_CLASSIFIER
from .studio import DEFAULT_JUDGE

#: Largest upload the page accepts.
MAX_UPLOAD = "20mb"


def app(
    pipeline: str = "bundled",
    host: str = "127.0.0.1",
    port: int = 7860,
    out: Path = Path("synfer-app"),
    judge: str = DEFAULT_JUDGE,
    guide: str = DEFAULT_CLASSIFIER,
    au_model: str | None = None,
    face_model: Path | None = None,
    device: str = "auto",
    block: bool = True,
) -> None:
    """Start the face studio: AU sliders, presets, measured AUs and expressions, photo edits, dataset making.

    Args:
        pipeline: SynferPipeline folder or bundled name (``bundled``: the mini FER+ generator); the AU sliders
            follow its AU set.
        host: address to bind (127.0.0.1: this machine only; 0.0.0.0 serves the network, without a password).
        port: port to serve on.
        out: the folder the app writes to (datasets, exports, Gradio's upload cache); created if missing.
        judge: classifier whose expression probabilities are shown (folder or bundled name); not the guide.
        guide: classifier used for semantic guidance.
        au_model: distilled AU estimator that reads AUs back (default: the bundled one).
        face_model: MediaPipe's ``face_landmarker.task``: find and align the face in uploaded photos and paste
            edits back (without it, uploads are taken as face crops).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:1`` ...
        block: serve until interrupted (False returns once the server runs: tests and notebooks).
    """
    out = Path(out).resolve()
    if face_model is not None and not Path(face_model).is_file():
        raise FileNotFoundError(f"face_model {face_model}: no such file (MediaPipe's face_landmarker.task).")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be 1..65535; got {port}.")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(out / ".gradio")  # uploads and shown images stay in the output folder
    os.environ["MPLCONFIGDIR"] = str(out / ".gradio" / "matplotlib")  # gradio imports matplotlib: its font cache too
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("synfer app needs gradio: pip install 'synfer[app]'.") from e
    from .studio import Studio
    from .ui import build

    studio = Studio(pipeline, out, judge=judge, guide=guide, au_model=au_model, face_model=face_model, device=device)
    page = build(studio)
    system = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: nothing is fetched from the internet
    theme = gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])
    page.queue(default_concurrency_limit=1)  # one model, one job at a time; others wait in line
    page.launch(server_name=host, server_port=int(port), share=False, inbrowser=False, quiet=True,
                show_error=True, ssr_mode=False, max_file_size=MAX_UPLOAD, allowed_paths=[str(out)],
                prevent_thread_lock=True, theme=theme)
    print(f"synfer app on http://{host}:{port} (writes to {out})", flush=True)
    if block:
        try:
            page.block_thread()
        finally:
            studio.close()


def serve_in_background(out: Path, *args: str, env: dict[str, str] | None = None,
                        timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``synfer app --out OUT ARGS`` in a child process on a free local port, returned once the page answers:
    ``(process, url)`` (for benchmarks, screenshots and tests; terminate the process when done). The server's
    output goes to ``OUT/.gradio/server.log``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(out) / ".gradio" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "synfer", "app", "--port", str(port), "--out", str(out),
                                 *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"synfer app exited: {log.read_text()[-3000:]}") from None
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"synfer app did not answer on {url} within {timeout:.0f} s")
