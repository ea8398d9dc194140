"""The bar panels the benchmark plots share: bars with a label above each, optionally with error
bars from the interquartile range of timing statistics. Imports matplotlib (Agg) on first use."""
from __future__ import annotations

from typing import Optional, Sequence


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(ax, x: Sequence, heights: Sequence[float], colors, labels: Sequence[str], *, width: float = 0.8,
         tops: Optional[Sequence[float]] = None, scale: Optional[float] = None, bold: Sequence[bool] = (),
         fontsize: float = 8, boxed: bool = True, **bar_kw):
    """Bars at ``x`` of ``heights``, ``labels[i]`` just above ``tops[i]`` (default the bar's
    height; offset by 2 % of ``scale``, default the highest top), bold where ``bold[i]``, on a
    white box unless not ``boxed``; NaN heights get no label. ``bar_kw`` go to ``ax.bar``
    (``yerr``, ``label``, ``hatch``, ...). Returns the bars."""
    tops = list(heights) if tops is None else list(tops)
    scale = max([t for t in tops if t == t] or [1.0]) if scale is None else scale
    drawn = ax.bar(x, heights, width, color=colors, edgecolor=bar_kw.pop("edgecolor", "black"),
                   linewidth=bar_kw.pop("linewidth", 0.6), **bar_kw)
    for i, (bar, top, label) in enumerate(zip(drawn, tops, labels)):
        if top == top:
            ax.text(bar.get_x() + bar.get_width() / 2, top + 0.02 * scale, label, ha="center", va="bottom",
                    fontsize=fontsize, zorder=5, fontweight="bold" if i < len(bold) and bold[i] else "normal",
                    bbox=dict(facecolor="white", edgecolor="none", pad=0.8) if boxed else None)
    return drawn


def iqr_bars(ax, x: Sequence, stats: Sequence[dict], unit: str, colors, labels: Sequence[str], **kw):
    """:func:`bars` of ``stats[i][f"median_{unit}"]`` with error bars from ``q25`` to ``q75``
    (the keys :func:`runkit.bench.timing.summarize` writes), the labels above the ``q75``."""
    med = [s[f"median_{unit}"] for s in stats]
    q25, q75 = [s[f"q25_{unit}"] for s in stats], [s[f"q75_{unit}"] for s in stats]
    return bars(ax, x, med, colors, labels, tops=q75, capsize=kw.pop("capsize", 4),
                yerr=[[m - lo for m, lo in zip(med, q25)], [hi - m for m, hi in zip(med, q75)]], **kw)
