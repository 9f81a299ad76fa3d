"""SQLAlchemy 2.x ORM sources: graphql-ruby's ActiveRecord sources for sessions.

``RecordSource(session, Model, column=None)`` loads records by the value of
one column (the primary key by default) with one ``SELECT ... WHERE column
IN (...)`` per batch::

    post = dataloader.with_(RecordSource, session, Post).load(post_id)

``AssociationSource(session, Model, "relationship")`` loads one relationship
of many instances with one query per batch, fills each instance's attribute
as if SQLAlchemy had loaded it (nothing is marked dirty, and a later access
of the attribute issues no SQL), and returns what the attribute holds::

    comments = dataloader.with_(AssociationSource, session, Post, "comments").load(post)

Both use the session they are given and keep nothing beyond the life of the
dataloader.  The instances themselves are the cache of an
``AssociationSource``: a loaded attribute is returned as it is, without a
batch; an unloaded or expired one (``session.commit()`` expires everything)
is loaded in the next batch.  The related records an ``AssociationSource``
loads go into the cache of ``RecordSource(session, RelatedModel)`` of the
same dataloader (graphql-ruby warms ``ActiveRecordSource`` the same way),
and a many-to-one relationship is loaded *through* that ``RecordSource``, so
``post.author`` and ``RecordSource(session, User).load(user_id)`` share one
query and one cache.

A ``Session`` runs one statement at a time.  Under ``AsyncDataloader`` the
fetches of different sources run concurrently, so the sources of this module
take turns on a session (per dataloader); keep ``blocking = False`` on them
(a ``Session`` must not be used from the thread pool).

``batch_lazy_loads(Base)`` batches the ORM's own lazy loads, with no change
to models or code: inside a job of ``Dataloader`` or ``AsyncDataloader``,
``post.author`` that would emit a lazy ``SELECT`` loads through
``AssociationSource`` instead (theory of operation:
``fiberloader/_sqlalchemy_lazy.py``).

The code lives in three private modules: ``_sqlalchemy_orm`` (the
sources), ``_sqlalchemy_lazy`` (``batch_lazy_loads``) and
``_sqlalchemy_peers`` (which instances were loaded together).
"""

from ._sqlalchemy_lazy import batch_lazy_loads
from ._sqlalchemy_orm import AssociationSource, InstanceStateError, MultipleRecordsError, RecordSource

__all__ = [
    "RecordSource",
    "AssociationSource",
    "batch_lazy_loads",
    "MultipleRecordsError",
    "InstanceStateError",
]
