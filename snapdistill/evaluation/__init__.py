"""The `eval` stage: score `sample` folders with the metrics of `snapdistill.metrics` and write the report.

`stage` runs the metrics over each sample run, `sweep` re-samples chosen runs at other guidance scales,
and `report` writes the Markdown table and the plots.
"""
