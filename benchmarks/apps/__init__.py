"""The apps under test; each serves the same four endpoints (see ``_ticks.py``)."""
