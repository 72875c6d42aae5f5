"""A simulated model for tests of the evaluation's bookkeeping (ids, scores), with no network and no weights."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class SimulatedModel:
    """Simulated model, processor and collator in one: ``generate`` returns a token per row that decodes to
    ``answer(row)``. Enough for :func:`vlm_helpers.evaluation.generate_predictions`, nothing more."""

    config = SimpleNamespace(is_encoder_decoder=True)  # the output is the answer alone, nothing to cut off
    dtype = torch.float32

    def __init__(self, answer):
        self.answer, self.texts = answer, []

    def eval(self):
        return self

    def generation_inputs(self, rows):
        start = len(self.texts)
        self.texts += [self.answer(row) for row in rows]
        return {"input_ids": torch.arange(start, len(self.texts)).unsqueeze(1)}

    def generate(self, input_ids, **_):
        return input_ids

    def batch_decode(self, output, skip_special_tokens=True):
        return [self.texts[token] for token in output[:, 0].tolist()]
