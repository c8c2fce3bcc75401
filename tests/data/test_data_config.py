"""Config validation: errors name the field, the value and what is allowed; dicts round-trip."""

import re
from dataclasses import asdict

import pytest

from forge_data.config import CleaningConfig, DataPipelineConfig, LongContextConfig, PackingConfig, TokenizerConfig


@pytest.mark.parametrize("build, words", [
    (lambda: PackingConfig(packer="first_fit"), ["data.packing.packer = 'first_fit': must be one of", "best_fit"]),
    (lambda: PackingConfig(seq_len=1), ["data.packing.seq_len = 1: must be >= 2"]),
    (lambda: TokenizerConfig(model_type="wordpiece"), ["data.tokenizer.model_type = 'wordpiece'", "char"]),
    (lambda: TokenizerConfig(vocab_size=300_000), ["data.tokenizer.vocab_size = 300000: must be in [2, 256000]"]),
    (lambda: TokenizerConfig(user_defined_symbols=["<a>", "<a>"]),
     ["data.tokenizer.user_defined_symbols = ['<a>', '<a>']"]),
    (lambda: CleaningConfig(invalid_utf8="ignore"), ["data.cleaning.invalid_utf8 = 'ignore'", "repair"]),
    (lambda: LongContextConfig(upweight_factor=0), ["data.long_context.upweight_factor = 0: must be in [1, 1000]"]),
    (lambda: DataPipelineConfig(format="csv"), ["data.format = 'csv': must be one of", "jsonl"]),
    (lambda: DataPipelineConfig(shard_tokens=10, packing=PackingConfig(seq_len=64)),
     ["data.shard_tokens = 10: must be >= 64"]),
])
def test_invalid_values_raise_naming_field_value_and_allowed(build, words):
    with pytest.raises(ValueError) as err:
        build()
    for word in words:
        assert word in str(err.value)
    # the one error style of every package's config: `data.section.field = value: must be ...`
    assert re.match(r"^data\.[\w.]+ = .+: must be ", str(err.value)), str(err.value)


def test_config_rebuilds_from_plain_dicts():
    """The platform's TOML loader builds nested dataclasses from dicts of plain values."""
    cfg = DataPipelineConfig(inputs=["a", "b"], output_dir="o", packing=PackingConfig(seq_len=128, packer="best_fit"))
    data = asdict(cfg)
    nested = {"tokenizer": TokenizerConfig, "packing": PackingConfig, "cleaning": CleaningConfig,
              "long_context": LongContextConfig}
    rebuilt = DataPipelineConfig(**{k: nested[k](**v) if k in nested else v for k, v in data.items()})
    assert rebuilt == cfg


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import forge_data.config as module

    tree = ast.parse(inspect.getsource(module))
    for node in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        body = node.body
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                    f"{node.name}.{stmt.target.id} has no docstring")
