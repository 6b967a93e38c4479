"""`dynaspec train-head`: an EAGLE-3 draft head for any supported target, by self-distillation.

prompts.py   offline prompt sources and the held-out split
record.py    the target answers with the engine; each answer's tapped features are copied out of the
             feature cache in the same pass (no extra target forward)
ttt.py       EAGLE-3's training-time test: the head unrolled on its own outputs, loss at every depth;
             the held-out acceptance estimate
batching.py  length-grouped batches (a batch is padded to its longest example)
trainer.py   the whole recipe: prompts -> record -> AdamW -> head directory + report
command.py   the CLI command's body (registered lazily by dynaspec/cli.py)
"""
