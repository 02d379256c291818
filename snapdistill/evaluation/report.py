"""The eval report: the paper-style table (Markdown) and the plots (PNG, matplotlib's Agg backend).

Rows are model x steps (x guidance); a column appears when some row has its number, so the toy
world's table shows the judge's columns and the SD table shows HPS, FID and CLIP.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from snapdistill.metrics.aggregate import HPS_STYLES


def _get(row: dict, *keys):
    """row["metrics"][k1][k2]..., or None when any level is missing."""
    value = row.get("metrics", {})
    for k in keys:
        if not isinstance(value, dict) or value.get(k) is None:
            return None
        value = value[k]
    return value


def _hps_style(style: str):
    return lambda row: _get(row, "hps", "styles", style, "mean")


# (header, getter, decimals or None for 3 significant digits); the order is the table's.
METRICS = [
    *[(f"HPS {s}", _hps_style(s), 2) for s in HPS_STYLES],
    ("HPS avg", lambda r: _get(r, "hps", "average"), 2),
    ("FID", lambda r: _get(r, "fid", "fid"), 2),
    ("CLIP", lambda r: _get(r, "clip", "score"), 2),
    ("Judge acc", lambda r: _get(r, "toy", "acc"), 3),
    ("Exact", lambda r: _get(r, "toy", "exact"), 3),
    ("Toy FID", lambda r: _get(r, "toy", "fid"), 2),
    ("MSE vs ref", lambda r: _get(r, "mse_vs_ref", "mse"), None),  # spans decades: 3 significant digits
]
COST = [
    ("UNet evals/img", lambda r: r.get("unet_calls_per_image"), 1),
    ("s/img", lambda r: r.get("s_per_image"), 3),
]
# Which numbers the quality-vs-steps plot draws, and which pair makes the guidance trade-off.
QUALITY = ("HPS avg", "FID", "CLIP", "Judge acc", "Toy FID", "MSE vs ref")
# Drawn on a log axis: they span decades across step counts (the toy teacher at 4 DPM++ steps scores toy FID ~7,500
# beside ~400 for every row at 8 steps and more, which a linear axis flattens into one line).
LOG_SCALE = ("FID", "Toy FID", "MSE vs ref")
TRADEOFFS = (("CLIP", "FID"), ("Judge acc", "Toy FID"))
_BY_NAME = {name: get for name, get, _ in METRICS + COST}


def fmt(value, decimals: int | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if decimals is None else f"{value:.{decimals}f}"


def _order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["label"], r["steps"] or 0, r["guidance"] or 0))


def _unreliable(row: dict) -> bool:
    return _get(row, "fid") is not None and not _get(row, "fid", "reliable")


def table(rows: list[dict], *, with_guidance: bool = False) -> str:
    """A Markdown table of rows: model, steps, the metrics any row has, then the cost columns."""
    columns = [c for c in METRICS if any(c[1](r) is not None for r in rows)] + COST
    head = ["Model", "Steps"] + (["Guidance"] if with_guidance else []) + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in _order(rows):
        cells = [r["label"], str(r["steps"])] + ([f"{r['guidance']:g}"] if with_guidance else [])
        for name, get, decimals in columns:
            cell = fmt(get(r), decimals)
            cells.append(cell + ("†" if name == "FID" and _unreliable(r) else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """report.md: the main table, the guidance sweep table, the plots and where each run came from."""
    main = [r for r in report["rows"] if not r.get("sweep")]
    swept = [r for r in report["rows"] if r.get("sweep")]
    parts = ["# snapdistill evaluation", ""]
    if report.get("hps_version"):
        parts += [f"HPS: **{report['hps_version']}** (v2.0 and v2.1 scores are not comparable).", ""]
    parts += [table(main, with_guidance=len({r["guidance"] for r in main}) > 1), ""]
    if any(_unreliable(r) for r in report["rows"]):
        parts += [f"† FID from fewer than {report['fid_reliable_min']:,} images: biased upwards; "
                  "compare only at equal sample counts.", ""]
    partial = [r for r in report["rows"] if _get(r, "hps", "styles") and not _get(r, "hps", "full_benchmark")]
    if partial:
        parts += ["HPS of " + ", ".join(sorted({f"{r['label']} ({r['steps']} steps)" for r in partial}))
                  + ": not the full benchmark (800 prompts per style), so not comparable with published numbers.", ""]
    toy = [r for r in report["rows"] if _get(r, "toy", "fid") is not None]
    if toy:
        counts = sorted({(r["metrics"]["toy"]["n"], r["metrics"]["toy"]["n_real"]) for r in toy})
        parts += ["Toy FID: judge features of " + ", ".join(f"{n} generated vs {m} real" for n, m in counts)
                  + " images; it falls as the count grows, so compare rows of equal count only.", ""]
    if swept:
        points = [r for r in report["rows"] if (r["label"], r["steps"]) in {(s["label"], s["steps"]) for s in swept}]
        parts += ["## Guidance sweep", "", table(points, with_guidance=True), ""]
    if report.get("plots"):
        parts += ["## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()] + [""]
    parts += ["## Runs", ""] + [f"- {r['label']}, {r['steps']} steps, guidance {r['guidance']:g}, "
                                f"{r.get('images', '?')} images: `{r.get('run', '?')}`"
                                + (f" (from {r['included_from']})" if r.get("included_from") else "")
                                for r in _order(report["rows"])]
    return "\n".join(parts) + "\n"


def summary(row: dict) -> dict:
    """The row's headline numbers (for the manifest)."""
    out = {"label": row["label"], "steps": row["steps"], "guidance": row["guidance"]}
    out.update({name: get(row) for name, get, _ in METRICS + COST if get(row) is not None})
    return out


# Plots -----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on nodes
    import matplotlib.pyplot as plt

    return plt


def _cost(row: dict) -> float:
    """What a row's image cost: UNet evaluations per image (what users pay for), else its step count."""
    return row.get("unet_calls_per_image") or row["steps"]


def plot_quality_vs_steps(rows: list[dict], path: Path) -> dict | bool:
    """One panel per available metric: value against UNet calls per image (a teacher's CFG step costs two, a
    guided student's one), one line per model (and guidance); FID-like metrics on a log axis (LOG_SCALE).
    Returns {panel title: its y scale} when drawn, False when there is nothing to draw."""
    names = [n for n in QUALITY if any(_BY_NAME[n](r) is not None for r in rows)]
    if not names or len({_cost(r) for r in rows}) < 2:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
    lines = defaultdict(list)
    for r in _order(rows):
        lines[(r["label"], r["guidance"])].append(r)
    several_g = len({g for _, g in lines}) > 1
    for ax, name in zip(axes[0], names):
        for (label, g), pts in lines.items():
            pts = [p for p in pts if _BY_NAME[name](p) is not None]
            if pts:
                ax.plot([_cost(p) for p in pts], [_BY_NAME[name](p) for p in pts], "o-",
                        label=f"{label} (w={g:g})" if several_g else label)
        ax.set(xlabel="UNet calls per image", title=name + (" (log)" if name in LOG_SCALE else ""))
        ax.set_xscale("log", base=2)
        if name in LOG_SCALE:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    scales = {ax.get_title(): ax.get_yscale() for ax in axes[0]}
    plt.close(fig)
    return scales


def plot_tradeoff(rows: list[dict], path: Path) -> bool:
    """FID against CLIP (or toy FID against judge accuracy) over guidance scales, one curve per model x steps."""
    plt = None
    for x_name, y_name in TRADEOFFS:
        curves = defaultdict(list)
        for r in rows:
            if _BY_NAME[x_name](r) is not None and _BY_NAME[y_name](r) is not None:
                curves[(r["label"], r["steps"])].append(r)
        curves = {k: sorted(v, key=lambda r: r["guidance"]) for k, v in curves.items() if len(v) > 1}
        if not curves:
            continue
        plt = plt or _pyplot()
        fig, ax = plt.subplots(figsize=(5, 4))
        for (label, steps), pts in sorted(curves.items()):
            xs, ys = [_BY_NAME[x_name](p) for p in pts], [_BY_NAME[y_name](p) for p in pts]
            ax.plot(xs, ys, "o-", label=f"{label}, {steps} steps")
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"{p['guidance']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=x_name, ylabel=y_name, title=f"{y_name} vs {x_name} over guidance scales")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return True
    return False


def image_grid(entries: list[tuple[str, Path, list[dict]]], path: Path, columns: int = 6) -> bool:
    """One row per model, one column per prompt: the first `columns` (style, index, seed) all runs share."""
    from snapdistill.metrics import image_paths, open_images, row_key

    if len(entries) < 1 or columns < 1:
        return False
    common = set.intersection(*[{row_key(r) for r in rows} for _, _, rows in entries])
    keys = sorted(common)[:columns]
    if not keys:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(entries), len(keys), figsize=(1.8 * len(keys) + 1.5, 1.8 * len(entries)),
                             squeeze=False)
    for i, (name, folder, rows) in enumerate(entries):
        by_key = {row_key(r): r for r in rows}
        picked = [by_key[k] for k in keys]
        for j, (row, im) in enumerate(zip(picked, open_images(image_paths(folder, picked)))):
            ax = axes[i][j]
            ax.imshow(im, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(row["prompt"][:40], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_plots(rows: list[dict], grid: list[tuple[str, Path, list[dict]]], out: Path, *, grid_images: int) -> dict:
    """Write the plots that the rows support; return {name: file name}."""
    out = Path(out)
    main = [r for r in rows if not r.get("sweep")]
    made = {}
    if plot_quality_vs_steps(main, out / "quality_vs_steps.png"):
        made["quality vs UNet calls per image"] = "quality_vs_steps.png"
    if plot_tradeoff(rows, out / "guidance_tradeoff.png"):
        made["FID-CLIP trade-off over guidance"] = "guidance_tradeoff.png"
    if image_grid(grid, out / "grid.png", grid_images):
        made["models on the same prompts and seeds"] = "grid.png"
    return made
