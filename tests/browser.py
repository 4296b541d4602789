"""JupyterLab and headless Chromium for the browser test, driven over the DevTools protocol (no npm needed).

`jupyter_lab(root)` starts a JupyterLab server on a free local port (its own settings, workspaces and runtime
folders, the app exposed as `window.jupyterapp`); `chromium()` starts Debian's Chromium headless on a fresh
profile; `Page` is a minimal DevTools client over `websocket-client` (a dependency of jupyter_server). Everything
listens on 127.0.0.1 only, and every process is stopped by its own pid.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1800", "--remote-debugging-port=0"]

SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}


def chromium_path() -> str | None:
    """The system Chromium (Debian's package `chromium`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, *, timeout: float, what: str, every: float = 0.25):
    """Poll `check()` until it returns something truthy; TimeoutError naming `what` (and the last value) if not."""
    end, value = time.monotonic() + timeout, None
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}; last seen: {value!r}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def jupyter_lab(root: Path, work: Path):
    """A JupyterLab server serving `root`; yields (base_url, token). Kernels are shut down before the server."""
    port, token = free_port(), "mm1lab-browser-test"
    for sub in ("runtime", "settings", "workspaces"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    # Every cell in the DOM (no windowing), and no news prompt over the page.
    for plugin, settings in SETTINGS.items():
        path = work / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(work / "runtime"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
           "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={work / 'settings'}",
           f"--LabApp.workspaces_dir={work / 'workspaces'}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"]
    log = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            if proc.poll() is not None:
                log_text = (work / "jupyterlab.log").read_text()
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}); its log:\n{log_text}")
            with contextlib.suppress(OSError):
                return urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200
        wait_for(up, timeout=90, what="JupyterLab to answer")
        yield base, token
    finally:
        with contextlib.suppress(OSError, ValueError):
            kernels = json.load(urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5))
            for kernel in kernels:
                request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
                urllib.request.urlopen(request, timeout=20)
        _stop(proc)
        log.close()


@contextlib.contextmanager
def chromium(profile: Path):
    """Headless Chromium on a fresh profile; yields the DevTools HTTP endpoint."""
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        port = wait_for(lambda: port_file.exists() and port_file.read_text().split("\n")[0], timeout=60,
                        what="Chromium's DevTools port")
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


class Page:
    """One browser tab over the DevTools protocol: `call(method, **params)`, `js(expression)`, `screenshot()`."""

    def __init__(self, devtools: str):
        import websocket

        tabs = json.load(urllib.request.urlopen(f"{devtools}/json/list", timeout=10))
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:                                         # events arrive in between; skip them
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        """Evaluate JavaScript in the page (promises awaited) and return its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, clip: dict | None = None) -> bytes:
        params = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        self.ws.close()
