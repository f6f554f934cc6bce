"""An environment (chosen by import path) whose episodes last 1 turn on rank 0 and 3 on rank 1, whatever the
model writes: under sharded parameters the ranks then run different numbers of turns, and must still make
the same generate calls."""

import torch.distributed as dist

from rlkit.environments import Environment, Reply


class RankTurns(Environment):
    def step(self, turn: str) -> Reply:
        self.turns = getattr(self, "turns", 0) + 1
        if self.turns >= 1 + 2 * dist.get_rank():
            return Reply(done=True)
        return Reply(messages=[{"role": "tool", "content": "ok"}])
