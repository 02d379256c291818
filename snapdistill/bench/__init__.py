"""`make bench`: `python -m snapdistill.bench --runs runs/toy --out bench.json`.

`toy` measures the toy-world figures (and holds `main`), `rows` names them, `speed` times them and the
distillation step; `data` measures `build-data` throughput against a bare resize loop (also runnable alone:
`python -m snapdistill.bench.data`).
"""
