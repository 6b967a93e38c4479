"""Recorded train-head examples on disk, so that training can go on in a later run.

Answering the prompts takes the first part of a time-limited run (on the GPU machines here one call may
last 10 minutes), so a run can save what it recorded (`--save-examples`) and a later run train on it
(`--load-examples`), continuing the head the first wrote (`--init-head`) instead of answering again.
One safetensors file: per example its token ids (int64), the target's tapped features (the recorded
dtype) and, when recorded, its stream after the last layer (soft labels); the metadata holds the target's name, the tapped layers, the prompt lengths and which examples are
held out, so a continued run keeps the same held-out split.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dynaspec.train_head.record import Example

_METADATA_KEY = "dynaspec_train_head_examples"


def save_examples(path: str | Path, train: list[Example], held: list[Example], target: str,
                  layers: list[int]) -> Path:
    """Write the training and held-out examples of a target (features of `layers`) to one file."""
    from safetensors.torch import save_file

    examples = train + held
    tensors: dict[str, torch.Tensor] = {}
    for i, example in enumerate(examples):
        tensors[f"tokens.{i}"] = torch.tensor(example.token_ids, dtype=torch.int64)
        tensors[f"features.{i}"] = example.features.contiguous()
        if example.final is not None:
            tensors[f"final.{i}"] = example.final.contiguous()
    meta = {"target": target, "layers": list(layers), "prompt_lens": [e.prompt_len for e in examples],
            "held_out": [False] * len(train) + [True] * len(held)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={_METADATA_KEY: json.dumps(meta)})
    return out


def load_examples(path: str | Path, target: str, layers: list[int]) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples of a file save_examples wrote for this target and these tapped layers;
    ValueError saying what does not match."""
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise ValueError(f"--load-examples {str(source)!r}: no such file (write one with --save-examples)")
    with safe_open(str(source), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(_METADATA_KEY)
        if raw is None:
            raise ValueError(f"{source} was not written by `dynaspec train-head --save-examples`")
        meta = json.loads(raw)
        if meta["target"] != target:
            raise ValueError(f"{source} holds answers of {meta['target']!r}, not of the target {target!r}")
        if list(meta["layers"]) != list(layers):
            raise ValueError(f"{source} holds the features of layers {meta['layers']}, not of {list(layers)} "
                             "(give --layers as the run that saved them, or the head of --init-head taps)")
        train: list[Example] = []
        held: list[Example] = []
        names = set(handle.keys())
        for i, (prompt_len, is_held) in enumerate(zip(meta["prompt_lens"], meta["held_out"])):
            final = handle.get_tensor(f"final.{i}") if f"final.{i}" in names else None
            example = Example(handle.get_tensor(f"tokens.{i}").tolist(), int(prompt_len),
                              handle.get_tensor(f"features.{i}"), final)
            (held if is_held else train).append(example)
    return train, held
