"""Which failures are the user's input, not the platform's: one line and exit code 2, never retried.

A spec that does not load, weights of another model, a checkpoint a run cannot continue, data
that lost more than allowed, a corrupt shard, a token id outside the vocabulary, a tokenizer
SentencePiece cannot train with the settings given: no retry can fix any of them. The jobs' `main` prints them as `error: ...` and exits 2 (cli.py); inside a Ray Train
worker they are recorded so Ray's retries stop at once (training/trainer.py). Anything else is the
platform's fault: a traceback and exit code 1.
"""

from __future__ import annotations

from forge_data.loader import TokenIdRangeError
from forge_data.manifest import TooMuchRejectedError
from forge_data.shards import CorruptShardError
from forge_data.storage import StorageError, StorageUnreachable
from forge_data.tokenizer import TokenizerTrainingError

from forge_platform.config_loader import ConfigError
from forge_platform.training.checkpoint_files import IncompatibleCheckpointError


class StageInputError(ValueError):
    """A stage's workers failed on the user's input; the message is theirs, prefixed with the stage."""


INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, IncompatibleCheckpointError, TooMuchRejectedError, CorruptShardError, TokenIdRangeError,
    StageInputError, TokenizerTrainingError, StorageError,
)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StorageUnreachable,)
"""Input errors a retry may cure (an object store that does not answer now): one line on the driver,
but inside a training worker Ray's retries are left to run."""
