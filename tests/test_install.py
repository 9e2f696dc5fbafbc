"""The package as a user gets it: the wheel, installed with its extras into a fresh
venv, runs the README's production command.

The test venv has far more installed than a user's (``packaging`` comes with
pytest, for one), so only a fresh venv shows a missing requirement of an extra.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import missing
from .helpers import StreamClient, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

APP = """\
from flask import Flask
from flask_eventstream import EventStream

app = Flask(__name__)
events = EventStream(app)


@app.post("/send")
def send():
    return events.publish("hello from a fresh install").id
"""


def _run(*args: str | Path, cwd: Path, timeout: float) -> None:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _post(url: str) -> str:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        import build  # noqa: F401
    except ImportError:
        missing("build (the dist dependency group)")
    out = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable,
        "-m",
        "build",
        "--wheel",
        "--outdir",
        out,
        ROOT,
        cwd=ROOT,
        timeout=180,
    )
    (found,) = out.glob("flask_eventstream-*.whl")
    return found


def _install(wheel: Path, extras: str, where: Path) -> Path:
    """A new venv in *where* with *wheel* installed, with ``[extras]`` if any."""
    venv = where / "venv"
    # This pip installs into the new venv (--python): no pip of its own to set up.
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=where, timeout=60)
    pip = [sys.executable, "-m", "pip", "--python", venv / "bin" / "python"]
    pip += ["--disable-pip-version-check", "-q", "install"]
    _run(*pip, f"{wheel}[{extras}]" if extras else wheel, cwd=where, timeout=300)
    return venv


@pytest.fixture
def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed as the README says: ``[redis,gevent]``."""
    return _install(wheel, "redis,gevent", tmp_path)


@pytest.fixture
def production_server(tmp_path: Path, fresh_venv: Path) -> Iterator[str]:
    """The README's production command on a tiny app, from the fresh venv."""
    (tmp_path / "app.py").write_text(APP)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        fresh_venv / "bin" / "gunicorn",
        "-k", "gevent",
        "--worker-connections", "100",
        "-c", "python:flask_eventstream.gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "app:app",
    ]  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    server = subprocess.Popen([str(arg) for arg in command], cwd=tmp_path, env=env)

    def ready() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"gunicorn exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_for(ready, timeout=30)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_readme_production_command_serves_a_stream_after_a_fresh_install(
    production_server: str,
) -> None:
    first = _post(f"{production_server}/send")
    _post(f"{production_server}/send")
    stream = StreamClient(
        f"{production_server}/stream", headers={"Last-Event-ID": first}, timeout=10
    )
    try:
        assert stream.status == 200
        (event,) = stream.read_events(1, timeout=10)
        assert event.data == "hello from a fresh install"
    finally:
        stream.close()


#: For each documented extra alone, a script that what it promises makes work.
EXTRAS = {
    "": """
from flask import Flask
from flask_eventstream import EventStream
app = Flask("app")
app.config["EVENTSTREAM_BROKER_URL"] = "redis://localhost:6379/0"
try:
    EventStream(app)
except ImportError as exc:
    assert 'pip install "flask-eventstream[redis]"' in str(exc), exc
else:
    raise AssertionError("a Redis URL without the redis extra")
""",
    "redis": """
from flask_eventstream.brokers.redis import RedisBroker
""",
    "client": """
from flask_eventstream.client import EventSource
""",
    "metrics": """
from flask import Flask
from flask_eventstream import EventStream
app = Flask("app")
app.config["EVENTSTREAM_METRICS"] = True
EventStream(app)
""",
    "jwt": """
import time, jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask_eventstream._jwt import JWTVerifier
key = ec.generate_private_key(ec.SECP256R1())
public = key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
token = jwt.encode({"exp": int(time.time()) + 60, "channels": ["a"]}, key, "ES256")
assert JWTVerifier(public, ("ES256",)).check(token, ["a"]) is None
""",
}


@pytest.mark.parametrize("extras", sorted(EXTRAS), ids=lambda e: e or "no-extra")
def test_each_extra_brings_what_it_promises(
    tmp_path: Path, wheel: Path, extras: str
) -> None:
    venv = _install(wheel, extras, tmp_path)
    _run(venv / "bin" / "python", "-c", EXTRAS[extras], cwd=tmp_path, timeout=60)
