"""Shell commands in README.md and docs/ run as written (``tests/docs_shell.py``).

``pip install`` lines and the production commands run against the built wheel
in a fresh venv, in ``tests/test_install.py``. Two commands cannot run inside the
suite: ``make test`` (it is the suite) and ``make bench`` (ten minutes and more);
for those the test checks that the target exists and runs what the page says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from flask import Flask

from flask_eventstream import EventStream

from .conftest import missing
from .docs_blocks import ROOT, code_block
from .docs_shell import (
    DOCS_ADDRESS,
    ShellServer,
    answers,
    commands,
    free_port,
    run_shell,
)
from .helpers import StreamClient, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    """This environment with the test venv's programs first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture
def servers() -> Iterator[list[ShellServer]]:
    started: list[ShellServer] = []
    yield started
    for server in started:
        server.stop()


def _make_dry_run(target: str) -> str:
    if shutil.which("make") is None:
        missing("make")
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestReadme:
    def test_make_demo_serves_the_chat(
        self, servers: list[ShellServer], tmp_path: Path
    ) -> None:
        demo, test = commands(code_block("README.md", "sh", "make demo"))
        assert demo == "make demo"
        # make demo's `flask run` listens on 127.0.0.1:5000 unless told otherwise.
        assert "--port" not in _make_dry_run("demo")
        port = free_port()
        server = ShellServer(
            f"cd {ROOT} && {demo}",
            cwd=tmp_path,
            env=_env(FLASK_RUN_PORT=str(port)),
            port=port,
        )
        servers.append(server)
        server.wait_serving(timeout=180)  # make install first
        with urllib.request.urlopen(server.url + "/", timeout=10) as page:
            assert "<title>Chat</title>" in page.read().decode()

    def test_make_test_runs_the_suite_after_installing_the_system_programs(
        self,
    ) -> None:
        """Not run here (it is this suite): the target does what the README says."""
        demo, test = commands(code_block("README.md", "sh", "make demo"))
        assert test == "make test"
        planned = _make_dry_run("test")
        assert "scripts/system-deps.sh" in planned
        assert re.search(r"python -m pytest$", planned, re.M), planned
        system_deps = (ROOT / "scripts" / "system-deps.sh").read_text()
        for program in ("chromium", "redis-server", "nginx"):
            assert f"missing+=({program})" in system_deps
        assert "apt-get install" in system_deps


def test_make_bench_runs_the_benchmarks_at_each_size() -> None:
    """Not run here (10 to 20 minutes each): each target runs what the page says."""
    block = code_block("performance.md", "sh", "make bench-full")
    assert commands(block) == ["make bench", "make bench-full"]
    assert "benchmarks.run --quick" in _make_dry_run("bench")
    assert "benchmarks.run --full" in _make_dry_run("bench-full")


QUICKSTART_EXTRA = """
@app.get("/count")
def count():
    return str(events.subscriber_count("news"))
"""


def test_quickstart_serves_publishes_tails_and_reads_from_python(
    servers: list[ShellServer], tmp_path: Path
) -> None:
    """Quick start, steps 2, 4 and 5: the commands and the client, as written."""
    app = code_block("quickstart.md", "python", "PAGE = ")
    (tmp_path / "app.py").write_text(app + QUICKSTART_EXTRA)
    (run,) = commands(code_block("quickstart.md", "sh", "flask --app app run"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = _env(FLASK_RUN_PORT=str(port), PYTHONUNBUFFERED="1")
    server = ShellServer(run, cwd=tmp_path, env=env, port=port)
    servers.append(server)
    server.wait_serving()

    publish, tail, stats = commands(
        code_block("quickstart.md", "sh", "eventstream publish news")
    )
    reader = code_block("quickstart.md", "python", "client import EventSource")
    (tmp_path / "reader.py").write_text(reader.replace(DOCS_ADDRESS, address))
    watchers = [
        ShellServer(tail.replace(DOCS_ADDRESS, address), cwd=tmp_path, env=env, port=0),
        ShellServer("python reader.py", cwd=tmp_path, env=env, port=0),
    ]
    servers.extend(watchers)

    def subscribed() -> bool:
        with urllib.request.urlopen(f"{server.url}/count", timeout=5) as answer:
            return int(answer.read()) == 2

    wait_for(subscribed, timeout=30)
    (curl,) = commands(code_block("quickstart.md", "sh", "curl -X POST"))
    answer = run_shell(curl.replace(DOCS_ADDRESS, address), cwd=tmp_path, env=env)
    sent_id = json.loads(answer.stdout)["id"]
    for watcher in watchers:
        wait_for(lambda w=watcher: sent_id in w.log(), timeout=15)
    assert "Hello!" in watchers[0].log()
    assert f'headline {sent_id} {{"title": "Hello!"}}' in watchers[1].log()

    # The CLI's publish goes to its own memory broker, and says so.
    done = run_shell(publish, cwd=tmp_path, env=env)
    assert re.fullmatch(r"\S+\n", done.stdout), done.stdout
    assert "memory broker" in done.stderr, done.stderr
    done = run_shell(stats, cwd=tmp_path, env=env)
    assert done.stdout.startswith("broker: MemoryBroker\n"), done.stdout


def test_tutorials_clone_install_and_run_each_example(
    servers: list[ShellServer], tmp_path: Path
) -> None:
    """The clone is this checkout; ``make install`` made ``.venv`` (``make test``)."""
    clone, cd, install, run = commands(code_block("tutorials.md", "sh", "git clone"))
    url = clone.removeprefix("git clone ")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert url == project["urls"]["Source"]
    assert cd == f"cd {url.rsplit('/', 1)[1]}"
    assert install == "make install"
    assert "pip --disable-pip-version-check -q install -e ." in _make_dry_run("install")
    if not (ROOT / ".venv" / "bin" / "flask").exists():
        missing(".venv (make install)")
    names = sorted(path.parent.name for path in ROOT.glob("examples/*/app.py"))
    assert len(names) >= 6, names
    for name in names:
        port = free_port()
        server = ShellServer(
            f"cd {ROOT} && " + run.replace("<name>", name),
            cwd=tmp_path,
            env=_env(FLASK_RUN_PORT=str(port)),
            port=port,
        )
        servers.append(server)
        server.wait_serving()
        with urllib.request.urlopen(server.url + "/", timeout=10) as page:
            assert page.status == 200, name
        server.stop()


def test_htmx_npm_install_brings_the_versions_the_example_vendors(
    tmp_path: Path,
) -> None:
    (install,) = commands(code_block("htmx.md", "sh", "npm install"))
    if shutil.which("npm") is None:
        missing("npm")
    run_shell(install, cwd=tmp_path, env=_env(), timeout=300)
    modules = tmp_path / "node_modules"
    for package in ("htmx.org", "htmx-ext-sse"):
        version = json.loads((modules / package / "package.json").read_text())
        assert version["version"].startswith("2."), (package, version["version"])
    # The files VENDORED.md copies.
    assert (modules / "htmx.org" / "dist" / "htmx.min.js").is_file()
    assert (modules / "htmx-ext-sse" / "dist" / "sse.js").is_file()


NGINX_MAIN = """\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{block}
}}
"""


def test_deploying_nginx_block_passes_each_event_on_at_once(
    tmp_path: Path, app: Flask, events: EventStream, live: str
) -> None:
    """The page's nginx block, with its upstream and ``listen`` filled in."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        missing("nginx")
    block = code_block("deploying.md", "nginx", "proxy_buffering off")
    port = free_port()
    block = block.replace("127.0.0.1:8000", live.removeprefix("http://"))
    assert "# ...\n" in block
    block = block.replace("# ...\n", f"listen 127.0.0.1:{port};\n")
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(prefix=tmp_path, block=block))
    command = [nginx, "-p", tmp_path, "-e", tmp_path / "error.log", "-c", conf]
    process = subprocess.Popen(
        [str(part) for part in command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError((tmp_path / "error.log").read_text())
        return answers(port, "/nothing")

    try:
        wait_for(serving, timeout=20)
        stream = StreamClient(f"http://127.0.0.1:{port}/stream/news", timeout=10)
        try:
            assert stream.status == 200
            stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
            for number in range(3):
                with app.app_context():
                    events.publish(f"headline {number}", channel="news")
                # Each event comes through before the next is published: nginx
                # holds nothing back (a buffering proxy would wait for more).
                stream.read_until(lambda s, n=number: len(s.events) > n, timeout=10)
            assert [e.data for e in stream.events] == [
                f"headline {number}" for number in range(3)
            ]
        finally:
            stream.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
