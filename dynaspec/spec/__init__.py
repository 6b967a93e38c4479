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
from dynaspec.spec.policy import DraftLenPolicy, StepOutcome
from dynaspec.spec.schedule_policy import DraftLenSchedule, SchedulePolicy
from dynaspec.spec.stats import SpecStats
from dynaspec.spec.verifier import VerifyBatch, VerifyOutput, greedy_accept, rejection_sample, verify

__all__ = [
    "DraftLenPolicy",
    "DraftLenSchedule",
    "DraftProposal",
    "DraftTargetDecodingConfig",
    "Drafter",
    "NGramDecodingConfig",
    "NGramDrafter",
    "SchedulePolicy",
    "SpecStats",
    "SpeculativeConfig",
    "StepOutcome",
    "VerifyBatch",
    "VerifyOutput",
    "rejection_sample",
    "greedy_accept",
    "parse_draft_len_schedule",
    "parse_speculative_config",
    "verify",
]
