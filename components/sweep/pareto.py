"""The sweep's chart: each candidate's release score against the release file's flash size, its TFLite-Micro
arena and its latency, the device profile's budgets drawn as lines, the Pareto front joined, the released
candidate ringed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from components.sweep.decision import Outcome, pareto_front  # noqa: E402

KIB = 1024
PANELS = (
    ("flash_bytes", "release file (KiB)", KIB),
    ("arena_bytes", "TFLite-Micro arena (KiB)", KIB),
    ("latency_ms", "latency (ms, this machine)", 1),
)


def pareto_chart(
    outcomes: list[Outcome],
    target: str,
    budgets: dict[str, float | None],
    score_name: str,
    chosen: Outcome | None,
    path: Path,
) -> Path:
    """`budgets`: the gate in force per cost (flash_bytes, arena_bytes, latency_ms); None: no limit."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for axis, (cost, label, unit) in zip(axes, PANELS, strict=True):
        points = [o for o in outcomes if o.score is not None and getattr(o, cost) is not None]
        for o in points:
            colour = "tab:green" if o.passed else "tab:red"
            axis.scatter(getattr(o, cost) / unit, o.score, color=colour, s=40, zorder=3)
            axis.annotate(
                o.name.rsplit("-", 1)[-1],
                (getattr(o, cost) / unit, o.score),
                fontsize=8,
                xytext=(4, 3),
                textcoords="offset points",
            )
        front = pareto_front(points, cost)
        if len(front) > 1:
            axis.plot(
                [getattr(o, cost) / unit for o in front],
                [o.score for o in front],
                color="grey",
                linestyle="--",
                linewidth=1,
                zorder=2,
                label="Pareto front",
            )
        if budgets.get(cost) is not None:
            axis.axvline(budgets[cost] / unit, color="tab:orange", linewidth=1.5, label=f"{target} budget")
        if chosen is not None and chosen in points:
            axis.scatter(
                getattr(chosen, cost) / unit,
                chosen.score,
                s=180,
                facecolors="none",
                edgecolors="black",
                linewidths=1.5,
                zorder=4,
                label=f"released: {chosen.name}",
            )
        if cost == "latency_ms" and points:
            fmt, runtime = points[0].latency_cell
            label = f"{fmt} on {runtime}, median ms (this machine)"
        axis.set_xlabel(label)
        axis.set_ylabel(f"test {score_name} (release file, LiteRT)")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")  # not over a point
    figure.suptitle(f"Sweep candidates for {target} (green: pass every gate; red: miss one)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
