"""The progress example: a job's progress bar and a time display, no Redis."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

from ..conftest import LiveServer
from ..helpers import StreamClient


def _percents(stream: StreamClient) -> list[int]:
    return [json.loads(e.data)["percent"] for e in stream.events]


def _read_to_100(stream: StreamClient) -> list[int]:
    stream.read_until(lambda s: 100 in _percents(s), timeout=15)
    return _percents(stream)


def test_page_shows_bar_and_time(example: Callable[..., ModuleType]) -> None:
    page = example("progress").app.test_client().get("/").text
    assert '<progress id="bar" max="100"' in page
    assert 'new EventSource("/time")' in page


class TestJob:
    def test_start_answers_with_the_job_and_its_resumable_stream(
        self, example: Callable[..., ModuleType]
    ) -> None:
        progress = example("progress", PROGRESS_STEP_SECONDS=0.001)
        response = progress.app.test_client().post("/start")
        assert response.status_code == 202
        job = response.get_json()
        assert job["percent"] == 0
        stream = urlsplit(job["stream"])
        assert stream.path == f"/stream/job-{job['job']}"
        assert parse_qs(stream.query)["lastEventId"] != [""]

    def test_bar_gets_every_step_once_up_to_100(
        self,
        example: Callable[..., ModuleType],
        serve: Callable[..., LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        """Steps published before the page connects are replayed, none twice."""
        progress = example("progress", PROGRESS_STEP_SECONDS=0.01)
        url = serve(progress.app).url
        job = progress.app.test_client().post("/start").get_json()
        stream = open_stream(url + job["stream"])
        assert _read_to_100(stream) == list(range(1, 101))
        assert {e.event for e in stream.events} == {"progress"}

    def test_every_page_watching_a_job_sees_every_step(
        self,
        example: Callable[..., ModuleType],
        serve: Callable[..., LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        """Every page gets every step (a queue shared by a channel's pages would
        give each step to one of them only)."""
        progress = example("progress", PROGRESS_STEP_SECONDS=0.01)
        url = serve(progress.app).url
        job = progress.app.test_client().post("/start").get_json()
        pages = [open_stream(url + job["stream"]) for _ in range(3)]
        for page in pages:
            assert _read_to_100(page) == list(range(1, 101))

    def test_jobs_report_on_their_own_channels(
        self,
        example: Callable[..., ModuleType],
        serve: Callable[..., LiveServer],
        open_stream: Callable[..., StreamClient],
    ) -> None:
        progress = example("progress", PROGRESS_STEP_SECONDS=0.001)
        url = serve(progress.app).url
        client = progress.app.test_client()
        first, second = (client.post("/start").get_json() for _ in range(2))
        assert first["stream"] != second["stream"]
        for job in (first, second):
            assert _read_to_100(open_stream(url + job["stream"])) == list(range(1, 101))

    def test_cross_site_start_is_refused(
        self, example: Callable[..., ModuleType]
    ) -> None:
        client = example("progress").app.test_client()
        refused = client.post("/start", headers={"Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403


def test_time_display_streams_readings_from_a_function(
    example: Callable[..., ModuleType],
    serve: Callable[..., LiveServer],
    open_stream: Callable[..., StreamClient],
) -> None:
    """``?limit=2``: two readings, then the stream ends (streamFunc's limit)."""
    progress = example("progress")
    stream = open_stream(serve(progress.app).url + "/time?limit=2", timeout=10)
    stream.read_to_end(timeout=10)
    assert len(stream.events) == 2
    for reading in stream.events:
        datetime.datetime.strptime(reading.data, "%Y-%m-%d %H:%M:%S")
