"""An objective part whose loss is NaN on every token, named in recipes by import path
(``objective.surrogate={type: tests.trainer.nan_parts:NaNSurrogate}``) to test the divergence guard."""

from rlkit.objectives.surrogates import Surrogate


class NaNSurrogate(Surrogate):
    """Loss NaN * log-prob: every gradient it produces is NaN."""

    needs = frozenset()

    def loss(self, inputs, batch, metrics):
        return inputs.logp * float("nan")
