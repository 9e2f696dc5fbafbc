# Flask-SSE's README example, verbatim but for its import (see tests/test_compat.py).
# ruff: noqa: I001
# fmt: off
from flask import Flask
from flask_eventstream.compat import sse

app = Flask(__name__)
app.config["REDIS_URL"] = "redis://localhost"
app.register_blueprint(sse, url_prefix='/stream')

@app.route('/send')
def send_message():
    sse.publish({"message": "Hello!"}, type='greeting')
    return "Message sent!"
