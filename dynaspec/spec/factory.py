"""Builds the drafter a speculative config asks for: one table from config type to builder, so the
engine never branches on the drafter's type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dynaspec.models.loader import LoadedModel, load_model
from dynaspec.spec.config import DraftTargetDecodingConfig, EagleDecodingConfig, NGramDecodingConfig
from dynaspec.spec.draft_model import DraftModelDrafter, check_same_vocabulary
from dynaspec.spec.drafter import Drafter, NoDrafter
from dynaspec.spec.ngram import NGramDrafter


@dataclass
class DrafterContext:
    target: LoadedModel
    dtype: torch.dtype
    device: torch.device
    seed: int
    cache_dir: str | None
    progress: Callable | None = None


def _ngram(config: NGramDecodingConfig, ctx: DrafterContext) -> Drafter:
    return NGramDrafter(config)


def _draft_model(config: DraftTargetDecodingConfig, ctx: DrafterContext) -> Drafter:
    draft = load_model(
        config.speculative_model, dtype=ctx.dtype, device=ctx.device, progress=ctx.progress, cache_dir=ctx.cache_dir
    )
    check_same_vocabulary(ctx.target, draft)
    return DraftModelDrafter(draft, ctx.dtype, ctx.device, int(ctx.target.model.vocab_size), ctx.seed)


def _eagle(config: EagleDecodingConfig, ctx: DrafterContext) -> Drafter:
    from dynaspec.models.eagle_head import load_head
    from dynaspec.spec.eagle import EagleDrafter

    target = ctx.target
    head = load_head(config.speculative_model, target.hf_config, target.name, ctx.dtype, ctx.device)
    wanted = config.eagle3_layers_to_capture
    if wanted is not None and list(wanted) != list(head.layers_to_capture):
        raise ValueError(
            f"eagle3_layers_to_capture {list(wanted)} differs from the layers the head in "
            f"{config.speculative_model!r} was trained on, {list(head.layers_to_capture)}: drop the option or use those"
        )
    return EagleDrafter(head, target, ctx.dtype, ctx.device, ctx.seed)


_BUILDERS: dict[type, Callable[..., Drafter]] = {
    NGramDecodingConfig: _ngram,
    DraftTargetDecodingConfig: _draft_model,
    EagleDecodingConfig: _eagle,
}


def build_drafter(config, ctx: DrafterContext) -> Drafter:
    """The drafter of a speculative config (None: no speculation, a NoDrafter)."""
    if config is None:
        return NoDrafter()
    builder = _BUILDERS.get(type(config))
    if builder is None:
        known = ", ".join(t.__name__ for t in _BUILDERS)
        raise TypeError(f"unsupported speculative_config {type(config).__name__}; use one of: {known}")
    return builder(config, ctx)
