"""forge_eval: evaluation suites for forge_models language models, on forge_data's packed shards.

Public surface (the contract with forge_platform, which calls it after each stage):

- `EvalConfig`: the `[eval]` section (which suites, how much each measures);
- `evaluate_model(model, cfg, EvalInputs(val_manifest=..., tokenizer=...)) -> dict[str, float]`;
- `SUITES` (name -> suite function) and `get_suite(name)`, which fails loudly on an unknown name;
- the suites' own functions: `validation_loss`, `phonebook_accuracy`, `make_questions`.

It imports only forge_models, forge_data, torch and the standard library: importing it starts
nothing and pulls in neither Ray, DeepSpeed nor MLflow, so an evaluation runs anywhere a model does.
"""

from forge_eval.config import EvalConfig
from forge_eval.phonebook import PhonebookQuestion, TextTokenizer, make_questions, phonebook_accuracy
from forge_eval.suites import SUITES, EvalInputs, Suite, evaluate_model, get_suite
from forge_eval.validation import validation_loss

__all__ = [
    "SUITES",
    "EvalConfig",
    "EvalInputs",
    "PhonebookQuestion",
    "Suite",
    "TextTokenizer",
    "evaluate_model",
    "get_suite",
    "make_questions",
    "phonebook_accuracy",
    "validation_loss",
]
