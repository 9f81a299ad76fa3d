"""A small blog: Flask, SQLAlchemy 2 and GraphQL, with and without fiberloader.

``create_app(database, batching=True)`` serves the same JSON either with
batched loads (fiberloader's Flask extension and SQLAlchemy sources) or with
naive N+1 code, and reports each request's SQL statement count in the
``X-SQL-Count`` header.  See ``examples/blog/app.py``.
"""
