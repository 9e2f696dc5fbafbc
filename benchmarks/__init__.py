"""Benchmarks of flask-eventstream against Flask-SSE and sse-starlette (not tests)."""
