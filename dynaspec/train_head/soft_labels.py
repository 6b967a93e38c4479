"""The target's own next-token distribution as the head's training labels (knowledge distillation, Hinton et al.
2015; EAGLE-3's heads are trained on the target's distribution as SpecForge runs it: the target's probabilities
over the draft vocabulary's tokens, `target_p`, against the head's log-softmax).

A sampled answer's next token is one draw of that distribution (temperature 0.8 for the training answers here):
as a hard label it says nothing about the other likely tokens and is, for ~1 in 5 positions, not the token
greedy decoding will verify. The distribution itself costs one lm_head product per answer position at training
time, from the target's residual stream after its last layer, recorded beside the tapped features in the same
engine pass (the final norm's fused add stores it, as it stores any tapped layer: models/feature_tap.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynaspec.models.eagle_head import EagleHead

_CHUNK_ROWS = 1024  # rows of full-vocabulary logits at a time (1024 x 152k float32: 0.6 GB)


def final_layer(num_layers: int) -> int:
    """The tap index of the residual stream after the target's last decoder layer (what its final norm reads)."""
    return num_layers - 1


@torch.no_grad()
def target_log_probs(head: EagleHead, target: torch.nn.Module, final: torch.Tensor) -> torch.Tensor:
    """final (N, H): the target's stream after its last layer at N positions -> (N, head vocabulary) float32 log
    probabilities of the target's next token there: the target's full-vocabulary log-softmax, at the head's
    draft-vocabulary columns (mass outside the draft vocabulary is left out, as SpecForge's target_p leaves it)."""
    dtype = target.model.norm.weight.dtype
    out = []
    for rows in final.split(_CHUNK_ROWS):
        logits = target.compute_logits(target.model.norm(rows.to(dtype))).float()  # (n, lm_head width)
        log_probs = torch.log_softmax(logits, dim=-1)
        out.append(log_probs if head.lm_head is None else log_probs.index_select(1, head.draft_to_target))
    return torch.cat(out) if out else final.new_zeros((0, 0), dtype=torch.float32)


def soft_cross_entropy(logits: torch.Tensor, target_log_probs: torch.Tensor) -> torch.Tensor:
    """Sum over rows of -sum_v p_target(v) log q(v): logits (N, V) the head's, target_log_probs (N, V) (torch's
    cross-entropy with class probabilities as the target: no (N, V) log-softmax of the head kept apart)."""
    return F.cross_entropy(logits, target_log_probs.exp(), reduction="sum")
