"""Plots people would rather look at than read: the loss of every stage of a campaign, and its
evaluation across stages (Phonebook accuracy vs length, a NIAH depth x length heatmap, held-out
loss by position)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def plot_loss_per_stage(histories: Mapping[str, Sequence[tuple[int, float]]], path: str | Path,
                        title: str = "Training loss per stage") -> Path:
    """One line per stage, steps laid end to end so a context extension continues its parent."""
    plt = pyplot()
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
    return save_figure(plt, fig, path)


# --- Evaluation across a campaign's stages (metric names: forge_eval.suites' docstring) ---

_PHONEBOOK = re.compile(r"phonebook_(standard|reversed)_(\d+)_accuracy")
_NIAH = re.compile(r"ruler_niah_single_(\w+?)_(\d+)_depth(\d+)_score")
_POSITION = re.compile(r"pos_(\d+)_(\d+)_loss")


@dataclass
class EvaluationSeries:
    """What the evaluation plots draw, parsed from each stage's metrics."""

    accuracy: dict[str, dict[int, float]] = field(default_factory=dict)
    """'<stage> (<format>)' -> {book length in tokens: exact-match accuracy}."""
    niah: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    """'<stage> (<haystack>)' -> {(depth percent, length): score}."""
    position_loss: dict[str, dict[int, float]] = field(default_factory=dict)
    """stage -> {bucket start position: loss}."""


def evaluation_series(stage_metrics: Mapping[str, Mapping[str, float]]) -> EvaluationSeries:
    """Sort every stage's evaluation metrics into the three plots' series (stages in the given order)."""
    series = EvaluationSeries()
    for stage, metrics in stage_metrics.items():
        for name, value in metrics.items():
            if m := _PHONEBOOK.fullmatch(name):
                series.accuracy.setdefault(f"{stage} ({m[1]})", {})[int(m[2])] = value
            elif m := _NIAH.fullmatch(name):
                series.niah.setdefault(f"{stage} ({m[1]})", {})[(int(m[3]), int(m[2]))] = value
            elif m := _POSITION.fullmatch(name):
                series.position_loss.setdefault(stage, {})[int(m[1])] = value
    return series


def pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported lazily
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path: str | Path) -> Path:  # noqa: ANN001
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def length_axis(ax, lengths: Sequence[int]) -> None:  # noqa: ANN001
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(lengths))
    ax.set_xticklabels([f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n) for n in sorted(lengths)])


def plot_accuracy_vs_length(accuracy: Mapping[str, Mapping[int, float]], path: str | Path,
                            title: str = "Phonebook accuracy vs context length") -> Path:
    """One line per stage (and format): exact-match accuracy against the book's length in tokens
    (the paper's Figure 7 shape)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    lengths: set[int] = set()
    for name, points in accuracy.items():
        xs = sorted(points)
        lengths.update(xs)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name, linewidth=1.4)
    length_axis(ax, lengths)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("phonebook length (tokens)")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(plt, fig, path)


def plot_niah_heatmap(niah: Mapping[str, Mapping[tuple[int, int], float]], path: str | Path,
                      title: str = "Needle in a haystack: score by depth and length") -> Path:
    """One heatmap per stage (and haystack): needle depth (rows) x context length (columns)."""
    plt = pyplot()
    panels = list(niah.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.2, 3.8), dpi=110, squeeze=False)
    image = None
    for ax, (name, cells) in zip(axes[0], panels):
        depths = sorted({d for d, _ in cells})
        lengths = sorted({n for _, n in cells})
        grid = [[cells.get((d, n), float("nan")) for n in lengths] for d in depths]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths])
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel("needle depth")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="string-match score")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)  # no tight_layout: it fights the shared colour bar
    plt.close(fig)
    return path


def plot_position_loss(position_loss: Mapping[str, Mapping[int, float]], path: str | Path,
                       title: str = "Held-out loss by position") -> Path:
    """One line per stage: loss in each position bucket (does the stage use its context, does it extrapolate)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, points in position_loss.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker=".", label=name, linewidth=1.4)
    ax.set_xlabel("position in the document (bucket start, tokens)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(plt, fig, path)


def plot_campaign_evaluation(stage_metrics: Mapping[str, Mapping[str, float]], out_dir: str | Path,
                             name: str = "") -> list[Path]:
    """The evaluation plots a campaign's metrics have data for (none when they have none)."""
    series = evaluation_series(stage_metrics)
    out_dir = Path(out_dir)
    prefix = f"{name}: " if name else ""
    paths = []
    if series.accuracy:
        paths.append(plot_accuracy_vs_length(series.accuracy, out_dir / "phonebook_accuracy_vs_length.png",
                                             f"{prefix}Phonebook accuracy vs context length"))
    if series.niah:
        paths.append(plot_niah_heatmap(series.niah, out_dir / "niah_depth_length.png",
                                       f"{prefix}needle in a haystack, depth x length"))
    if series.position_loss:
        paths.append(plot_position_loss(series.position_loss, out_dir / "loss_by_position.png",
                                        f"{prefix}held-out loss by position"))
    return paths
