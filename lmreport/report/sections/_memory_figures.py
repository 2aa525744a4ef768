"""Figures of the memory section: timelines (estimated by category, measured from snapshots)
and peaks against context length. Pure drawing from record metrics (the section saves them);
no torch."""

from __future__ import annotations

from lmreport.report.plots import new_figure

GIB = 1024**3
CATEGORIES = ("parameters", "optimizer_state", "gradients", "activations", "temporaries")  # stacking order
COLORS = {"parameters": "#4e79a7", "optimizer_state": "#76b7b2", "gradients": "#59a14f",
          "activations": "#f28e2c", "temporaries": "#e15759"}
PHASE_COLORS = ("#bab0ab", "#edc949", "#af7aa1", "#ff9da7", "#9c755f")


def _shade_phases(ax, spans, x_of=lambda v: v) -> None:
    for i, p in enumerate(spans):
        a, b = x_of(p["start"]), x_of(p["end"])
        ax.axvspan(a, b, color=PHASE_COLORS[i % len(PHASE_COLORS)], alpha=0.18, lw=0)
        ax.text((a + b) / 2, 0.98, p["name"], transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=6)


def estimated_timelines(cells: dict[int, dict[str, dict]], title: str):
    """cells[ctx][dtype] = estimated metrics; one row per context, fp32 and bf16 side by side."""
    ctxs = sorted(cells)
    dtypes = ("fp32", "bf16")
    fig, axes = new_figure(nrows=len(ctxs), ncols=2, figsize=(7.0, 1.9 * len(ctxs) + 0.6), squeeze=False,
                           sharey=True)
    for r, ctx in enumerate(ctxs):
        for c, dtype in enumerate(dtypes):
            ax = axes[r][c]
            m = cells[ctx].get(dtype)
            if m is None:
                ax.text(0.5, 0.5, "no estimate", ha="center", va="center", transform=ax.transAxes)
                continue
            tl = m["timeline"]
            ys = [[v / GIB for v in tl[k]] for k in CATEGORIES]
            ax.stackplot(tl["x"], *ys, labels=[k.replace("_", " ") for k in CATEGORIES],
                         colors=[COLORS[k] for k in CATEGORIES], step="post", alpha=0.9)
            _shade_phases(ax, m["phase_spans"])
            ax.plot([m["peak_event"]], [m["peak_bytes"] / GIB], "kv", ms=4)
            ax.set_title(f"context {ctx}, {dtype}: peak {m['peak_bytes'] / GIB:,.2f} GiB", fontsize=8)
            if c == 0:
                ax.set_ylabel("GiB")
            if r == len(ctxs) - 1:
                ax.set_xlabel("allocation/free events of the step")
    axes[0][0].legend(loc="lower right", fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=9)
    return fig


def measured_timeline(m: dict, title: str):
    """One snapshot's active and reserved memory over time, phases shaded, peak marked."""
    fig, ax = new_figure(figsize=(7.0, 2.6))
    _draw_measured(ax, m)
    ax.set_title(title, fontsize=8)
    return fig


def _draw_measured(ax, m: dict) -> None:
    tl = m["timeline"]
    x = tl["x"]
    ax.fill_between(x, [v / GIB for v in tl["active_bytes"]], step="post", color=COLORS["parameters"], alpha=0.7,
                    label="active (allocated)")
    ax.step(x, [v / GIB for v in tl["reserved_bytes"]], where="post", color="k", lw=0.8, ls="--",
            label="reserved (cudaMalloc)")
    if tl["x_unit"] == "ms":
        _shade_phases(ax, [{"name": p["name"], "start": p["start_ms"], "end": p["end_ms"]} for p in m.get("phases", [])])
        if m.get("peak_time_ms") is not None:
            ax.plot([m["peak_time_ms"]], [m["peak_active_bytes"] / GIB], "rv", ms=4)
        ax.set_xlabel("ms since the first recorded event")
    else:
        ax.set_xlabel("trace entry")
    ax.set_ylabel("GiB")
    ax.legend(loc="lower right", fontsize=6)


def measured_timelines(cells: dict[int, dict[str, dict]], title: str):
    ctxs = sorted(cells)
    fig, axes = new_figure(nrows=len(ctxs), ncols=2, figsize=(7.0, 1.9 * len(ctxs) + 0.6), squeeze=False)
    for r, ctx in enumerate(ctxs):
        for c, dtype in enumerate(("fp32", "bf16")):
            ax = axes[r][c]
            m = cells[ctx].get(dtype)
            if m is None:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            _draw_measured(ax, m)
            ax.set_title(f"context {ctx}, {dtype}: peak {m['peak_active_bytes'] / GIB:,.2f} GiB", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def peaks_by_context(series: list[dict]):
    """series: {"label", "ctx": [...], "peak_bytes": [...], "measured": bool}."""
    fig, ax = new_figure(figsize=(6.0, 3.2))
    for s in series:
        style = dict(marker="o", ls="none", ms=6, mfc="none") if s["measured"] else dict(marker=".", ls="-")
        ax.plot(s["ctx"], [v / GIB for v in s["peak_bytes"]], label=s["label"], **style)
    ax.set_xscale("log", base=2)
    ctxs = sorted({c for s in series for c in s["ctx"]})
    ax.set_xticks(ctxs, [str(c) for c in ctxs])
    ax.minorticks_off()
    ax.set_xlabel("context length")
    ax.set_ylabel("peak memory (GiB)")
    ax.legend(fontsize=6, ncol=2)
    return fig
