"""forge_eval: the registry of suites, what each suite reports, and the layering promise (no Ray,
DeepSpeed or MLflow behind `import forge_eval`)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from forge_eval import SUITES, ContinuationScore, EvalConfig, EvalInputs, check_suites_build, evaluate_model, get_suite
from forge_eval.names import name_pool_size
from forge_eval.suite_names import HELD_OUT_SUITES, SUITE_NAMES

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("ray", "deepspeed", "mlflow", "lm_eval", "datasets")  # lm_eval only where its adapter is imported

PROBE = """
import json, sys
exec(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""


def heavy_modules_after(code: str) -> list[str]:
    """Which of Ray, DeepSpeed and MLflow (or their submodules) a fresh interpreter holds after `code`."""
    areas = os.pathsep.join(str(REPO / area) for area in ("evaluation", "models", "data_pipeline"))
    out = subprocess.run([sys.executable, "-c", PROBE, code, *HEAVY], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=areas), cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_forge_eval_imports_no_ray_deepspeed_or_mlflow() -> None:
    # Every module of the package, and forge_data's lazily loaded loader, which validation uses.
    code = ("import forge_eval, forge_eval.config, forge_eval.suites, forge_eval.validation, forge_eval.phonebook\n"
            "import forge_eval.ruler, forge_eval.position_loss, forge_eval.scoring, forge_eval.haystack\n"
            "import forge_eval.checkpoint, forge_eval.lm_eval_suite, forge_eval.answering, forge_eval.names\n"
            "import forge_data; forge_data.PackedShardLoader")
    assert heavy_modules_after(code) == []
    # The probe sees them when they are there (forge_data.pipeline imports Ray only when run, so
    # the positive control imports Ray itself).
    assert heavy_modules_after("import forge_eval, ray") == ["ray"]


def test_an_unknown_suite_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"eval.suites = \['validation', 'niah'\]: .*phonebook, ppl, ruler, validation.*niah"):
        EvalConfig(suites=["validation", "niah"])
    with pytest.raises(ValueError, match=r"eval.suites = 'validation': must be a list of suite names"):
        EvalConfig(suites="validation")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="the suites are: phonebook, ppl, ruler, validation, validation_plain"):
        get_suite("niah")
    assert set(SUITES) == {"validation", "validation_plain", "phonebook", "ruler", "ppl"}


def test_the_names_the_config_accepts_are_the_registry_s() -> None:
    # EvalConfig validates against suite_names (so that it need not import the suites): the two
    # lists must not drift apart, or a config would accept a suite that cannot run.
    assert SUITE_NAMES == tuple(SUITES)
    assert set(HELD_OUT_SUITES) <= set(SUITES)


def test_config_values_are_checked_in_the_one_error_style() -> None:
    with pytest.raises(ValueError, match=r"eval.val_batches = 0: must be >= 1"):
        EvalConfig(val_batches=0)
    pool = name_pool_size()
    with pytest.raises(ValueError, match=rf"eval.phonebook_entries = \[4, 0\]: must each be in \[1, {pool}\]"):
        EvalConfig(phonebook_entries=[4, 0])
    EvalConfig(phonebook_entries=[481, 30_000])  # past the old 480-name pool: a 256K-token book's worth
    with pytest.raises(ValueError, match=r"eval.phonebook_lengths = \[1024, 2000000\]: must each be in \[64, 1048576\]"):
        EvalConfig(phonebook_lengths=[1024, 2_000_000])
    with pytest.raises(ValueError, match=r"eval.ruler_tasks = \['niah_double'\]: must be a list of niah_single"):
        EvalConfig(ruler_tasks=["niah_double"])
    with pytest.raises(ValueError, match=r"eval.answer_mode = 'beam': must be one of generate, teacher_forcing"):
        EvalConfig(answer_mode="beam")
    with pytest.raises(ValueError, match=r"eval.ruler_depths = \[1.5\]: must each be in \[0, 1\]"):
        EvalConfig(ruler_depths=[1.5])
    with pytest.raises(ValueError, match=r"eval.ruler_depths = \[\]: must each be in \[0, 1\] \(at least one\)"):
        EvalConfig(ruler_depths=[])
    with pytest.raises(ValueError, match=r"eval.phonebook_queries = -1: must be >= 0"):
        EvalConfig(phonebook_queries=-1)


def test_validation_and_phonebook_metrics(model, tokenizer_and_manifest, capsys) -> None:
    tokenizer, manifest = tokenizer_and_manifest
    cfg = EvalConfig(val_batches=3, phonebook_entries=[2], phonebook_queries=2)
    metrics = evaluate_model(model, cfg, EvalInputs(val_manifest=manifest, tokenizer=tokenizer))
    assert set(metrics) == {"val_loss", "val_perplexity", "val_tokens", "phonebook_2_accuracy",
                            "phonebook_2_digit_accuracy", "phonebook_2_prompt_tokens"}
    # An untrained model over V pieces scores about ln V nats per token.
    assert abs(metrics["val_loss"] - math.log(tokenizer.vocab_size)) < 1.0
    assert metrics["val_perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert 0 < metrics["val_tokens"] <= 3 * 64
    assert metrics["phonebook_2_accuracy"] in (0.0, 0.5, 1.0)
    assert metrics["phonebook_2_prompt_tokens"] > 10
    # Each suite's wall time, in order, on stderr.
    timings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[eval] ")]
    assert [line.split(":")[0] for line in timings] == ["[eval] validation", "[eval] phonebook"]
    assert all(float(line.split(": ")[1].removesuffix(" s")) >= 0 for line in timings)


def test_suites_run_as_named(model, tokenizer_and_manifest) -> None:
    tokenizer, manifest = tokenizer_and_manifest
    only_validation = evaluate_model(model, EvalConfig(suites=["validation"], val_batches=1),
                                     EvalInputs(val_manifest=manifest, tokenizer=tokenizer))
    assert set(only_validation) == {"val_loss", "val_perplexity", "val_tokens"}
    no_queries = evaluate_model(model, EvalConfig(suites=["phonebook"], phonebook_queries=0),
                                EvalInputs(tokenizer=tokenizer))
    assert no_queries == {}
    # Without a tokenizer Phonebook is skipped, as the platform always did (shards made elsewhere).
    assert evaluate_model(model, EvalConfig(suites=["phonebook"]), EvalInputs(val_manifest=manifest)) == {}
    with pytest.raises(ValueError, match="suite 'validation' needs held-out data"):
        evaluate_model(model, EvalConfig(suites=["validation"]), EvalInputs(tokenizer=tokenizer))


class SilentScorer:
    """Answers nothing: lets a suite build and ask every prompt without running a model."""

    def greedy(self, prompts, max_new_tokens, desc=""):
        return [[] for _ in prompts]

    def score(self, requests, desc=""):
        return [ContinuationScore(0.0, ()) for _ in requests]


def test_the_build_check_refuses_exactly_the_lengths_the_suites_cannot_build(model, tokenizer_and_manifest) -> None:
    """check_suites_build builds what the suites build (every sample, depth, format and Phonebook
    example), so around each suite's shortest length it refuses exactly the lengths where the suite
    itself fails. (It built one sample at one depth and no examples: a demo stage failed in its
    evaluation after training, 'cwe ... a length of 256 tokens is too short', and some lengths that
    work were refused.)"""
    tokenizer, _ = tokenizer_and_manifest
    for suite, lengths in (("phonebook", range(248, 284, 4)), ("ruler", range(372, 400, 4))):
        outcomes = set()
        for length in lengths:
            cfg = EvalConfig(suites=[suite], phonebook_entries=[], phonebook_lengths=[length], phonebook_queries=4,
                             phonebook_examples=2, phonebook_formats=["standard", "reversed"], ruler_lengths=[length],
                             ruler_samples=4, ruler_depths=[0.0, 0.5, 1.0])
            try:
                check_suites_build(tokenizer, cfg)
                checked = True
            except ValueError:
                checked = False
            try:
                evaluate_model(model, cfg, EvalInputs(tokenizer=tokenizer, scorer=SilentScorer(), progress=False))
                built = True
            except ValueError:
                built = False
            assert checked == built, (suite, length, checked, built)
            outcomes.add(built)
        assert outcomes == {True, False}, f"{suite}: the lengths tried do not straddle its shortest length"
