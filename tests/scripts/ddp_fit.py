"""Run under torchrun (or alone): train a small CNN on digits and save the final weights (used by test_distributed).

OBJECTIVE=pgd trains with PGD-AT (random starts) instead of clean cross-entropy."""
import os
import sys

import torch

import robustlib as rl

out, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
torch.set_num_threads(1)
train, _ = rl.data.load("digits", n_train=256)
model = rl.models.build("small_cnn")
objective = rl.objectives.PGDAT(0.1, steps=2) if os.environ.get("OBJECTIVE") == "pgd" else rl.objectives.Standard()
history = rl.train.fit(model, train, objective, epochs=epochs, batch_size=batch, lr=0.05,
                       momentum=0.9, weight_decay=0.0, schedule="cosine", progress=False,
                       checkpoint=sys.argv[4] if len(sys.argv) > 4 else None,
                       eval_fn=lambda m: {"acc": rl.evaluate.accuracy(m, train)},
                       callback=lambda r: sys.exit(0) if r["epoch"] == int(os.environ.get("STOP_AFTER", 0)) else None)
if rl.distributed.is_main():
    torch.save({"model": model.state_dict(), "history": list(history)}, out)
