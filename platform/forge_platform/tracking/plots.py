"""Plots people would rather look at than read: the loss of every stage of a campaign."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_loss_per_stage(histories: Mapping[str, Sequence[tuple[int, float]]], path: str | Path,
                        title: str = "Training loss per stage") -> Path:
    """One line per stage, steps laid end to end so a context extension continues its parent."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    offset = 0
    for name, points in histories.items():
        if not points:
            continue
        steps = [offset + step for step, _ in points]
        ax.plot(steps, [loss for _, loss in points], label=name, linewidth=1.4)
        ax.axvline(offset, color="grey", linewidth=0.6, linestyle=":")
        offset = steps[-1]
    ax.set_xlabel("optimizer step (stages laid end to end)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
