"""Log-probabilities of the committed tokens under the TARGET's distribution, and the top-N alternatives.

What is computed follows vLLM's default (`logprobs_mode="raw_logprobs"`, vllm/v1/sample/sampler.py):
log_softmax of the target model's raw logits row, before temperature, top-k/p, min-p or Gumbel noise, in
float32; per committed token a dict {token id: logprob} holding the top-N tokens of that row and the
committed token itself (so N or N + 1 entries; N = SamplingParams.logprobs, 0: the committed token only).
OpenAI's `logprobs` / `top_logprobs` are built from these by server/logprobs_format.py.

Speculation changes nothing here: a committed token at sequence position t is produced by the target's
row of position t whether it came from plain decoding, an accepted draft, the recovered token or the
bonus token, so its logprob is read from the same row (verifier.py's layout: request i's d_i + 1 rows
are consecutive; its j-th committed token comes from its row j).
"""

from __future__ import annotations

import torch

from dynaspec.spec.verifier import VerifyBatch

TokenLogprobs = dict[int, float]
"""One committed token's entry: {token id: logprob} for the top-N tokens and the committed one."""


def step_logprobs(
    logits: torch.Tensor, batch: VerifyBatch, tokens: list[list[int]]
) -> list[list[TokenLogprobs] | None]:
    """Per verified request, one TokenLogprobs per committed token, or None where it asked for none.

    logits: (sum(d_i + 1), V) the step's target rows, request i's d_i + 1 rows consecutive (as `verify`
        reads them); batch: the step's VerifyBatch (d_i = len(batch.drafts[i]), N = params[i].logprobs);
    tokens[i]: the tokens verify committed for request i (at most d_i + 1; token j from its row j).
    Only the rows of requests that asked are read, with one device-to-host copy.
    """
    wanted = [p.logprobs for p in batch.params]
    asked = [i for i, n in enumerate(wanted) if n is not None and tokens[i]]
    result: list[list[TokenLogprobs] | None] = [None if n is None else [] for n in wanted]
    if not asked:
        return result
    offsets, offset = [], 0
    for draft in batch.drafts:
        offsets.append(offset)
        offset += len(draft) + 1
    device = logits.device
    rows = torch.tensor([offsets[i] + j for i in asked for j in range(len(tokens[i]))], dtype=torch.int64)
    ids = torch.tensor([t for i in asked for t in tokens[i]], dtype=torch.int64)
    logprobs = torch.log_softmax(logits.index_select(0, rows.to(device)).float(), dim=-1)  # (M, V)
    chosen = logprobs.gather(1, ids.to(device).unsqueeze(1))  # (M, 1)
    top = min(max(wanted[i] for i in asked), logprobs.shape[-1])
    packed = [chosen.double()]
    if top > 0:
        values, indices = logprobs.topk(top, dim=-1)  # (M, top) each, best first
        packed += [values.double(), indices.double()]  # ids < 2**53: exact in float64
    host = torch.cat(packed, dim=1).tolist()  # (M, 1 + 2 top): the one host read
    m = 0
    for i in asked:
        n = wanted[i]
        entries = []
        for token in tokens[i]:
            row = host[m]
            m += 1
            entry = {token: row[0]}
            for k in range(min(n, top)):
                entry.setdefault(int(row[1 + top + k]), row[1 + k])
            entries.append(entry)
        result[i] = entries
    return result
