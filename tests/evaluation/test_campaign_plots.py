"""The campaign's evaluation plots: the suites' real metric names parse into the three series
(accuracy vs length per stage, NIAH depth x length, loss by position), and each is drawn; lengths
follow each stage's seq_len when eval.length_multiples is set."""

from __future__ import annotations

import matplotlib.image
import pytest
from forge_eval import EvalConfig, EvalInputs, evaluate_model
from forge_platform.tracking.plots import evaluation_series, plot_campaign_evaluation

from tests.evaluation.test_phonebook import BookReader
from tests.evaluation.test_ruler import NeedleReader


def test_lengths_follow_each_stages_seq_len() -> None:
    cfg = EvalConfig(suites=["phonebook", "ruler", "ppl"], length_multiples=[0.5, 1, 2], ppl_bucket=64)
    short, long = cfg.for_length(256), cfg.for_length(1024)
    assert short.phonebook_lengths == short.ruler_lengths == [128, 256, 512] and short.ppl_max_position == 512
    assert long.phonebook_lengths == [512, 1024, 2048] and long.ppl_max_position == 2048 and long.ppl_bucket == 64
    # at least 8 buckets over the range (a 1024-token bucket over 256 positions plotted one point per stage)
    assert EvalConfig(length_multiples=[1]).for_length(256).ppl_bucket == 32
    assert EvalConfig().for_length(4096) == EvalConfig()  # nothing asked: nothing changes
    with pytest.raises(ValueError, match=r"eval.length_multiples = \[0\]: must each be in \(0, 64\]"):
        EvalConfig(length_multiples=[0])


def test_the_suites_metrics_become_three_plots(model, tokenizer_and_manifest, tmp_path) -> None:
    tokenizer, manifest = tokenizer_and_manifest
    stage_metrics = {}
    for stage, seq_len, scorer in (("pretrain-256", 256, BookReader(tokenizer, knows=False)),
                                   ("extend-512", 512, BookReader(tokenizer, knows=True))):
        cfg = EvalConfig(suites=["phonebook", "ppl"], phonebook_entries=[], phonebook_queries=2, ppl_bucket=16,
                         ppl_rows=2, length_multiples=[1, 2]).for_length(seq_len)
        stage_metrics[stage] = evaluate_model(model, cfg, EvalInputs(tokenizer=tokenizer, val_manifest=manifest,
                                                                     scorer=scorer, progress=False))
        ruler = EvalConfig(suites=["ruler"], ruler_tasks=["niah_single"], ruler_samples=1, ruler_depths=[0.0, 1.0],
                           length_multiples=[1, 2]).for_length(seq_len * 2)
        stage_metrics[stage] |= evaluate_model(model, ruler, EvalInputs(tokenizer=tokenizer,
                                                                        scorer=NeedleReader(tokenizer), progress=False))
    series = evaluation_series(stage_metrics)
    assert series.accuracy == {"pretrain-256 (standard)": {256: 0.0, 512: 0.0},
                               "extend-512 (standard)": {512: 1.0, 1024: 1.0}}
    assert series.niah["extend-512 (filler)"] == {(0, 1024): 1.0, (100, 1024): 1.0, (0, 2048): 1.0, (100, 2048): 1.0}
    assert sorted(series.position_loss["pretrain-256"]) == [0, 16, 32, 48]  # the fixture's rows are 64 tokens
    paths = plot_campaign_evaluation(stage_metrics, tmp_path, "demo")
    assert [p.name for p in paths] == ["phonebook_accuracy_vs_length.png", "niah_depth_length.png",
                                       "loss_by_position.png"]
    for path in paths:
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels.std() > 0.05  # a drawn figure, not blank
    assert plot_campaign_evaluation({"s": {"val_loss": 3.0}}, tmp_path / "none") == []
