"""The reproduction study (jobs.reproduce): its spec, its statistics and results page, and one
reduced run end to end on CPU workers (two arms, two seeds: resets on and off)."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
from forge_eval import questions_of_length
from forge_eval.practice import PracticeMix, associative_recall, practice_documents
from forge_models import build_model
from forge_platform.job_config import StudyConfig, load_job_config
from forge_platform.study_report import (Estimate, RunResult, accuracy_band, kept_reading, paired_difference,
                                         results_page)

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "jobs" / "specs" / "reproduce_recall.toml"
CPU_SPEC = REPO / "jobs" / "specs" / "reproduce_recall_cpu.toml"


def _assert_matched_sizes(cfg: StudyConfig) -> None:
    sizes = {arm.name: build_model(dataclasses.replace(arm.model, vocab_size=cfg.data.tokenizer.vocab_size),
                                   device="meta").num_parameters() for arm in cfg.arms}
    mean = sum(sizes.values()) / len(sizes)
    assert all(abs(n / mean - 1) <= 0.10 for n in sizes.values()), sizes  # the issue's +-10%


def test_the_shipped_study_compares_models_of_matched_size() -> None:
    cfg = load_job_config(StudyConfig, SPEC, [])
    _assert_matched_sizes(cfg)
    patterns = {arm.name: arm.model.pattern for arm in cfg.arms}
    assert set(patterns["mamba2"]) == {"M"} and "M" not in patterns["transformer"]
    hybrid = patterns["hybrid"]
    assert hybrid.count("*") / len(hybrid) < 0.10  # about the paper's 8% attention layers
    # The resets arms are the same models trained as plain packing, on the same seeds.
    arms = {arm.name: arm for arm in cfg.arms}
    for plain in ("hybrid-plain", "mamba2-plain"):
        assert not arms[plain].document_resets and arms[plain].model == arms[plain.removesuffix("-plain")].model
    assert len(cfg.seeds) >= 3 and max(cfg.stage.eval.length_multiples) >= 4


def test_the_laptop_study_compares_models_of_matched_size() -> None:
    cfg = load_job_config(StudyConfig, REPO / "jobs" / "specs" / "reproduce_recall_laptop.toml", [])
    _assert_matched_sizes(cfg)
    assert {arm.name for arm in cfg.arms} == {"mamba2", "transformer", "hybrid"}


@pytest.mark.parametrize("override, message", [
    (["--comparisons", '["hybrid vs nothing"]'], "comparisons: 'hybrid vs nothing' must be"),
    (["--seeds", "[0, 0]"], "seeds = [0, 0]: must be distinct"),
    (["--stage.init_from_previous", "true"], "a study trains from scratch"),
    (["--concurrent_runs", "0"], "concurrent_runs = 0: must be >= 1"),
    (["--concurrent_runs", "2", "--parallel.use_gpu", "true", "--parallel.num_workers", "2"],
     "runs that share a GPU need parallel.num_workers = 1"),
    (["--parallel.gpu_share", "1.5"], "parallel.gpu_share = 1.5: must be in"),
    (["--parallel.gpu_share", "0.5", "--parallel.num_workers", "2"], "a share of a GPU needs num_workers = 1"),
])
def test_bad_study_specs_are_refused(override: list[str], message: str) -> None:
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_job_config(StudyConfig, CPU_SPEC, override)


def test_concurrent_runs_on_a_gpu_each_reserve_their_share() -> None:
    cfg = load_job_config(StudyConfig, CPU_SPEC, ["--concurrent_runs", "4"])
    assert cfg.run_parallel() == cfg.parallel  # CPU workers: nothing to share
    on_gpu = load_job_config(StudyConfig, CPU_SPEC, ["--concurrent_runs", "4", "--parallel.use_gpu", "true"])
    assert on_gpu.run_parallel().gpu_share == 0.25 and on_gpu.parallel.gpu_share == 1.0


def test_practice_documents_are_seeded_and_never_the_questions_asked() -> None:
    first = list(practice_documents(50, seed=3))
    assert first == list(practice_documents(50, seed=3)) and first != list(practice_documents(50, seed=4))
    assert any(d.startswith("Phonebook:") for d in first) and any(d.startswith("Remember:") for d in first)
    assert any(d.startswith("Find the phone number") for d in first)  # the reversed format too

    class Chars:  # a character tokenizer: sizes the suite's books without a trained model
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    asked = {q.answer for q in questions_of_length(Chars(), 4000, 4, seed=0)}
    trained = "".join(practice_documents(400, seed=1000))
    assert asked and not any(number in trained for number in asked)
    with pytest.raises(ValueError, match=r"practice.pairs = \[1, 4\]"):
        PracticeMix(pairs=[1, 4])


def test_associative_recall_answers_from_its_own_list() -> None:
    text = associative_recall(random.Random(0), num_pairs=12, num_queries=30)
    listed, lookups = text.split("\nRecall:\n")
    pairs = dict(item.split(" ") for item in listed.removeprefix("Remember: ").rstrip(".").split(", "))
    assert len(pairs) == 12
    for line in lookups.strip().splitlines():
        key, value = line.split("? ")
        assert pairs[key] == value


def _run(arm: str, seed: int, accuracy: float, resets: bool = True) -> RunResult:
    return RunResult(arm=arm, seed=seed, pattern="M*", document_resets=resets, num_params=1000, final_loss=2.0,
                     run_id=f"{arm}{seed}", seconds=1.0,
                     metrics={"phonebook_standard_512_accuracy": accuracy, "phonebook_reversed_512_accuracy": 0.0,
                              "phonebook_standard_512_digit_accuracy": accuracy, "phonebook_reversed_512_digit_accuracy": 0.1,
                              "ruler_niah_single_filler_512_score": accuracy})


def test_intervals_are_student_t_and_comparisons_are_paired_by_seed() -> None:
    est = Estimate.of([1.0, 2.0, 3.0])
    assert est.mean == 2.0 and est.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(Estimate.of([5.0]).half_width) and Estimate.of([5.0]).text() == "5.000"
    runs = [_run("a", 0, 0.5), _run("a", 1, 0.9), _run("a", 2, 0.7),
            _run("b", 2, 0.6), _run("b", 0, 0.4), _run("b", 1, 0.8)]
    assert runs[0].metrics["phonebook_accuracy_mean"] == 0.25  # the mean over formats and lengths
    assert runs[0].metrics["phonebook_digit_accuracy_mean"] == pytest.approx(0.3)
    diff = paired_difference(runs, "a", "b", "phonebook_accuracy_mean")
    # Paired: every seed's difference is 0.05, so the interval is 0 wide; unpaired it would be ~0.5 wide.
    assert diff.n == 3 and diff.mean == pytest.approx(0.05) and diff.half_width == pytest.approx(0.0, abs=1e-12)
    assert diff.excludes_zero


def test_accuracy_bands_stay_between_0_and_1() -> None:
    # Three seeds at 1, 1 and 0.7: the t interval runs to 1.33; a band drawn there is no accuracy.
    points = [Estimate.of([1.0, 1.0, 0.7]), Estimate.of([0.0, 0.0, 0.1]), Estimate.of([0.5])]
    low, high = accuracy_band(points)
    assert points[0].mean + points[0].half_width > 1.0 and high[0] == 1.0
    assert low[0] == pytest.approx(points[0].mean - points[0].half_width)
    assert low[1] == 0.0 and high[1] == pytest.approx(points[1].mean + points[1].half_width)
    assert low[2] == high[2] == 0.5  # one seed: no interval, no band


def test_the_page_keeps_a_persons_reading(tmp_path: Path) -> None:
    page = tmp_path / "reproduction.md"
    assert kept_reading(page) == ""
    page.write_text("# old numbers\n\n## Reading\nThe hybrid wins.\n")
    assert kept_reading(page) == "\n## Reading\nThe hybrid wins.\n"
    cfg = load_job_config(StudyConfig, CPU_SPEC, [])
    runs = [_run("hybrid", 0, 0.5), _run("hybrid", 1, 0.7), _run("hybrid-plain", 0, 0.3, False),
            _run("hybrid-plain", 1, 0.6, False)]
    text = results_page(cfg, runs, {"hybrid vs hybrid-plain on x": paired_difference(
        runs, "hybrid", "hybrid-plain", "phonebook_accuracy_mean")}, ["recall_vs_length.png"], 0.0, "p123")
    assert "Means over seeds ± the 95% Student t interval.\n" in text  # two seeds each: every mean has one
    assert "parent `p123`; one per arm and seed: hybrid-seed0 `hybrid0`" in text
    one_seed = results_page(cfg, runs[:1] + runs[2:3], {}, [], 0.0)
    assert "interval (n/a: one seed)." in one_seed and "parent" not in one_seed
    assert "**phonebook standard**, digit accuracy by context length (tokens; chance 0.10):\n\n| arm | 512 |" in text
    assert "| hybrid | 0.60 ± " in text.split("**phonebook standard**, digit accuracy")[1]  # seeds 0.5 and 0.7
    assert "phonebook digits (mean; chance 0.10) |" in text.splitlines()[next(
        i for i, line in enumerate(text.splitlines()) if line.startswith("| arm |"))]
    assert "| hybrid-plain | M* | off | 2 |" in text and "![recall_vs_length.png](recall_vs_length.png)" in text
    assert "hybrid vs hybrid-plain on x | 0.075 ± " in text


def test_a_page_rewritten_from_finished_runs_does_not_claim_their_wall_time() -> None:
    cfg = load_job_config(StudyConfig, CPU_SPEC, [])
    runs = [dataclasses.replace(_run("hybrid", seed, 0.5), seconds=60.0, ran_now=False) for seed in (0, 1)]
    text = results_page(cfg, runs, {}, [], 0.0)
    assert "0.0 min of wall time" not in text
    assert "Every run had finished in an earlier invocation (CPU workers, one run at a time); their own times " \
           "add up to 2.0 min. This invocation only wrote the page." in text
    runs[0].ran_now = True  # one trained now: the invocation's wall time is the study's again
    assert "The runs took 1.0 min of wall time" in results_page(cfg, runs, {}, [], 60.0)


@pytest.mark.slow
def test_a_reduced_study_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU spec with two arms (the hybrid with resets on and off) and two seeds, two runs at a time:
    four child runs under one parent in a real MLflow server, the results page with its plots,
    intervals over seeds."""
    import time

    import mlflow
    from forge_platform import stage
    from forge_platform.study import run_study
    from forge_platform.tracking.mlflow_server import local_mlflow_server

    # Runs train at once, but evaluate one at a time (Triton's autotuner is not thread-safe): record
    # when each evaluation ran.
    spans, evaluate = [], stage.evaluate_checkpoint

    def timed_evaluate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.monotonic()
        try:
            return evaluate(*args, **kwargs)
        finally:
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(stage, "evaluate_checkpoint", timed_evaluate)
    with local_mlflow_server(tmp_path / "mlflow") as server:  # outlives the job, to look at its runs
        _run_and_check(tmp_path, server.uri, mlflow, run_study)
    spans.sort()
    assert len(spans) == 4 and all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def _run_and_check(tmp_path: Path, uri: str, mlflow, run_study) -> None:  # noqa: ANN001
    cfg = load_job_config(StudyConfig, CPU_SPEC, [
        "--tracking.uri", uri,
        # Many short practice documents, so many packed rows hold document boundaries; the play's
        # held-out part is one long document for loss by position past the trained length.
        "--output_dir", str(tmp_path / "study"), "--practice_documents", "2000", "--corpus.stdlib_files", "3",
        "--comparisons", '["hybrid vs hybrid-plain", "hybrid vs hybrid-plain on val_plain_loss"]',
        "--results_page", str(tmp_path / "docs" / "reproduction.md"), "--concurrent_runs", "2"])
    cfg = dataclasses.replace(cfg, arms=[a for a in cfg.arms if a.name in ("hybrid", "hybrid-plain")])
    outcome = run_study(cfg)

    runs = {(r.arm, r.seed): r for r in outcome.runs}
    assert sorted(runs) == [("hybrid", 0), ("hybrid", 1), ("hybrid-plain", 0), ("hybrid-plain", 1)]
    for seed in (0, 1):  # same weights and rows for a seed: only the resets differ, and they reach training
        on, off = runs[("hybrid", seed)], runs[("hybrid-plain", seed)]
        assert on.final_loss != off.final_loss and math.isfinite(on.final_loss)
        assert {"val_loss", "val_plain_loss", "phonebook_accuracy_mean", "niah_score_mean"} <= set(on.metrics)
        assert on.metrics["pos_256_320_tokens"] > 0  # loss by position past twice the trained 128 tokens
    assert all(e.n == 2 and not math.isnan(e.half_width) for e in outcome.results.comparisons.values())
    # Two at a time: the runs' own wall times add up to well over the study's (one at a time: equal).
    assert sum(r.seconds for r in outcome.runs) > 1.3 * outcome.runs_seconds

    page = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "| hybrid-plain | M+M*+M+ | off | 2 |" in page and "(CPU workers, 2 runs at a time;" in page
    for plot in ("recall_vs_length.png", "document_resets.png"):
        assert (tmp_path / "docs" / f"reproduction_{plot}").stat().st_size > 10_000  # named after the page
        assert f"![reproduction_{plot}](reproduction_{plot})" in page
        assert (tmp_path / "study" / "results" / plot).is_file()

    client = mlflow.MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == ["hybrid-plain-seed0", "hybrid-plain-seed1",
                                                         "hybrid-seed0", "hybrid-seed1"]
    assert {c.data.tags["forge.document_resets"] for c in children} == {"true", "false"}
    assert "hybrid.phonebook_accuracy_mean" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id, "results")}
    assert artifacts == {"results/reproduction.md", "results/recall_vs_length.png", "results/document_resets.png"}
