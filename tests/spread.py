"""Float checks whose tolerance comes from a measured spread, and the record that measures it.

`assert_rel_close(label, found, expected, rtol)` fails when any entry differs from `expected` by more than `rtol`
relative to that entry (`per_entry=True`: for values that are never near 0, such as losses) or to the largest
|expected| entry of the check (`per_entry=False`: for weight updates, where an entry near 0 would otherwise decide). With SNAPDISTILL_SPREAD_LOG set, it first appends the difference it saw, as one JSON line, to
that file: `make spread` runs the golden tests under each CPU kernel setting and prints the largest difference per
label, the figure written beside each tolerance.
"""

from __future__ import annotations

import json
import os

import torch


def rel_diff(found, expected, *, per_entry: bool) -> float:
    """max |found − expected| / |expected| per entry, or / max |expected| over the check."""
    found = torch.as_tensor(found, dtype=torch.float64).flatten()
    expected = torch.as_tensor(expected, dtype=torch.float64).flatten()
    assert found.shape == expected.shape, (found.shape, expected.shape)
    gap = (found - expected).abs()
    scale = expected.abs() if per_entry else expected.abs().max()
    return (gap / scale.clamp_min(1e-300)).max().item()


def assert_rel_close(label: str, found, expected, rtol: float, *, per_entry: bool) -> None:
    diff = rel_diff(found, expected, per_entry=per_entry)
    log = os.environ.get("SNAPDISTILL_SPREAD_LOG")
    if log:
        setting = {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "SNAPDISTILL_TEST_THREADS")}
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"label": label, "rel_diff": diff, "rtol": rtol, **setting,
                                "found": torch.as_tensor(found, dtype=torch.float64).flatten().tolist()}) + "\n")
    assert diff <= rtol, f"{label}: relative difference {diff:.3g} > {rtol:.3g}\nfound    {found}\nexpected {expected}"


def summary(log_path: str) -> str:
    """The largest difference per check over every setting in the log, beside its tolerance (a Markdown table)."""
    worst: dict[str, dict] = {}
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["label"] not in worst or row["rel_diff"] > worst[row["label"]]["rel_diff"]:
                worst[row["label"]] = row
    lines = ["| check | largest difference | seen at (ISA, threads) | tolerance | tolerance / largest |",
             "|---|---:|---|---:|---:|"]
    for label, r in sorted(worst.items()):
        ratio = r["rtol"] / r["rel_diff"] if r["rel_diff"] else float("inf")
        lines.append(f"| {label} | {r['rel_diff']:.2g} | {r['ATEN_CPU_CAPABILITY']}, {r['SNAPDISTILL_TEST_THREADS']} | "
                     f"{r['rtol']:.2g} | {ratio:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summary(sys.argv[1]))
