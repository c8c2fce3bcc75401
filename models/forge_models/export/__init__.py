"""Export to Hugging Face transformers: the class that reproduces a config, the converted config and
weights, and the folder `AutoModelForCausalLM.from_pretrained` loads (see README.md for the table).

Importing this package never imports transformers; only `write_hf_folder` does, when called.
"""

from forge_models.export.convert import convert_state_dict, hf_config_dict, model_config_from_hf, to_hf
from forge_models.export.folder import write_hf_folder
from forge_models.export.tokenizer import conversion_blocker, write_hf_tokenizer
from forge_models.export.targets import (
    ExportUnsupportedError,
    HFTarget,
    describe_model,
    hf_target,
    matching_preset,
    unsupported_reason,
)

__all__ = [
    "ExportUnsupportedError",
    "HFTarget",
    "conversion_blocker",
    "convert_state_dict",
    "describe_model",
    "hf_config_dict",
    "hf_target",
    "matching_preset",
    "model_config_from_hf",
    "to_hf",
    "unsupported_reason",
    "write_hf_folder",
    "write_hf_tokenizer",
]
