"""Runnable examples of fiberloader (``examples.blog`` is a small Flask app)."""
