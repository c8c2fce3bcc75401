"""forge_eval: evaluation suites for forge_models language models, on forge_data's packed shards.

Public surface (the contract with forge_platform, which calls it after each stage):

- `EvalConfig`: the `[eval]` section (which suites, how much each measures);
- `evaluate_model(model, cfg, EvalInputs(val_manifest=..., tokenizer=...)) -> dict[str, float]`;
- `SUITES` (name -> suite function: validation, phonebook, ruler, ppl) and `get_suite(name)`, which
  fails loudly on an unknown name;
- `Scorer` / `ModelScorer`: the one narrow interface suites ask a model through;
- the suites' own functions: `validation_loss`, `make_questions`, `questions_of_length`,
  `make_samples` (RULER), `loss_by_position`.

It imports only forge_models, forge_data, torch, tqdm and the standard library: importing it starts
nothing and pulls in neither Ray, DeepSpeed nor MLflow, so an evaluation runs anywhere a model does.
The lm-eval-harness adapter (`forge_eval.lm_eval_adapter`) is imported only by those who use it.
"""

from forge_eval.config import EvalConfig
from forge_eval.phonebook import PhonebookQuestion, make_questions, questions_of_length, score_number
from forge_eval.position_loss import loss_by_position
from forge_eval.prompts import TextTokenizer, UnencodableTextError
from forge_eval.ruler import RulerSample, make_samples, string_match_all
from forge_eval.scoring import ContinuationScore, ModelScorer, Scorer
from forge_eval.inputs import EvalInputs
from forge_eval.suites import SUITES, Suite, check_suites_build, evaluate_model, get_suite
from forge_eval.validation import validation_loss

__all__ = [
    "SUITES",
    "ContinuationScore",
    "EvalConfig",
    "EvalInputs",
    "ModelScorer",
    "PhonebookQuestion",
    "RulerSample",
    "Scorer",
    "Suite",
    "TextTokenizer",
    "UnencodableTextError",
    "check_suites_build",
    "evaluate_model",
    "get_suite",
    "loss_by_position",
    "make_questions",
    "make_samples",
    "questions_of_length",
    "score_number",
    "string_match_all",
    "validation_loss",
]
