"""Write an export folder that `transformers.AutoModelForCausalLM.from_pretrained` loads.

    config.json          the transformers config (written by its own config class, so it validates)
    model.safetensors    the converted weights, in the dtypes they came in
    tokenizer.model      the SentencePiece model, when one is given, copied as is
    tokenizer.json       the same as a transformers tokenizer (with tokenizer_config.json), only
                         where the conversion is exact (tokenizer.py: BPE with identity
                         normalization); otherwise the reason is among the notes
    forge_export.json    where it came from: our model config, the preset, the target class, notes

The tokenizer's bos / eos / pad ids are written into config.json either way.

transformers, safetensors and sentencepiece are imported inside the functions: importing
forge_models never imports them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from forge_models.config import ModelConfig
from forge_models.export.convert import DEFAULT_MAX_POSITIONS, to_hf
from forge_models.export.targets import describe_model, hf_target, matching_preset
from forge_models.export.tokenizer import conversion_blocker, write_hf_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"
PROVENANCE_FILE = "forge_export.json"

TOKENIZER_NOT_CONVERTED = ("tokenizer.model (SentencePiece, load it with sentencepiece.SentencePieceProcessor) is "
                           "not converted to a transformers tokenizer: {reason}")


def special_token_ids(tokenizer_model: str | Path) -> dict[str, int | None]:
    """bos / eos / pad ids of a SentencePiece model (None where it has none), in config.json's names."""
    import sentencepiece as spm  # lazy: only an export with a tokenizer needs it

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    ids = {"bos_token_id": sp.bos_id(), "eos_token_id": sp.eos_id(), "pad_token_id": sp.pad_id()}
    return {name: (i if i >= 0 else None) for name, i in ids.items()}


def write_hf_folder(cfg: ModelConfig, state: Mapping[str, torch.Tensor], out_dir: str | Path,
                    tokenizer_model: str | Path | None = None,
                    max_positions: int = DEFAULT_MAX_POSITIONS) -> Path:
    """Export our config and consolidated weights to `out_dir` (created) for transformers; returns it.

    Raises ExportUnsupportedError (a ValueError naming the model and the config value) when no
    transformers class reproduces `cfg`, before anything is written."""
    from transformers import AutoConfig  # lazy: forge_models never imports transformers at module level
    from safetensors.torch import save_file

    target = hf_target(cfg)
    hf_config, hf_state = to_hf(cfg, state, max_positions)
    if tokenizer_model is not None:
        if not Path(tokenizer_model).is_file():
            raise FileNotFoundError(f"tokenizer model {tokenizer_model} does not exist")
        hf_config.update(special_token_ids(tokenizer_model))
    model_type = hf_config.pop("model_type")
    config = AutoConfig.for_model(model_type, **hf_config)
    dtypes = {t.dtype for t in hf_state.values()}
    # The dtype the weights mostly are (the Mamba parameters may stay fp32 in a bf16 export).
    config.dtype = torch.bfloat16 if torch.bfloat16 in dtypes else torch.float32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(hf_state, out / WEIGHTS_FILE, metadata={"format": "pt"})
    notes = [target.note] if target.note else []
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, out / TOKENIZER_FILE)
        reason = conversion_blocker(tokenizer_model)
        if reason is None:
            write_hf_tokenizer(tokenizer_model, out)
        else:
            notes.append(TOKENIZER_NOT_CONVERTED.format(reason=reason))
    provenance = {"forge_model_config": dataclasses.asdict(cfg), "preset": matching_preset(cfg),
                  "model": describe_model(cfg), "architecture": target.architecture, "notes": notes}
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return out
