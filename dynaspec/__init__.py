"""dynaspec: speculative decoding whose draft length is chosen at run time.

Public API only; everything else is internal. The names are imported on first use (PEP 562), so that
`import dynaspec.cli` (and `dynaspec --help`) does not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynaspec.config import EngineConfig
    from dynaspec.llm import LLM
    from dynaspec.outputs import RequestOutput
    from dynaspec.sampling_params import SamplingParams
    from dynaspec.spec.config import DraftTargetDecodingConfig, EagleDecodingConfig, NGramDecodingConfig

_HOME = {
    "LLM": "dynaspec.llm",
    "SamplingParams": "dynaspec.sampling_params",
    "RequestOutput": "dynaspec.outputs",
    "EngineConfig": "dynaspec.config",
    "NGramDecodingConfig": "dynaspec.spec.config",
    "DraftTargetDecodingConfig": "dynaspec.spec.config",
    "EagleDecodingConfig": "dynaspec.spec.config",
}
__all__ = list(_HOME)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name not in _HOME:
        raise AttributeError(f"module 'dynaspec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
