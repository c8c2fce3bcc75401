"""A study's results, read in a minute: per arm the mean over seeds with a 95% confidence interval,
the headline comparisons as paired differences (the same seeds give every arm the same data order),
two plots, and a Markdown page that holds them all with the command that made them.

Intervals are Student t intervals over seeds (n seeds, n - 1 degrees of freedom): with 3 seeds the
half-width is 4.30 standard errors, so only large differences come out as real; with 1 seed there
is no interval (shown as "n/a"), and the page says so.
"""

from __future__ import annotations

import math
import re
import shutil
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from forge_platform.job_config import StudyConfig
from forge_platform.session import JobPlaces
from forge_platform.tracking.plots import evaluation_series, length_axis, pyplot, save_figure

PAGE = "reproduction.md"
RECALL_PLOT = "recall_vs_length.png"
RESETS_PLOT = "document_resets.png"
_PHONEBOOK = re.compile(r"phonebook_(standard|reversed)_(\d+)_accuracy")
_PHONEBOOK_DIGITS = re.compile(r"phonebook_(standard|reversed)_(\d+)_digit_accuracy")
_NIAH = re.compile(r"ruler_niah_single_\w+?_(\d+)_score")  # the mean over depths at one length


@dataclass
class RunResult:
    """One arm trained with one seed, and what its evaluation measured."""

    arm: str
    seed: int
    pattern: str
    document_resets: bool
    num_params: int
    final_loss: float
    run_id: str
    seconds: float
    """The run's own wall time, training and evaluation (runs that train at once overlap)."""
    ran_now: bool = True
    """Trained by this invocation of the study (False: found finished by an earlier one)."""
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The study's own summaries: means over every length and format measured.
        phonebook = [v for k, v in self.metrics.items() if _PHONEBOOK.fullmatch(k)]
        digits = [v for k, v in self.metrics.items() if _PHONEBOOK_DIGITS.fullmatch(k)]
        niah = [v for k, v in self.metrics.items() if _NIAH.fullmatch(k)]
        if phonebook:
            self.metrics.setdefault("phonebook_accuracy_mean", mean(phonebook))
        if digits:  # partial recall, where exact matches are all 0: chance is 0.1 per digit
            self.metrics.setdefault("phonebook_digit_accuracy_mean", mean(digits))
        if niah:
            self.metrics.setdefault("niah_score_mean", mean(niah))
        self.metrics.setdefault("final_train_loss", self.final_loss)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and its 95% confidence half-width (nan with one seed)."""

    mean: float
    half_width: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Estimate":
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return cls(math.nan, math.nan, 0)
        if len(values) == 1:
            return cls(values[0], math.nan, 1)
        from scipy.stats import t  # scipy ships with the platform's dependencies (MLflow's)

        return cls(mean(values), t.ppf(0.975, len(values) - 1) * stdev(values) / math.sqrt(len(values)), len(values))

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    @property
    def drawn_width(self) -> float:
        """The half-width a plot draws: 0 where there is no interval (one seed)."""
        return 0.0 if math.isnan(self.half_width) else self.half_width

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.half_width) and abs(self.mean) > self.half_width


@dataclass
class StudyResults:
    """What `write_results` produced."""

    files: list[Path]
    parent_metrics: dict[str, float]
    summary: str
    comparisons: dict[str, Estimate]


def by_arm(runs: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Runs grouped by arm, arms in the order they ran."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.arm, []).append(run)
    return groups


def estimate(runs: Sequence[RunResult], metric: str) -> Estimate:
    return Estimate.of([r.metrics.get(metric, math.nan) for r in runs])


def paired_difference(runs: Sequence[RunResult], first: str, second: str, metric: str) -> Estimate:
    """`first` minus `second` on `metric`, seed by seed (seeds both arms ran)."""
    a = {r.seed: r.metrics.get(metric, math.nan) for r in runs if r.arm == first}
    b = {r.seed: r.metrics.get(metric, math.nan) for r in runs if r.arm == second}
    return Estimate.of([a[s] - b[s] for s in sorted(a) if s in b])


def write_results(cfg: StudyConfig, runs: Sequence[RunResult], places: JobPlaces, runs_seconds: float,
                  parent_run_id: str = "") -> StudyResults:
    """The plots and the page in the job's results folder (uploaded with an object-store output_dir),
    copied to `cfg.results_page` when set; the per-arm means for the parent run (`parent_run_id`,
    named on the page)."""
    folder = places.local("results")
    files = [plot_recall(runs, cfg.stage.seq_len, folder / RECALL_PLOT)] if _recall_series(runs) else []
    if any(not r.document_resets for r in runs):
        files.append(plot_resets(runs, cfg.stage.seq_len, folder / RESETS_PLOT))
    comparisons = {}
    for text in cfg.comparisons:
        first, second, metric = cfg.comparison(text)
        comparisons[f"{first} vs {second} on {metric}"] = paired_difference(runs, first, second, metric)
    plots = list(files)
    page = folder / PAGE
    page.write_text(results_page(cfg, runs, comparisons, [p.name for p in plots], runs_seconds, parent_run_id),
                    encoding="utf-8")
    files.append(page)
    places.upload(folder)
    if cfg.results_page:
        # Plots named after the page (`<page>_recall_vs_length.png`): pages of several studies share a folder.
        target = Path(cfg.results_page)
        target.parent.mkdir(parents=True, exist_ok=True)
        names = [f"{target.stem}_{p.name}" for p in plots]
        for plot, name in zip(plots, names):
            shutil.copyfile(plot, target.parent / name)
        reading = kept_reading(target)
        target.write_text(results_page(cfg, runs, comparisons, names, runs_seconds, parent_run_id) + reading,
                          encoding="utf-8")
    metrics = {}
    for arm, group in by_arm(runs).items():
        for metric in (cfg.headline_metric, "val_loss", "val_plain_loss", "niah_score_mean"):
            value = estimate(group, metric)
            if not math.isnan(value.mean):
                metrics[f"{arm}.{metric}"] = value.mean
    return StudyResults(files, metrics, summary_table(cfg, runs, comparisons), comparisons)


def _recall_series(runs: Sequence[RunResult], digits: bool = False) -> dict[str, dict[str, dict[int, Estimate]]]:
    """task ('phonebook standard', 'phonebook reversed', 'NIAH') -> arm -> {length: estimate over seeds};
    `digits`: the phonebook tasks' digit accuracy instead (partial recall; chance 0.1)."""
    per_task: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in runs:
        for name, value in run.metrics.items():
            if m := (_PHONEBOOK_DIGITS if digits else _PHONEBOOK).fullmatch(name):
                task, length = f"phonebook {m[1]}", int(m[2])
            elif not digits and (m := _NIAH.fullmatch(name)) and "_depth" not in name:
                task, length = "NIAH (single needle)", int(m[1])
            else:
                continue
            per_task.setdefault(task, {}).setdefault(run.arm, {}).setdefault(length, []).append(value)
    return {task: {arm: {n: Estimate.of(v) for n, v in sorted(points.items())} for arm, points in arms.items()}
            for task, arms in per_task.items()}


def plot_recall(runs: Sequence[RunResult], trained_length: int, path: Path) -> Path:
    """One panel per recall task: accuracy against context length, a line per arm (mean over seeds,
    band: 95% interval), the trained length marked (the paper's Figure 3/7 shape). Phonebook panels
    also draw each arm's digit accuracy, dotted: where every exact score is 0 it still tells the arms
    apart, and shows chance (0.1) for what it is."""
    series = _recall_series(runs)
    digit_series = _recall_series(runs, digits=True)
    plt = pyplot()
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 4.2), dpi=110, squeeze=False)
    for ax, (task, arms) in zip(axes[0], sorted(series.items())):
        lengths: set[int] = set()
        for arm, points in arms.items():
            xs = sorted(points)
            lengths.update(xs)
            ys = [points[x].mean for x in xs]
            line, = ax.plot(xs, ys, marker="o", label=arm, linewidth=1.5)
            ax.fill_between(xs, *accuracy_band([points[x] for x in xs]), color=line.get_color(), alpha=0.15)
            if digit_points := digit_series.get(task, {}).get(arm):
                ax.plot(sorted(digit_points), [digit_points[x].mean for x in sorted(digit_points)], marker=".",
                        linestyle=":", color=line.get_color(), linewidth=1.2)
                lengths.update(digit_points)
        ax.axvline(trained_length, color="grey", linestyle="--", linewidth=0.8)
        length_axis(ax, lengths | {trained_length})
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(task + ("\n(solid: exact; dotted: digits, chance 0.1)" if task in digit_series else ""))
        ax.set_xlabel("context length (tokens); dashed: trained length")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(plt, fig, path)


def accuracy_band(points: Sequence[Estimate]) -> tuple[list[float], list[float]]:
    """The low and high edges of a band of accuracies' 95% intervals, inside [0, 1]: with 3 seeds a
    t interval is 4.3 standard errors wide on each side and runs past what an accuracy can be (the
    page's table keeps the interval as computed)."""
    return [max(0.0, p.mean - p.drawn_width) for p in points], [min(1.0, p.mean + p.drawn_width) for p in points]


def plot_resets(runs: Sequence[RunResult], trained_length: int, path: Path) -> Path:
    """Document resets on vs off: on held-out multi-document rows, how much worse each arm predicts
    when its context holds the documents before (plain streams) than with resets (a bar per arm,
    mean over seeds with its interval), and loss by position on whole held-out documents (a line per
    arm, the trained length marked: past it a Transformer's positions are ones it never trained on)."""
    groups = by_arm(runs)
    plt = pyplot()
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    names = list(groups)
    # Per arm and seed: the same held-out rows scored as plain streams minus scored with resets.
    gaps = [Estimate.of([r.metrics.get("val_plain_loss", math.nan) - r.metrics.get("val_loss", math.nan)
                         for r in groups[a]]) for a in names]
    bars.bar(range(len(names)), [g.mean for g in gaps], width=0.6,
             color=["tab:blue" if groups[a][0].document_resets else "tab:orange" for a in names],
             yerr=[g.drawn_width for g in gaps], capsize=3)
    bars.axhline(0, color="grey", linewidth=0.8)
    bars.set_xticks(range(len(names)))
    bars.set_xticklabels([f"{a}\ntrained with\nresets {'on' if groups[a][0].document_resets else 'off'}"
                          for a in names], fontsize=8)  # three short lines: five arms' labels overlapped on one
    bars.set_ylabel("loss as plain streams - loss with resets")
    bars.set_title("multi-document held-out rows (> 0: other documents hurt)")
    bars.grid(axis="y", alpha=0.3)
    for arm, group in groups.items():
        per_seed = [evaluation_series({arm: r.metrics}).position_loss.get(arm, {}) for r in group]
        starts = sorted(set().union(*per_seed)) if per_seed else []
        if starts:
            lines.plot(starts, [Estimate.of([p.get(s, math.nan) for p in per_seed]).mean for s in starts],
                       marker=".", label=arm, linewidth=1.4)
    lines.axvline(trained_length, color="grey", linestyle="--", linewidth=0.8)
    lines.set_xlabel("position in the document (bucket start, tokens); dashed: trained length")
    lines.set_ylabel("loss (nats per token)")
    lines.set_title("long single documents")
    lines.grid(alpha=0.3)
    lines.legend(fontsize=8)
    return save_figure(plt, fig, path)


COLUMNS = (("params", ""), ("final_train_loss", "train loss"), ("val_loss", "held-out loss"),
           ("val_plain_loss", "held-out loss, plain streams"), ("phonebook_accuracy_mean", "phonebook (mean)"),
           ("phonebook_digit_accuracy_mean", "phonebook digits (mean; chance 0.10)"), ("niah_score_mean", "NIAH (mean)"))
"""The results table's metric columns and their headings; a column no run measured is left out."""


def _columns(cfg: StudyConfig, runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    columns = list(COLUMNS)
    if cfg.headline_metric not in dict(columns):
        columns.append((cfg.headline_metric, cfg.headline_metric))
    return [(metric, label) for metric, label in columns
            if metric == "params" or any(metric in r.metrics for r in runs)]


def _header(cfg: StudyConfig, runs: Sequence[RunResult]) -> list[str]:
    return ["arm", "pattern", "resets", "seeds"] + [label or metric for metric, label in _columns(cfg, runs)]


def _arm_rows(cfg: StudyConfig, runs: Sequence[RunResult]) -> list[list[str]]:
    rows = []
    for arm, group in by_arm(runs).items():
        row = [arm, group[0].pattern, "on" if group[0].document_resets else "off", str(len(group))]
        for metric, _ in _columns(cfg, runs):
            row.append(f"{group[0].num_params / 1e6:.2f}M" if metric == "params" else estimate(group, metric).text())
        rows.append(row)
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _recall_table(runs: Sequence[RunResult]) -> str:
    blocks = [(f"**{task}**, accuracy by context length (tokens)", arms)
              for task, arms in sorted(_recall_series(runs).items())]
    blocks += [(f"**{task}**, digit accuracy by context length (tokens; chance 0.10)", arms)
               for task, arms in sorted(_recall_series(runs, digits=True).items())]
    tables = []
    for title, arms in blocks:
        lengths = sorted({n for points in arms.values() for n in points})
        rows = [[arm] + [points[n].text(2) if n in points else "" for n in lengths] for arm, points in arms.items()]
        tables.append(f"{title}:\n\n" + _table(["arm"] + [str(n) for n in lengths], rows))
    return "\n\n".join(tables)


def _comparison_rows(comparisons: Mapping[str, Estimate]) -> list[list[str]]:
    rows = []
    for name, diff in comparisons.items():
        verdict = ("interval excludes 0" if diff.excludes_zero else
                   "one seed: no interval" if diff.n == 1 else "interval includes 0: not resolved")
        rows.append([name, diff.text(), str(diff.n), verdict])
    return rows


def summary_table(cfg: StudyConfig, runs: Sequence[RunResult], comparisons: Mapping[str, Estimate]) -> str:
    """The results as plain text for the job's log."""
    text = _table(_header(cfg, runs), _arm_rows(cfg, runs))
    if comparisons:
        text += "\n\npaired differences (first arm minus second, seed by seed):\n"
        text += _table(["comparison", "mean ± 95% CI", "seeds", ""], _comparison_rows(comparisons))
    return text


def results_page(cfg: StudyConfig, runs: Sequence[RunResult], comparisons: Mapping[str, Estimate],
                 plots: Sequence[str], runs_seconds: float, parent_run_id: str = "") -> str:
    """The Markdown results page (the reading of the results is written by a person, below it).
    `runs_seconds`: the wall time this invocation spent in the runs (training and evaluation);
    `parent_run_id`: the study's MLflow parent run, where the plots and the page are logged too."""
    stage = cfg.stage
    tokens = stage.train.steps * stage.train.micro_batch_size * stage.train.grad_accum_steps \
        * cfg.parallel.num_workers * stage.seq_len
    command = "python -m " + " ".join(shlex.quote(a) for a in [_job_module()] + sys.argv[1:])
    own = sum(r.seconds for r in runs)
    earlier = sum(not r.ran_now for r in runs)
    at_once = "one run at a time" if cfg.concurrent_runs == 1 else f"{cfg.concurrent_runs} runs at a time"
    where = f"{'one GPU' if cfg.parallel.use_gpu else 'CPU workers'}, {at_once}"
    if earlier == len(runs):  # this invocation trained nothing: its wall time says nothing of the study's
        timing = (f"Every run had finished in an earlier invocation ({where}); their own times add up to "
                  f"{own / 60:.1f} min. This invocation only wrote the page.")
    else:
        timing = (f"The runs took {runs_seconds / 60:.1f} min of wall time ({where}; the runs' own times add up to "
                  f"{own / 60:.1f} min)" + (f"; {earlier} of them had finished in an earlier invocation and were "
                                             "skipped, their own times included in the sum" if earlier else "") + ".")
    parts = [
        f"# {cfg.name}: results",
        "",
        f"Made by `{command}`: {len(cfg.arms)} arms x seeds {cfg.seeds}, each trained {stage.train.steps} steps "
        f"on {_count(tokens)} tokens of rows of {stage.seq_len} tokens (the same rows, in the same order for a "
        f"seed, for every arm), {cfg.practice_documents} recall practice documents in the training text. "
        + timing,
        "",
        "Means over seeds ± the 95% Student t interval"
        + (" (n/a: one seed)." if any(len(g) == 1 for g in by_arm(runs).values()) else "."),
        "",
        _table(_header(cfg, runs), _arm_rows(cfg, runs)),
    ]
    if _recall_series(runs):
        parts += ["", _recall_table(runs)]
    if comparisons:
        parts += ["", "Headline comparisons: the first arm minus the second, seed by seed:", "",
                  _table(["comparison", "mean difference ± 95% CI", "seeds", "reading"], _comparison_rows(comparisons))]
    parts += [""] + [f"![{name}]({name})" for name in plots]
    parent = f"parent `{parent_run_id}`; " if parent_run_id else ""
    parts += ["", f"MLflow runs ({cfg.tracking.experiment}): {parent}one per arm and seed: " + ", ".join(
        f"{r.arm}-seed{r.seed} `{r.run_id}`" for r in runs), ""]
    return "\n".join(parts)


READING = "\n## Reading"


def kept_reading(page: Path) -> str:
    """The part of an existing results page from its `## Reading` heading on: a person's reading of
    the results, kept when the study writes the page again (the numbers above it are replaced)."""
    if not page.is_file():
        return ""
    text = page.read_text(encoding="utf-8")
    return text[text.index(READING):] if READING in text else ""


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


def _job_module() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None and spec.name else "jobs.reproduce"
