"""MixGen (Hao et al., "MixGen: A New Multi-Modal Data Augmentation", WACV 2023 workshop):
mix two photos and join their captions, done when a batch is collated."""
from __future__ import annotations

from torch.utils.data import default_collate

from model.tokenizer import tokenize


class MixGenCollate:
    """Collate, then for the first ``share`` of the batch: photo_i = (1 - ratio) * photo_i +
    ratio * photo_{i+M}, caption_i = caption_i + " " + caption_{i+M} (M mixed pairs).

    The batch order is already random, so taking the first items draws nothing.
    """

    def __init__(self, share: float, ratio: float, context_length: int):
        self.share, self.ratio, self.context_length = share, ratio, context_length

    def __call__(self, items: list) -> dict:
        captions = [item.pop("caption") for item in items]
        batch = default_collate(items)
        mixed = min(int(len(items) * self.share), len(items) // 2)
        if mixed:
            first, second = slice(0, mixed), slice(mixed, 2 * mixed)
            batch["photo"][first] = ((1 - self.ratio) * batch["photo"][first]
                                     + self.ratio * batch["photo"][second])
            joined = [f"{captions[i]} {captions[i + mixed]}" for i in range(mixed)]
            batch["tokens"][first] = tokenize(joined, self.context_length)
        return batch
