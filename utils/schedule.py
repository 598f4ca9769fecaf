"""Learning-rate schedule: linear warm-up, then cosine decay (a pure function of the step)."""
from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, start: float,
                  end: float) -> float:
    """Rate at optimizer step ``step`` (0-based): ``start`` at step 0 rising linearly to
    ``peak`` at the last warm-up step, ``warmup_steps - 1`` (evenly spaced points from
    ``start`` to ``peak``, both included, as the paper's code spaces them); from step
    ``warmup_steps`` half a cosine from ``peak`` down to ``end`` at ``total_steps``."""
    if step < warmup_steps:
        if warmup_steps == 1:
            return start
        return start + (peak - start) * step / (warmup_steps - 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
