"""Fast inference: packed prefill, a static decode step captured in CUDA graphs, and its traffic model.

`InferenceEngine` is the entry point; `forge_models.generate.generate` stays the simple API and the
oracle the engine is tested against (the same tokens for greedy decoding).
"""

from forge_models.inference.engine import DEFAULT_BUCKETS, InferenceEngine
from forge_models.inference.sampling import SamplingConfig

__all__ = ["DEFAULT_BUCKETS", "InferenceEngine", "SamplingConfig"]
