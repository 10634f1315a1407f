"""The benchmark plots: latency against audio length, and accuracy delta against speed-up.

matplotlib is a benchmark dependency only (extra `bench`), imported when a plot is drawn: without it
`plot` draws nothing and says how to get it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], out_dir: Path) -> tuple[list[Path], str | None]:
    """latency.png and (with a baseline) accuracy_vs_speedup.png; (files, note when skipped)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install hubert-export[bench])"
    written = []
    measured = [m for m in results["measurements"] if m["p50_s"] is not None]
    batches = sorted({m["batch"] for m in measured})
    if measured:
        fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
        for ax, batch in zip(axes[0], batches):
            for name in dict.fromkeys(m["subject"] for m in measured):
                points = sorted((m["seconds"], m["p50_s"]) for m in measured if m["subject"] == name
                                and m["batch"] == batch)
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
            ax.set(xlabel="audio length (s)", ylabel="p50 latency (s)", title=f"batch {batch}")
            ax.grid(True, alpha=0.3)
        axes[0][0].legend(fontsize="small")
        fig.tight_layout()
        written.append(out_dir / "latency.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    accuracy = {r["name"]: r["accuracy"]["headline"] for r in results["subjects"]
                if r.get("accuracy") and r["accuracy"]["headline"].get("value") is not None}
    if results["settings"]["baseline"] is None or not accuracy:
        return written, None if written else "plots skipped: no measurement succeeded"
    # One point per subject at the largest smallest-batch shape: the interactive-use case.
    batch = min(batches)
    seconds = max(m["seconds"] for m in measured if m["batch"] == batch)
    points = {m["subject"]: m["speedup"] for m in measured
              if m["batch"] == batch and m["seconds"] == seconds and m["speedup"] is not None}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, head in accuracy.items():
        if name in points:
            ax.scatter(points[name], head["value"])
            ax.annotate(name, (points[name], head["value"]), fontsize="small", xytext=(4, 4),
                        textcoords="offset points")
    metrics = sorted({h["metric"] for h in accuracy.values()})
    ax.set(xlabel=f"speed-up over {results['settings']['baseline']} ({seconds:g} s, batch {batch})",
           ylabel=" / ".join(metrics) + " (parity, worst case)", title="accuracy delta vs speed-up")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(out_dir / "accuracy_vs_speedup.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written, None
