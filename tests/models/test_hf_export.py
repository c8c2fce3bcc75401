"""Export to Hugging Face transformers: each family that maps loads with AutoModelForCausalLM on CPU
and computes our logits (fp32, max-abs 1e-4) and our greedy tokens; the one preset that maps to no
class is refused naming the value; configs survive the round trip through config.json."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from forge_models import MLPConfig, ModelConfig, build_model, generate, get_preset
from forge_models.export import (
    ExportUnsupportedError,
    convert_state_dict,
    hf_config_dict,
    hf_target,
    matching_preset,
    model_config_from_hf,
    unsupported_reason,
    write_hf_folder,
)
from forge_models.export.targets import architecture_fields

transformers = pytest.importorskip("transformers")

VOCAB = 97
SEQ_LEN = 21  # crosses the debug presets' Mamba-2 chunk of 8 twice, and is not a multiple of it

# One tiny model per transformers class, plus the cases that class must get right: a hybrid with
# M, * and + layers in an order no preset has, and tied embeddings (NemotronH ties nothing).
CASES = {
    "nemotron_h": lambda: dataclasses.replace(get_preset("hybrid-debug"), pattern="M*+M+*M+"),
    "nemotron_h_tied": lambda: dataclasses.replace(get_preset("hybrid-debug"), tie_embeddings=True),
    "mamba2": lambda: get_preset("mamba2-debug"),
    "mamba2_no_conv_bias": lambda: dataclasses.replace(
        get_preset("mamba2-debug"), mamba2=dataclasses.replace(get_preset("mamba2-debug").mamba2, conv_bias=False)),
    "mamba": lambda: get_preset("mamba-debug"),
    "llama": lambda: get_preset("transformer-debug"),
    "llama_tied": lambda: dataclasses.replace(get_preset("transformer-debug"), tie_embeddings=True),
}
CLASSES = {"nemotron_h": "NemotronHForCausalLM", "nemotron_h_tied": "NemotronHForCausalLM",
           "mamba2": "Mamba2ForCausalLM", "mamba2_no_conv_bias": "Mamba2ForCausalLM", "mamba": "MambaForCausalLM", "llama": "LlamaForCausalLM",
           "llama_tied": "LlamaForCausalLM"}


def _tiny(case: str) -> ModelConfig:
    return dataclasses.replace(CASES[case](), vocab_size=VOCAB, kernels="reference")


def _trained_like(cfg: ModelConfig) -> torch.nn.Module:
    """A random model whose norms, biases and SSM parameters are not at their init values, so a
    weight that lands in the wrong place (or not at all) changes the logits."""
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "bias", "D")):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Each case's model and its export folder (written once per module)."""
    torch.manual_seed(0)
    out = {}
    for case in CASES:
        model = _trained_like(_tiny(case))
        out[case] = (model, write_hf_folder(model.config, model.state_dict(), tmp_path_factory.mktemp(case)))
    return out


def _load(folder: Path) -> torch.nn.Module:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    # Every tensor of the export is used and none is left to transformers' random init.
    assert not any(info.values()), info
    return model.float().eval()


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_our_logits_and_greedy_tokens(case: str, exports: dict) -> None:
    ours, folder = exports[case]
    theirs = _load(folder)
    assert type(theirs).__name__ == CLASSES[case]
    ids = torch.randint(0, VOCAB, (2, SEQ_LEN))
    with torch.no_grad():
        our_logits, their_logits = ours(ids), theirs(ids).logits
    assert our_logits.abs().max() > 0.1  # logits that vary, so agreeing means something
    assert (our_logits - their_logits).abs().max().item() < 1e-4
    prompt = ids[:1, :9]
    our_tokens = generate(ours, prompt, max_new_tokens=6)
    their_tokens = theirs.generate(prompt, max_new_tokens=6, do_sample=False)
    assert our_tokens.tolist() == their_tokens.tolist()


def test_tied_head_is_a_copy_for_nemotron_h_and_tied_for_llama(exports: dict) -> None:
    nemotron, llama = _load(exports["nemotron_h_tied"][1]), _load(exports["llama_tied"][1])
    assert nemotron.lm_head.weight.data_ptr() != nemotron.model.embeddings.weight.data_ptr()
    assert torch.equal(nemotron.lm_head.weight, nemotron.model.embeddings.weight)
    assert llama.lm_head.weight.data_ptr() == llama.model.embed_tokens.weight.data_ptr()
    notes = json.loads((exports["nemotron_h_tied"][1] / "forge_export.json").read_text())["notes"]
    assert any("tied" in note for note in notes)


def test_every_preset_maps_or_is_refused_with_its_reason() -> None:
    """The table in models/forge_models/README.md, as the code decides it."""
    expected = {
        "transformer-8b": "LlamaForCausalLM", "transformer-2b-bench": "LlamaForCausalLM",
        "transformer-debug": "LlamaForCausalLM", "mamba-8b": "MambaForCausalLM", "mamba-debug": "MambaForCausalLM",
        "mamba2-8b": "Mamba2ForCausalLM", "mamba2-debug": "Mamba2ForCausalLM",
        "hybrid-8b": "NemotronHForCausalLM", "hybrid-130m": "NemotronHForCausalLM",
        "hybrid-840m": "NemotronHForCausalLM", "hybrid-2b-bench": "NemotronHForCausalLM",
        "hybrid-debug": "NemotronHForCausalLM", "hybrid-2b-anchor": None,
    }
    for name, architecture in expected.items():
        cfg = get_preset(name)
        reason = unsupported_reason(cfg)
        if architecture is None:
            assert reason is not None and "model.mlp.activation = 'swiglu'" in reason, name
        else:
            assert reason is None and hf_target(cfg).architecture == architecture, name


@pytest.mark.parametrize(("change", "value"), [
    ({"mlp": MLPConfig(activation="swiglu", hidden_size=96)}, "model.mlp.activation = 'swiglu'"),
    ({"pattern": "M*+m+"}, "model.pattern = 'M*+m+'"),
    ({"attention": dataclasses.replace(get_preset("hybrid-debug").attention, rope=True)},
     "model.attention.rope = True"),
])
def test_refusal_names_the_value_and_writes_nothing(change: dict, value: str, tmp_path: Path) -> None:
    cfg = dataclasses.replace(_tiny("nemotron_h"), **change)
    model = build_model(cfg)
    with pytest.raises(ExportUnsupportedError, match=value.replace("*", r"\*").replace("+", r"\+")):
        write_hf_folder(cfg, model.state_dict(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_transformer_without_rope_or_gate_is_refused_unless_nemotron_h_fits() -> None:
    transformer = _tiny("llama")
    no_rope = dataclasses.replace(transformer, attention=dataclasses.replace(transformer.attention, rope=False))
    with pytest.raises(ExportUnsupportedError, match="model.attention.rope = False"):
        hf_target(no_rope)
    with pytest.raises(ExportUnsupportedError, match="model.mlp.activation = 'gelu'"):
        hf_target(dataclasses.replace(transformer, mlp=MLPConfig(activation="gelu")))
    # Neither RoPE nor a gate: NemotronH's attention and MLP are exactly that.
    assert hf_target(dataclasses.replace(no_rope, mlp=MLPConfig(activation="gelu"))).model_type == "nemotron_h"


def test_weights_of_another_model_are_refused() -> None:
    cfg = _tiny("nemotron_h")
    state = build_model(cfg).state_dict()
    with pytest.raises(ValueError, match="lack 'layers.0.mixer.A_log'"):
        convert_state_dict(cfg, {k: v for k, v in state.items() if k != "layers.0.mixer.A_log"})
    with pytest.raises(ValueError, match="no place for"):
        convert_state_dict(cfg, {**state, "layers.99.norm.weight": torch.ones(64)})


@pytest.mark.parametrize("case", list(CASES))
def test_config_round_trip(case: str, exports: dict) -> None:
    """Ours -> config.json -> transformers' config class -> ours: the same architecture."""
    ours, folder = exports[case]
    loaded = transformers.AutoConfig.from_pretrained(folder).to_dict()
    back = model_config_from_hf(loaded)
    expected = dataclasses.replace(ours.config, tie_embeddings=ours.config.tie_embeddings and case != "nemotron_h_tied")
    assert architecture_fields(back) == architecture_fields(expected)
    assert back.vocab_size == VOCAB
    # And the dict the export wrote is the one the config class read (no field dropped or renamed).
    written = hf_config_dict(ours.config)
    assert {k: loaded[k] for k in written if k not in ("time_step_limit",)} == \
        {k: v for k, v in written.items() if k != "time_step_limit"}


def test_matching_preset_ignores_vocabulary_and_run_time_switches() -> None:
    cfg = dataclasses.replace(get_preset("hybrid-debug"), vocab_size=2048, kernels="reference", init_std=0.01)
    assert matching_preset(cfg) == "hybrid-debug"
    assert matching_preset(dataclasses.replace(cfg, pattern="MM")) is None


def _train_tokenizer(tmp_path: Path, model_type: str) -> Path:
    """A small SentencePiece model trained with forge_data's own trainer arguments."""
    spm = pytest.importorskip("sentencepiece")
    from forge_data.config import TokenizerConfig
    from forge_data.tokenizer import sentencepiece_trainer_args

    args = sentencepiece_trainer_args(TokenizerConfig(model_type=model_type, vocab_size=1000, show_progress=False))
    lines = [line for text in _SAMPLE_TEXTS for line in text.splitlines() if line]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / model_type), **args)
    return tmp_path / f"{model_type}.model"


# Python sources (indentation, runs of symbols, digits) and a few mixed scripts, special pieces
# written as text, and whitespace at the edges.
_STDLIB = Path(sysconfig.get_paths()["stdlib"])
_SAMPLE_TEXTS = [(_STDLIB / name).read_text() for name in ("textwrap.py", "shlex.py", "fnmatch.py")] + [
    "héllo wörld — 日本語 ☃ 🙂 </s> <s> <unk> <pad>", "  two leading, two trailing  ", "a\tb\n\nc 12345 67.89"]


def test_bpe_tokenizer_is_exported_exactly(tmp_path: Path) -> None:
    spm = pytest.importorskip("sentencepiece")
    model_file = _train_tokenizer(tmp_path, "bpe")
    cfg = _tiny("mamba2")
    folder = write_hf_folder(cfg, build_model(cfg).state_dict(), tmp_path / "out", tokenizer_model=model_file)
    assert (folder / "tokenizer.model").read_bytes() == model_file.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    texts = [p for text in _SAMPLE_TEXTS for p in text.split("\n\n")]
    mismatched = [t for t in texts if theirs(t, add_special_tokens=False)["input_ids"] != sp.encode(t)]
    assert not mismatched, mismatched[:3]
    assert all(theirs.decode(sp.encode(t)) == sp.decode(sp.encode(t)) for t in texts)
    config = json.loads((folder / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == \
        (sp.bos_id(), sp.eos_id(), sp.pad_id()) == (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)


def test_unigram_tokenizer_ships_unconverted_with_the_reason(tmp_path: Path) -> None:
    model_file = _train_tokenizer(tmp_path, "unigram")
    cfg = _tiny("mamba2")
    folder = write_hf_folder(cfg, build_model(cfg).state_dict(), tmp_path / "out", tokenizer_model=model_file)
    assert (folder / "tokenizer.model").read_bytes() == model_file.read_bytes()
    assert not (folder / "tokenizer.json").exists()
    notes = json.loads((folder / "forge_export.json").read_text())["notes"]
    assert any("not converted" in note and "unigram" in note for note in notes), notes


def test_forge_models_imports_no_transformers() -> None:
    code = ("import sys; import forge_models, forge_models.export; "
            "assert 'transformers' not in sys.modules and 'safetensors' not in sys.modules; "
            "assert not any(m.startswith('forge_platform') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2] / "models")
