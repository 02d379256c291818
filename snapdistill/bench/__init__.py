"""`make bench`: `python -m snapdistill.bench --runs runs/toy --out bench.json`.

`toy` measures the toy-world figures and the distillation step cost (and holds `main`); `data` measures
`build-data` throughput against a bare resize loop (also runnable alone: `python -m snapdistill.bench.data`).
"""
