"""Which failures are the user's input, not the platform's: one line and exit code 2, never retried.

A spec that does not load, weights of another model, a checkpoint a run cannot continue (or one
that cannot be evaluated), data that lost more than allowed, a corrupt shard, a token id outside the
vocabulary, a tokenizer SentencePiece cannot train with the settings given: no retry can fix any of
them. The jobs' `main` prints them as `error: ...` and exits 2 (cli.py); inside a Ray Train worker
they are recorded so Ray's retries stop at once (training/trainer.py), and the driver finds them in
the failure Ray Train raises (`worker_input_error`). Anything else is the platform's fault: a
traceback and exit code 1.
"""

from __future__ import annotations

from forge_data.loader import TokenIdRangeError
from forge_data.manifest import TooMuchRejectedError
from forge_data.shards import CorruptShardError
from forge_data.storage import StorageError, StorageUnreachable
from forge_data.tokenizer import TokenizerTrainingError
from forge_eval.checkpoint import CheckpointInputError

from forge_platform.config_loader import ConfigError
from forge_platform.training.checkpoint_files import IncompatibleCheckpointError


class StageInputError(ValueError):
    """A stage's workers failed on the user's input; the message is theirs, prefixed with the stage."""


class InputError(RuntimeError):
    """An earlier attempt of this stage failed on its input; raised at once by every retry."""


INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, IncompatibleCheckpointError, TooMuchRejectedError, CorruptShardError, TokenIdRangeError,
    StageInputError, TokenizerTrainingError, StorageError, CheckpointInputError,
)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StorageUnreachable,)
"""Input errors a retry may cure (an object store that does not answer now): one line on the driver,
but inside a training worker Ray's retries are left to run."""


def worker_input_error(failure: BaseException) -> BaseException | None:
    """The error on the user's input that a Ray Train run's workers failed with, found in the
    `failure` `trainer.fit()` raised on the driver; None when they failed for another reason.

    The driver learns it from the exception itself, not from a file the worker wrote: Ray Train
    carries every worker's exception back to the driver (`WorkerGroupError.worker_failures`) whatever
    node the worker ran on, while the worker's `input_error.json` lies in its own folder, which on a
    cluster with an object-store output_dir is that node's local scratch, out of the driver's reach.
    The exception needs no store either, so it also arrives when the store is what failed. (Ray
    Train before its v2 chains the worker's exception as the cause instead: both are looked at.)
    """
    pending, seen = [failure], set()
    while pending:
        error = pending.pop(0)
        if id(error) in seen:
            continue
        seen.add(id(error))
        wrapped = getattr(error, "cause", None)  # a RayTaskError: the worker's exception is its cause
        if isinstance(wrapped, BaseException):
            pending.append(wrapped)
            continue
        if isinstance(error, InputError) or (isinstance(error, INPUT_ERRORS) and
                                             not isinstance(error, TRANSIENT_ERRORS)):
            return error
        pending.extend(e for e in (getattr(error, "worker_failures", None) or {}).values()
                       if isinstance(e, BaseException))
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return None
