"""dynaspec: speculative decoding whose draft length is chosen at run time.

Public API only; everything else is internal.
"""

from dynaspec.config import EngineConfig
from dynaspec.llm import LLM
from dynaspec.outputs import RequestOutput
from dynaspec.sampling_params import SamplingParams
from dynaspec.spec.config import DraftTargetDecodingConfig, NGramDecodingConfig

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutput",
    "EngineConfig",
    "NGramDecodingConfig",
    "DraftTargetDecodingConfig",
]
__version__ = "0.1.0"
