"""The blog app for a WSGI server, configured by environment variables.

``BLOG_DB``: the SQLite file (make it with ``python examples/blog/seed.py``);
``BLOG_BATCHING=0`` serves the naive N+1 baseline; ``BLOG_LAZY_LOADS=1``
batches SQLAlchemy's lazy loads (with ``BLOG_BATCHING=0``: the naive code,
unchanged, in a dataloader per request); ``FIBERLOADER_DATALOADER`` picks
the scheduler (``sync``, ``async`` or ``null``).  From the repository
root::

    python examples/blog/seed.py /tmp/blog.db
    BLOG_DB=/tmp/blog.db FIBERLOADER_DATALOADER=async \\
        gunicorn -k gevent --no-control-socket -b 127.0.0.1:8000 examples.blog.wsgi:application
"""

import os

from examples.blog.app import create_app

application = create_app(os.environ["BLOG_DB"], batching=os.environ.get("BLOG_BATCHING", "1") != "0",
                         lazy_loads=os.environ.get("BLOG_LAZY_LOADS", "0") == "1")
