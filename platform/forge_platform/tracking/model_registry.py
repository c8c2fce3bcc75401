"""A campaign's final weights as a version of an MLflow registered model, with its lineage.

At the end of a campaign the last stage's checkpoint is gathered into one folder and logged as the
artifact `model/` of the campaign's parent run:

    model/model.pt            the consolidated fp32 weights
    model/model_config.json   the model's full config
    model/meta.json           where training stood, and what produced it
    model/tokenizer.model     the SentencePiece model the data was tokenized with
    model/hf/                 the same as a Hugging Face transformers folder, where the model has
                              a transformers class (else the version's `forge.hf_export` tag says why not)

That folder becomes a new version of the registered model `tracking.registered_model` (default:
the campaign's name). The version's tags name what made it (`lineage_tags`): the parent run, every
stage's run and checkpoint, the stages' data manifests (artifacts of their runs) and the config hash.

Weights larger than `MAX_COPIED_WEIGHTS_BYTES` whose checkpoint is on an object store are not
copied: the version's source is the checkpoint itself (its `forge.weights` tag names the file).

Both calls go through `MlflowRuns`: while the server is down they are queued with the rest of the
campaign's calls (the folder is copied into the spill folder) and made when it answers, in order.
Any other failure is a warning naming the checkpoint: the campaign has trained by then.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from forge_data import storage
from forge_data.tokenizer import MODEL_FILE as TOKENIZER_FILE

from forge_platform.config_loader import config_hash
from forge_platform.training.checkpoint_files import META_FILE, MODEL_CONFIG_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from forge_platform.job_config import CampaignConfig
    from forge_platform.stage import StageOutcome
    from forge_platform.tracking.runs import MlflowRuns, NullRuns

MODEL_ARTIFACT_PATH = "model"
"""Where the parent run keeps the registered weights (the version's source)."""
CHECKPOINT_FILES = (WEIGHTS_FILE, MODEL_CONFIG_FILE, META_FILE)
"""What of the final checkpoint a model version needs (not the optimizer state under state/)."""
MAX_COPIED_WEIGHTS_BYTES = 2 << 30
"""Weights up to 2 GiB are copied into the parent run's `model/`; larger ones on an object store
are registered where the checkpoint keeps them (the version's source is the checkpoint's URI, its
`model/` then holds the config, metadata and tokenizer only)."""


def registered_model_name(cfg: CampaignConfig) -> str:
    """`tracking.registered_model`, or the campaign's name with the characters MLflow refuses replaced."""
    return cfg.tracking.registered_model or cfg.name.replace("/", "-").replace(":", "-")


def lineage_tags(cfg: CampaignConfig, parent_run_id: str, stages: Sequence[StageOutcome]) -> dict[str, str]:
    """The model version's tags: which runs, checkpoints, data and config produced the weights."""
    tags = {
        "forge.campaign": cfg.name,
        "forge.parent_run_id": parent_run_id,
        "forge.config_hash": config_hash(cfg),
        "forge.stages": ",".join(s.name for s in stages),
    }
    for stage in stages:
        tags[f"forge.stage.{stage.name}.run_id"] = stage.run_id
        tags[f"forge.stage.{stage.name}.checkpoint"] = str(stage.checkpoint_dir or "")
        # The manifests each stage trained and evaluated on are artifacts of its run (stage.py).
        tags[f"forge.stage.{stage.name}.data"] = f"runs:/{stage.run_id}/data"
    return tags


def register_campaign_model(cfg: CampaignConfig, parent_run_id: str, stages: Sequence[StageOutcome],
                            runs: MlflowRuns | NullRuns) -> str:
    """Log the final stage's weights on the parent run and register them; returns the model's name
    ('' when nothing is registered: tracking is off MLflow, no stage left a checkpoint, or it failed).

    The campaign has trained by now: a failure here is a warning naming the checkpoint, never the
    campaign's failure (a tracking outage is no failure: the calls are queued)."""
    final = stages[-1] if stages else None
    if not runs.tracking_uri or final is None or final.checkpoint_dir is None:
        return ""
    try:
        return _register(cfg, parent_run_id, stages, final, runs)
    except Exception as err:  # noqa: BLE001 - the weights are safe in the checkpoint; say so and finish
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        print(f"warning: the final weights of campaign {cfg.name!r} were not registered in MLflow ({reason}); "
              f"they are in {final.checkpoint_dir}", flush=True)
        return ""


def _register(cfg: CampaignConfig, parent_run_id: str, stages: Sequence[StageOutcome], final: StageOutcome,
              runs: MlflowRuns | NullRuns) -> str:
    name = registered_model_name(cfg)
    checkpoint = str(final.checkpoint_dir)
    tags = lineage_tags(cfg, parent_run_id, stages)
    weights = storage.join(checkpoint, WEIGHTS_FILE)
    # A cluster's billions of parameters stay where their checkpoint is (the version points there):
    # copying them through the driver's disk and the tracking server would double tens of GB.
    in_place = storage.is_uri(checkpoint) and (storage.file_size(weights) or 0) > MAX_COPIED_WEIGHTS_BYTES
    with tempfile.TemporaryDirectory(prefix="forge-model-") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT_PATH
        tags["forge.hf_export"] = gather_model_folder(checkpoint, tokenizer_location(cfg), folder,
                                                      with_weights=not in_place)
        runs.log_artifact(parent_run_id, str(folder))
    tags["forge.weights"] = weights if in_place else f"{MODEL_ARTIFACT_PATH}/{WEIGHTS_FILE}"
    where = checkpoint if in_place else f"the artifact {MODEL_ARTIFACT_PATH}/ of its parent run {parent_run_id}"
    description = (f"Final weights of campaign {cfg.name!r} (stage {final.name!r}), from {where}; checkpoint "
                   f"{checkpoint}. Stages: " + ", ".join(f"{s.name} (run {s.run_id})" for s in stages))
    runs.register_model(parent_run_id, MODEL_ARTIFACT_PATH, name, tags, description,
                        source=checkpoint if in_place else "")
    print(f"MLflow registered model {name!r}: a new version from {where} (stage {final.name!r})", flush=True)
    return name


def tokenizer_location(cfg: CampaignConfig) -> str:
    """Where the campaign's tokenizer is: the configured model, or the one it trained in output_dir."""
    given = cfg.data.tokenizer.model_path
    if given:
        return given if given.endswith(TOKENIZER_FILE) else storage.join(given, TOKENIZER_FILE)
    return storage.join(cfg.output_dir, "tokenizer", TOKENIZER_FILE)


def gather_model_folder(checkpoint: str, tokenizer: str, folder: Path, with_weights: bool = True) -> str:
    """Copy the checkpoint's model files and the tokenizer into `folder` (local disk or object
    store alike), and add the Hugging Face export under `hf/` where one exists.

    Returns what became of the export: 'hf/' or the reason there is none."""
    folder.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if with_weights or name != WEIGHTS_FILE:
            copy_file(storage.join(checkpoint, name), folder / name)
    copy_file(tokenizer, folder / TOKENIZER_FILE)
    if not with_weights:
        return f"none: the weights stay in {checkpoint} (python -m jobs.export writes the folder)"
    from forge_platform.hf_export import ExportConfig, run_export  # torch and the export tables: only here

    try:
        run_export(ExportConfig(checkpoint=str(folder), out=str(folder / "hf"), tokenizer=str(folder / TOKENIZER_FILE)))
    except ValueError as err:  # no transformers class reproduces this model: the weights are registered anyway
        shutil.rmtree(folder / "hf", ignore_errors=True)
        return f"none: {str(err).splitlines()[0]}"
    return "hf/"


def copy_file(location: str, dest: Path) -> None:
    """One file from a local path or an object-store URI to `dest`."""
    if storage.is_uri(location):
        dest.write_bytes(storage.read_bytes(location))
    else:
        shutil.copy2(location, dest)

