"""The package as a user gets it: the wheel, installed with its extras into a fresh
venv, runs the README's production command.

The test venv has far more installed than a user's (``packaging`` comes with
pytest, for one), so only a fresh venv shows a missing requirement of an extra.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .brokers.redis_server import RedisServer
from .conftest import missing
from .docs_blocks import code_block
from .docs_shell import ShellServer, commands, free_port
from .helpers import StreamClient, wait_for

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

APP = """\
from flask import Flask
from flask_eventstream import EventStream

app = Flask(__name__)
app.config.from_prefixed_env()  # FLASK_EVENTSTREAM_BROKER_URL, for one test
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


def _venv_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell in *venv*: its programs first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("GUNICORN")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    env.update(extra)
    return env


#: ``pip`` for the docs' commands: ``flask-eventstream`` is the wheel under test,
#: installed into the shell's venv by this interpreter's pip.
PIP_SHIM = """\
pip() {{
    [ "$1" = install ] || return 2
    shift
    "{python}" -m pip --python "$VIRTUAL_ENV/bin/python" \\
        --disable-pip-version-check -q install "${{@/flask-eventstream/{wheel}}}"
}}
"""


@pytest.fixture
def start_block(tmp_path: Path) -> Iterator[Callable[..., ShellServer]]:
    """``start_block(commands, venv, **env)``: run a docs block that starts
    gunicorn on ``app:app`` (the tiny APP) in *venv*, bound to a free port through
    ``GUNICORN_CMD_ARGS``, with *env* added; returns it once it serves."""
    started: list[ShellServer] = []

    def start(script: str, venv: Path, **env: str) -> ShellServer:
        (tmp_path / "app.py").write_text(APP)
        port = free_port()
        environ = _venv_env(venv, GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}", **env)
        server = ShellServer(script, cwd=tmp_path, env=environ, port=port)
        started.append(server)
        server.wait_serving("/nothing", timeout=300)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def serve_block(
    start_block: Callable[..., ShellServer],
) -> Iterator[Callable[..., ShellServer]]:
    """``serve_block(commands, venv, **env)``: :func:`start_block`, then two
    events published and a stream resuming after the first, which must replay
    the second; returns the server."""
    streams: list[StreamClient] = []

    def serve(script: str, venv: Path, **env: str) -> ShellServer:
        server = start_block(script, venv, **env)
        url = server.url
        first = _post(f"{url}/send")
        _post(f"{url}/send")
        stream = StreamClient(
            f"{url}/stream", headers={"Last-Event-ID": first}, timeout=10
        )
        streams.append(stream)
        assert stream.status == 200
        (event,) = stream.read_events(1, timeout=10)
        assert event.data == "hello from a fresh install"
        return server

    yield serve
    for stream in streams:
        stream.close()


def test_readme_production_command_serves_a_stream_after_a_fresh_install(
    fresh_venv: Path, serve_block: Callable[..., ShellServer]
) -> None:
    (command,) = commands(code_block("README.md", "sh", "gunicorn -k gevent"))
    serve_block(command, fresh_venv)


def test_deploying_gevent_block_installs_and_serves(
    tmp_path: Path, wheel: Path, serve_block: Callable[..., ShellServer]
) -> None:
    """All of it: ``pip install`` of the wheel, ``ulimit``, gunicorn."""
    block = code_block("deploying.md", "sh", 'pip install "flask-eventstream[gevent]"')
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, timeout=60)
    serve_block(PIP_SHIM.format(python=sys.executable, wheel=wheel) + block, venv)


def test_deploying_gunicorn_conf_py_serves_with_the_hook(
    tmp_path: Path, fresh_venv: Path, serve_block: Callable[..., ShellServer]
) -> None:
    conf = code_block("deploying.md", "python", "# gunicorn.conf.py")
    (tmp_path / "gunicorn.conf.py").write_text(conf)
    serve_block("gunicorn app:app", fresh_venv)


def test_deploying_gthread_block_serves_on_redis_whichever_worker_answers(
    fresh_venv: Path,
    own_redis_server: RedisServer,  # before serve_block: stopped after its server
    serve_block: Callable[..., ShellServer],
) -> None:
    """Two workers, on Redis as the page says: whichever worker takes each of the
    two events and the stream, the stream replays the second. (On the memory
    broker this depends on the kernel's choice of worker; ``test_redis_processes``
    checks delivery across workers with many streams.)"""
    (command,) = commands(code_block("deploying.md", "sh", "--worker-class gthread"))
    assert "--workers 2" in command
    url = own_redis_server.url
    server = serve_block(command, fresh_venv, FLASK_EVENTSTREAM_BROKER_URL=url)
    assert "memory broker" not in server.log()


def test_deploying_gthread_block_on_the_memory_broker_warns_at_start_up(
    fresh_venv: Path, start_block: Callable[..., ShellServer]
) -> None:
    """The same block on the memory broker: the page says a warning catches it.

    No event is sent: which worker takes a request is the kernel's choice, so a
    stream here may or may not see it (the very reason for the warning)."""
    (command,) = commands(code_block("deploying.md", "sh", "--worker-class gthread"))
    server = start_block(command, fresh_venv)
    wait_for(
        lambda: "2 workers each run their own memory broker" in server.log(),
        timeout=10,
    )


#: For each documented extra alone, a script that what it promises makes work.
EXTRAS = {
    "": """
from importlib.metadata import requires
# index.md: "Flask is the only dependency".
plain = [r for r in requires("flask-eventstream") if "extra ==" not in r]
assert len(plain) == 1 and plain[0].lower().startswith("flask>"), plain
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
import redis.connection
assert redis.connection.DefaultParser.__name__ == "_HiredisParser"
""",
    "client": """
from flask_eventstream.client import EventSource
""",
    "gevent": """
from gunicorn.workers.ggevent import GeventWorker
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


def _pip_extras(line: str) -> str:
    """The extras a docs ``pip install`` line asks for ("" for none)."""
    found = re.fullmatch(
        r'pip install (flask-eventstream|"flask-eventstream\[(\w+)\]")', line
    )
    assert found, f"not a plain install of the package: {line!r}"
    return found.group(2) or ""


def test_every_documented_pip_install_is_one_this_module_runs() -> None:
    """Each line installs ``flask-eventstream[extra]``: the spec the tests below
    give pip with the wheel, for each extra, into a fresh venv."""
    lines = [
        *commands(code_block("index.md", "sh", "pip install flask-eventstream")),
        *commands(code_block("quickstart.md", "sh", "pip install flask-eventstream")),
        *commands(code_block("redis.md", "sh", "pip install")),
    ]
    documented = {_pip_extras(line) for line in lines}
    assert documented == set(EXTRAS) - {"jwt"}, documented
    assert "[jwt]" in (ROOT / "docs" / "security.md").read_text()


@pytest.mark.parametrize("extras", sorted(EXTRAS), ids=lambda e: e or "no-extra")
def test_each_extra_brings_what_it_promises(
    tmp_path: Path, wheel: Path, extras: str
) -> None:
    venv = _install(wheel, extras, tmp_path)
    _run(venv / "bin" / "python", "-c", EXTRAS[extras], cwd=tmp_path, timeout=60)
