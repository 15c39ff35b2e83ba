"""The item catalog as an artifact of its own: versions, new items, serving-side scoring.

- :mod:`~metarec.catalog.artifact`: a catalog version (ids, titles, item vectors, per-item
  terms) in a folder, verified on read;
- :mod:`~metarec.catalog.store`: the versions of one model's catalog, written once each;
- :mod:`~metarec.catalog.items`: new items from a file (contract, encoding, text embedding,
  item encoder);
- :mod:`~metarec.catalog.scoring`: a user's adaptation and chunked top-k scoring over a
  catalog, in ONNX Runtime.

Torch-free at import (serving reads catalogs); the item encoder runs in ONNX Runtime.
"""
