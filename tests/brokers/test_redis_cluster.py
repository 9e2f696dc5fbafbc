"""The Redis broker on a Redis Cluster: URLs, groups of channels, connections,
lost announcements, failovers under load, and a slot moved while streams are open.

Real processes only: six ``redis-server`` nodes, three primaries with a replica
each (``cluster.py``). The promise is the one of ``docs/redis.md``
("Guarantees"): every subscriber gets every acknowledged event once, in order,
or the gap event where some may be missing; ids never go back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_eventstream import GAP_EVENT, BrokerUnavailable, Event, EventStream
from flask_eventstream.brokers import from_url
from flask_eventstream.brokers.redis import RedisBroker
from flask_eventstream.brokers.redis._pools import ClusterUrl
from flask_eventstream.brokers.redis._slots import ClusterNames, hash_tag
from flask_eventstream.cli import eventstream

from ..conftest import missing
from ..docs_blocks import code_block
from ..docs_shell import ShellServer, answers, free_port
from ..helpers import StreamClient, wait_for
from ..test_docs_commands import NGINX_MAIN
from ..test_servers import Gunicorn, gunicorn  # noqa: F401 (a fixture)
from .cluster import Cluster
from .failover import SteadyPublisher, check_delivery
from .reading import Reader, id_order

pytestmark = pytest.mark.redis


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


def _broker(cluster: Cluster, prefix: str, **options: float) -> RedisBroker:
    return RedisBroker.from_url(
        cluster.url, key_prefix=prefix, stats_interval=0.5, **options
    )


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "nodes", "options"),
        [
            ("redis+cluster://a", [("a", 6379)], {}),
            ("valkey+cluster://a:1,b:2/0", [("a", 1), ("b", 2)], {}),
            ("rediss+cluster://[::1]:7000", [("::1", 7000)], {"ssl": True}),
            (
                "redis+cluster://us%40er:p%3Ass@h:1?ssl_cert_reqs=none",
                [("h", 1)],
                {"username": "us@er", "password": "p:ss", "ssl_cert_reqs": "none"},
            ),
        ],
    )
    def test_cluster_urls(
        self, url: str, nodes: list[tuple[str, int]], options: dict[str, object]
    ) -> None:
        parsed = ClusterUrl.parse(url)
        assert (parsed.nodes, parsed.options) == (nodes, options)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("redis+cluster://", "Cluster URL"),
            ("redis+cluster://h:1/2", "Cluster URL"),
            ("redis+cluster://h:x", "host"),
            ("redis+cluster://h?socket_timeout=1", "unknown Cluster URL"),
        ],
    )
    def test_bad_urls_are_refused_with_the_grammar(
        self, url: str, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            ClusterUrl.parse(url)

    def test_from_url_knows_the_cluster_scheme(self, redis_cluster: Cluster) -> None:
        with from_url(redis_cluster.url) as broker:
            assert isinstance(broker, RedisBroker)
            assert broker.publish("c", Event("x")).id

    def test_no_node_answering_is_broker_unavailable(self) -> None:
        with pytest.raises(BrokerUnavailable, match="no node"):
            RedisBroker.from_url("redis+cluster://127.0.0.1:1")

    def test_a_prefix_with_braces_is_refused(self, redis_cluster: Cluster) -> None:
        with pytest.raises(ValueError, match="braces"):
            RedisBroker.from_url(redis_cluster.url, key_prefix="app{1}:")


class TestGroups:
    @pytest.mark.parametrize(
        ("channel", "group"),
        [
            ("chat", "chat"),
            ("room7}chat", "room7"),
            ("{room7}chat", "{room7"),
            ("}odd", "p:{}odd}"),
        ],
    )
    def test_a_channel_group_is_its_hash_tag(self, channel: str, group: str) -> None:
        assert ClusterNames("p:").group(channel) == group

    def test_a_group_shares_one_slot(self, redis_cluster: Cluster) -> None:
        names = ClusterNames("p:")
        with redis_cluster.client(redis_cluster.alive()[0]) as client:
            slots = {
                int(client.execute_command("CLUSTER KEYSLOT", name))
                for name in (
                    names.key("room7}chat"),
                    names.key("room7}typing"),
                    names.last_id_key("room7}chat"),
                    names.notices("room7}chat"),
                    names.key("room7}chat") + ":key:abc",
                )
            }
        assert len(slots) == 1
        assert hash_tag(names.key("room7}chat")) == "room7"

    def test_a_stream_over_several_groups_resumes_with_the_gap_and_no_duplicate(
        self, redis_cluster: Cluster
    ) -> None:
        """Ids of channels on different slots are not comparable: the resume
        replays the channel whose entry was named, nothing of the others, and
        says so with the gap event."""
        broker = _broker(redis_cluster, _prefix())
        try:
            names = ClusterNames("x:")
            assert names.group("a") != names.group("b")
            first = broker.publish("a", Event("a0"))
            for n in (1, 2):
                for channel in "ab":
                    broker.publish(channel, Event(f"{channel}{n}"))
            reader = Reader(broker.subscribe(["a", "b"], last_event_id=first.id))
            assert reader.subscription.missed
            got = reader.read(2)
            assert [e.data for e in got] == ["a1", "a2"]
            assert reader.idle()
            live = broker.publish("b", Event("live"))
            assert reader.read(3)[-1].id == live.id
        finally:
            broker.close()


class TestConnections:
    def test_counts_and_connections_per_node(self, redis_cluster: Cluster) -> None:
        """Subscriber counts add up across brokers over every primary; each
        broker holds at most 3 connections per primary (2 shared, 1 listener)
        however many subscriptions it serves."""
        prefix = _prefix()
        brokers = [_broker(redis_cluster, prefix) for _ in range(2)]
        channels = [f"c{n}" for n in range(12)]  # on every primary
        try:
            readers = [Reader(b.subscribe(channels)) for b in brokers]
            readers += [Reader(brokers[0].subscribe(["c0"])) for _ in range(50)]
            sent = [brokers[1].publish(ch, Event(ch)) for ch in channels]
            for reader in readers[:2]:
                got = reader.read(len(channels), timeout=10)
                assert sorted(e.id or "" for e in got) == sorted(
                    e.id or "" for e in sent
                )
            expected = {ch: 2 for ch in channels} | {"c0": 52}
            deadline = time.monotonic() + 10
            while brokers[0].cluster_subscriber_counts() != expected:
                assert time.monotonic() < deadline, brokers[
                    0
                ].cluster_subscriber_counts()
                time.sleep(0.1)
            primaries = {
                redis_cluster.primary_of(f"{prefix}{{{ch}}}") for ch in channels
            }
            assert len(primaries) == 3
            for port in primaries:
                for broker in brokers:
                    held = redis_cluster.nodes[port].clients(broker.client_name)
                    assert 1 <= len(held) <= 3, held
        finally:
            for broker in brokers:
                broker.close()

    def test_stats_command_adds_up_every_primary(self, redis_cluster: Cluster) -> None:
        """``flask eventstream stats`` on a cluster, whose processes' counts lie
        on several primaries."""
        prefix = _prefix()
        workers = [_broker(redis_cluster, prefix) for _ in range(3)]
        onlooker = _broker(redis_cluster, prefix)
        app = Flask(__name__)
        EventStream(app, broker=onlooker)
        runner = app.test_cli_runner()

        def channels() -> object:
            result = runner.invoke(eventstream, ["stats", "--json"])
            assert result.exit_code == 0, result.output
            return json.loads(result.stdout)["channels"]

        try:
            for worker in workers:
                worker.subscribe(["chat", "news"])
            wait_for(lambda: channels() == {"chat": 3, "news": 3}, timeout=10)
        finally:
            for broker in [*workers, onlooker]:
                broker.close()

    def test_lost_announcements_are_read_from_the_stream(
        self, redis_cluster: Cluster
    ) -> None:
        """The listener's connections killed again and again while a publisher
        runs: every event arrives once, in order, with no gap event (the
        stream proves nothing was lost)."""
        prefix = _prefix()
        publishing, listening = (
            _broker(redis_cluster, prefix),
            _broker(redis_cluster, prefix),
        )
        try:
            reader = Reader(listening.subscribe(["ticks"]))
            port = redis_cluster.primary_of(f"{prefix}{{ticks}}")
            with SteadyPublisher(publishing, "ticks") as publisher:
                for round_ in range(5):
                    publisher.wait_acknowledged(10 * (round_ + 1))
                    with redis_cluster.client(port) as client:
                        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                publisher.wait_acknowledged(60)
            _read_through(reader, publisher)
            assert GAP_EVENT not in {e.event for e in reader.events}
            check_delivery(reader, publisher.acknowledged, ids_increase=True)
            assert len(reader.events) == len(publisher.acknowledged)
        finally:
            publishing.close()
            listening.close()

    def test_a_stream_that_went_back_gives_the_gap_then_higher_ids(
        self, redis_cluster: Cluster
    ) -> None:
        """An entry delivered, then lost by the cluster (a stream with an entry
        a minute ahead, deleted: as a failover to a replica that lacked it, with
        a clock behind): the gap event, then new events with ids above every id
        delivered, none skipped."""
        prefix = _prefix()
        broker = _broker(redis_cluster, prefix)
        key = f"{prefix}{{c}}"
        try:
            reader = Reader(broker.subscribe(["c"]))
            first = broker.publish("c", Event("first"))
            ahead = f"{int(time.time() * 1000) + 60_000}-0"
            with redis_cluster.client(redis_cluster.primary_of(key)) as client:
                client.xadd(key, {"p": first.id or "", "d": "ahead"}, id=ahead)
                assert [e.data for e in reader.read(2)] == ["first", "ahead"]
                client.delete(key)
            assert [e.event for e in reader.read(3)][-1] == GAP_EVENT
            after = [broker.publish("c", Event(f"after {n}")) for n in range(3)]
            got = reader.read(6)[3:]
            assert [e.data for e in got] == ["after 0", "after 1", "after 2"]
            assert [e.id for e in got] == [e.id for e in after]
            assert all(id_order(e.id) > id_order(ahead) for e in got)
        finally:
            broker.close()

    def test_the_listener_runs_as_a_greenlet(self, redis_cluster: Cluster) -> None:
        """Under gevent (a patched process, as gunicorn's gevent worker) the
        listener waits on its node connections cooperatively: greenlet readers
        on channels of every primary get every event."""
        if importlib.util.find_spec("gevent") is None:
            missing("gevent (the gevent extra)")
        done = subprocess.run(
            [sys.executable, "-c", _GEVENT, redis_cluster.url, _prefix()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == {"readers": 30, "events": 12}


#: Ten greenlet readers per channel group of three, twelve events in all.
_GEVENT = """
from gevent import monkey
monkey.patch_all()
import json, sys
import gevent
from flask_eventstream import Event, EventParser
from flask_eventstream.brokers.redis import RedisBroker

url, prefix = sys.argv[1:]
channels = [f"c{n}" for n in range(3)]
with RedisBroker.from_url(url, key_prefix=prefix) as broker:
    subs = [broker.subscribe(channels) for _ in range(30)]

    def read(sub):
        parser, events = EventParser(), []
        while len(events) < 12:
            chunk = sub.next_chunk(10)
            assert chunk is not None
            events += [e for e in parser.feed(chunk) if e.data.startswith("e")]
        return len(events)

    readers = [gevent.spawn(read, sub) for sub in subs]
    for n in range(4):
        for channel in channels:
            broker.publish(channel, Event(f"e{n}"))
    counts = [reader.get(timeout=20) for reader in readers]
    print(json.dumps({"readers": len(counts), "events": min(counts)}))
"""


def _read_through(reader: Reader, publisher: SteadyPublisher) -> None:
    """Wait until the last acknowledged event has arrived."""
    last = list(publisher.acknowledged)[-1]
    deadline = time.monotonic() + 30
    while last not in {event.data for event in reader.events}:
        assert time.monotonic() < deadline, "the last event never arrived"
        reader.idle(0.2)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster for one test, which may kill nodes and move slots."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["sigkill", "manual"])
def test_a_failover_under_load_loses_nothing_silently(
    own_cluster: Cluster,
    gunicorn: Callable[..., Gunicorn],  # noqa: F811
    fault: str,
) -> None:
    """The primary of the channel's slot SIGKILLed, or a manual ``CLUSTER
    FAILOVER`` on its replica, while a publisher publishes every 20 ms and two
    brokers here, and an app process (gunicorn, gevent) with a browser-like
    client over HTTP, listen: publishing resumes on the new primary within a
    bound; each subscriber gets every acknowledged event once, in order, or the
    gap event; no id goes back. Meanwhile a channel of another primary is
    delivered at once."""
    prefix = _prefix()
    publishing = _broker(own_cluster, prefix)
    listening = [_broker(own_cluster, prefix) for _ in range(2)]
    app_process = gunicorn(
        "gevent",
        heartbeat=1,
        environ={
            "EVENTSTREAM_BROKER_URL": own_cluster.url,
            "EVENTSTREAM_REDIS_PREFIX": prefix,
        },
    )
    browser = StreamClient(f"{app_process.url}/stream?channel=ticks", timeout=30)
    wait_for(lambda: app_process.count() == 1, timeout=10)
    try:
        old = own_cluster.primary_of(f"{prefix}{{ticks}}")
        other = next(
            name
            for name in (f"other{n}" for n in range(50))
            if own_cluster.primary_of(f"{prefix}{{{name}}}") != old
        )
        readers = [Reader(broker.subscribe(["ticks", other])) for broker in listening]
        replica = own_cluster.replica_of(old)
        with SteadyPublisher(publishing, "ticks") as publisher:
            publisher.wait_acknowledged(30)
            if fault == "sigkill":
                own_cluster.nodes[old].kill()
            else:
                with own_cluster.client(replica) as client:
                    client.execute_command("CLUSTER", "FAILOVER")
            faulted_at = time.monotonic()
            time.sleep(0.2)  # the listeners have seen their connection go
            publishing.publish(other, Event("during"))
            for reader in readers:
                _read_until(reader, "during", timeout=1.5)
            print(f"{fault}: another primary's channel delivered meanwhile")
            deadline = faulted_at + 30
            while own_cluster.primary_of(f"{prefix}{{ticks}}") != replica:
                assert time.monotonic() < deadline, "the replica did not take over"
                time.sleep(0.05)
            before = len(publisher.acknowledged)
            publisher.wait_acknowledged(before + 30)
        resumed = (publisher.resumed_at or faulted_at) - faulted_at
        print(f"{fault}: publishing resumed {resumed:.2f}s after the fault")
        assert resumed < 15
        last = list(publisher.acknowledged)[-1]
        browser.read_until(lambda c: last in {e.data for e in c.events}, timeout=30)
        over_http = Reader(readers[0].subscription)
        over_http.events = browser.events
        check_delivery(over_http, publisher.acknowledged, ids_increase=True)
        print(f"{fault}: the app process got {len(browser.events)} events")
        for reader in readers:
            _read_through(reader, publisher)
            ticks = Reader(reader.subscription)
            ticks.events = [
                e
                for e in reader.events
                if e.data != "during"
                and (e.event != GAP_EVENT or json.loads(e.data)["channel"] == "ticks")
            ]
            check_delivery(ticks, publisher.acknowledged, ids_increase=True)
            gaps = sum(e.event == GAP_EVENT for e in ticks.events)
            print(f"{fault}: {gaps} gap events, {len(ticks.events)} events")
    finally:
        browser.close()
        publishing.close()
        for broker in listening:
            broker.close()


def _read_until(reader: Reader, data: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while data not in {event.data for event in reader.events}:
        assert time.monotonic() < deadline, f"{data!r} did not arrive in {timeout}s"
        reader.idle(0.05)


@pytest.mark.slow
def test_a_slot_moved_while_streams_are_open(own_cluster: Cluster) -> None:
    """``redis-cli --cluster reshard`` moves the slot of the channel to another
    primary (keys migrated while a publisher runs): streams stay open, every
    acknowledged event arrives once, in order, or after the gap event."""
    prefix = _prefix()
    publishing = _broker(own_cluster, prefix)
    listening = [_broker(own_cluster, prefix) for _ in range(2)]
    key = f"{prefix}{{ticks}}"
    try:
        readers = [Reader(broker.subscribe(["ticks"])) for broker in listening]
        source = own_cluster.primary_of(key)
        target = next(port for port in own_cluster.primaries() if port != source)
        with SteadyPublisher(publishing, "ticks") as publisher:
            publisher.wait_acknowledged(30)
            own_cluster.move_slot(key, source, target)
            deadline = time.monotonic() + 30
            while own_cluster.primary_of(key) != target:
                assert time.monotonic() < deadline, "the slot did not move"
                time.sleep(0.05)
            before = len(publisher.acknowledged)
            publisher.wait_acknowledged(before + 30)
        for reader in readers:
            _read_through(reader, publisher)
            check_delivery(reader, publisher.acknowledged, ids_increase=True)
            gaps = [e for e in reader.events if e.event == GAP_EVENT]
            print(f"resharding: {len(gaps)} gap events")
    finally:
        publishing.close()
        for broker in listening:
            broker.close()


# docs/redis.md's samples for a cluster, run with the test cluster's nodes in
# place of the page's host names.

_APP = """\
from flask import Flask
from flask_eventstream import EventStream


def create_app():
    app = Flask(__name__)
    app.config.from_prefixed_env()
    EventStream(app)
    return app
"""


def _nodes(cluster: Cluster) -> str:
    return cluster.url.split("://", 1)[1]


def test_the_pages_cluster_sample_is_a_url_the_broker_takes(
    redis_cluster: Cluster,
) -> None:
    sample = code_block("redis.md", "python", "redis+cluster://")
    app = Flask(__name__)
    exec(sample, {"app": app})  # noqa: S102 - the documentation's own code
    url = app.config["EVENTSTREAM_BROKER_URL"]
    assert url == "redis+cluster://:secret@redis-1:6379,redis-2:6379,redis-3:6379"
    hosts = "redis-1:6379,redis-2:6379,redis-3:6379"
    app.config["EVENTSTREAM_BROKER_URL"] = url.replace(
        f":secret@{hosts}", _nodes(redis_cluster)
    )
    app.config["EVENTSTREAM_REDIS_PREFIX"] = _prefix()
    events = EventStream(app)
    with app.app_context():
        reader = Reader(events.broker().subscribe(["sample"]))
        events.publish("through the cluster", channel="sample")
        assert [e.data for e in reader.read(1)] == ["through the cluster"]
        reader.subscription.close()
        events.broker().close()


@pytest.mark.slow
def test_the_worked_deployment_runs(redis_cluster: Cluster, tmp_path: Path) -> None:
    """Two app machines (the page's gunicorn command, run twice), nginx in front
    (the page's block), one cluster: a stream through nginx gets what a third
    process publishes, whichever machine serves it."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        missing("nginx")
    diagram = code_block("redis.md", "", "browsers ── nginx")
    script = code_block("redis.md", "sh", "FLASK_EVENTSTREAM_BROKER_URL")
    assert "gunicorn -k gevent, 4 workers" in diagram
    assert "--worker-class gevent --workers 4" in script
    sentinel, cluster = (
        line.split("=", 1)[1].strip()
        for line in script.splitlines()
        if "FLASK_EVENTSTREAM_BROKER_URL=" in line
    )
    assert cluster == """'"redis+cluster://:secret@r1:6379,r2:6379,r3:6379"'"""
    ours = f"""'"redis+cluster://{_nodes(redis_cluster)}"'"""
    script = script.replace(sentinel, ours).replace("--workers 4", "--workers 1")
    (tmp_path / "app.py").write_text(_APP)
    machines = []
    try:
        for _ in range(2):
            port = free_port()
            env = dict(os.environ, GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}")
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
            machines.append(ShellServer(script, cwd=tmp_path, env=env, port=port))
        for machine in machines:
            machine.wait_serving("/nothing")
        block = code_block("redis.md", "nginx", "upstream app")
        for name, machine in zip(("app-1:8000", "app-2:8000"), machines, strict=True):
            block = block.replace(name, f"127.0.0.1:{machine.port}")
        port = free_port()
        block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(prefix=tmp_path, block=block))
        proxy = subprocess.Popen(
            [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
            + ["-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: answers(port, "/nothing"), timeout=20)
            # nginx takes turns: two streams land on both machines.
            streams = [
                StreamClient(f"http://127.0.0.1:{port}/stream/news", timeout=10)
                for _ in range(2)
            ]
            publisher = RedisBroker.from_url(redis_cluster.url)  # the default prefix
            try:
                for stream in streams:
                    stream.read_until(lambda s: len(s.raw) > 0, timeout=10)
                published = publisher.publish("news", Event("to every machine"))
                for stream in streams:
                    stream.read_until(lambda s: len(s.events) > 0, timeout=10)
                    assert [(e.data, e.id) for e in stream.events] == [
                        ("to every machine", published.id)
                    ]
            finally:
                publisher.close()
                for stream in streams:
                    stream.close()
        finally:
            proxy.terminate()
            proxy.wait(timeout=10)
    finally:
        for machine in machines:
            machine.stop()
