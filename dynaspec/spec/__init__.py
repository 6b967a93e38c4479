"""Speculative decoding: configs, drafters, verification, the per-step draft-length policy, stats."""

from dynaspec.spec.config import (
    DraftTargetDecodingConfig,
    NGramDecodingConfig,
    SpeculativeConfig,
    parse_draft_len_schedule,
    parse_speculative_config,
)
from dynaspec.spec.drafter import DraftProposal, Drafter
from dynaspec.spec.ngram import NGramDrafter
from dynaspec.spec.policy import DraftLenPolicy, DraftLenSchedule
from dynaspec.spec.stats import SpecStats
from dynaspec.spec.verifier import VerifyOutput, greedy_accept, verify

__all__ = [
    "DraftLenPolicy",
    "DraftLenSchedule",
    "DraftProposal",
    "DraftTargetDecodingConfig",
    "Drafter",
    "NGramDecodingConfig",
    "NGramDrafter",
    "SpecStats",
    "SpeculativeConfig",
    "VerifyOutput",
    "greedy_accept",
    "parse_draft_len_schedule",
    "parse_speculative_config",
    "verify",
]
