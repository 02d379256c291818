"""Image–text data: `build-data` turns raw sources into WebDataset shards, `recaption` rewrites captions.

Modules, one concept each: `sources/` (one adapter per raw layout, plus mixing), `images.py` (decode,
crop, resize, encode), `filters.py` (why a record is dropped), `worker.py` (the per-record work that runs
in worker processes), `shards.py` (deterministic tar writing and resume), `build.py` (the stage),
`captions.py` (caption cleaning rules), `captioners.py` (captioning and CLIP models), `recaption.py`.
"""
