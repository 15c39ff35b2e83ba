"""Online feedback: rating events in, profiles out, and the next dataset version.

- :mod:`~metarec.feedback.events`: an event (id, user, item, rating, time, optional user
  attributes) and its validation, which names the offending field;
- :mod:`~metarec.feedback.store`: the durable event store (SQLite WAL by default, PostgreSQL
  when configured), idempotent by event id, one transaction per batch;
- :mod:`~metarec.feedback.contract`: the Great Expectations contract on events at ingest
  (per-event verdicts: what passes is folded in, what fails is quarantined with its reason);
- :mod:`~metarec.feedback.fold`: the ingested events inside ``data/`` and how `data prepare`
  merges them into the canonical tables;
- :mod:`~metarec.feedback.ingest`: `metarec data ingest`, events up to a watermark -> a new
  DVC version of ``data/``, committed through a journal so a crash leaves the old version or
  the new one.

Torch-free: the server imports this package.
"""
