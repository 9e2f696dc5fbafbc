"""Token streaming over POST: a slow generator, read with ``fetch()``, stoppable.

A chat with a language model, a long report: the page POSTs a prompt and reads
the answer as it is produced. ``POST /generate`` returns
``events.stream(generate(...))``: one event stream per request, no channel, no
broker. ``EventSource`` can only GET, so the page reads the stream with
``fetch()`` and a stream reader, and its Stop button aborts the fetch. The server
notices at its next write, closes the generator, and the generator's ``finally``
runs: the work stops for nobody.

Events: ``start`` (data: the reply's id), ``token`` (data: the next piece of
text, leading space included), ``done``. ``GET /replies/<id>`` says what the
reply's generator is doing: ``running``, ``finished`` or ``stopped``.
Run: ``flask --app examples/tokens/app.py run``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

from flask import Flask, Response, abort, render_template, request

from flask_eventstream import Event, EventStream

# examples/static: the stylesheet all the examples share (and htmx, vendored).
app = Flask(__name__, static_folder="../static")
#: Seconds between two tokens: a stand-in for a model's pace.
app.config["TOKENS_DELAY_SECONDS"] = 0.08
app.config.from_prefixed_env()  # e.g. FLASK_TOKENS_DELAY_SECONDS=0.5
events = EventStream(app)
logger = logging.getLogger(__name__)

ANSWER = (
    "Each piece of this answer is one event on a stream that belongs to your "
    "request alone. The server produces it slowly, as a language model would, and "
    "sends every piece as soon as it exists. Press Stop and the browser aborts the "
    "request; at its next write the server finds the connection gone, closes the "
    "generator, and its finally block records that the work stopped."
)

#: What each reply's generator is doing: "running", "finished" or "stopped".
#: A real app would keep this (and the text so far) in its database.
replies: dict[str, str] = {}
_replies_lock = threading.Lock()


def _set_state(reply: str, state: str) -> None:
    with _replies_lock:
        replies[reply] = state


def generate(prompt: str, reply: str, delay: float) -> Iterator[Event]:
    """The slow producer: the reply's id, then one token at a time, then done."""
    _set_state(reply, "running")
    finished = False
    try:
        yield Event(reply, event="start")
        yield Event(f"You asked: {prompt.strip()}\n\n", event="token")
        for number, word in enumerate(ANSWER.split(" ")):
            time.sleep(delay)
            yield Event(word if number == 0 else f" {word}", event="token")
        finished = True
        yield Event("end of the answer", event="done")
    finally:
        # Runs when the answer is complete, and also when the client went away:
        # the stream closes the generator at its next write.
        _set_state(reply, "finished" if finished else "stopped")
        logger.info("reply %s %s", reply, replies[reply])


@app.get("/")
def index() -> str:
    return render_template("tokens.html")


@app.post("/generate")
def generate_view() -> Response:
    prompt = (request.get_json(silent=True) or {}).get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        abort(400, "send a JSON body with a non-empty prompt")
    delay = float(app.config["TOKENS_DELAY_SECONDS"])
    return events.stream(generate(prompt, uuid.uuid4().hex, delay))


@app.get("/replies/<reply>")
def reply_state(reply: str) -> dict[str, str]:
    with _replies_lock:
        state = replies.get(reply)
    if state is None:
        abort(404)
    return {"reply": reply, "state": state}
