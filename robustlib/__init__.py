"""robustlib: building blocks for efficient robust training (data pruning for AT, MixTrain).

    import robustlib as rl
    train, test = rl.data.load("digits")
    model = rl.models.build("mnist_small")
    history = rl.train.fit(model, train, rl.objectives.Standard(), epochs=5)
    rl.evaluate.robustness(model, test, eps=0.1)
"""
from . import (allocator, attacks, bounds, checkpoints, checks, claims, conv_kernels, data, distributed, evaluate,  # noqa: F401
               memory, models, objectives, plot, precision, presets, pruning, pruning_study, reproduce, runs, scores, seeds,
               train)

__version__ = "0.1.0"
