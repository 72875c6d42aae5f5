"""The error every data check of the series raises: it names the split, the row, its id and the problem.

Its own module so that the data loaders (:mod:`vlm_helpers.data.canonical`) and the row validator
(:mod:`vlm_helpers.data.validation`) share it without importing each other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DataValidationError"]


class DataValidationError(ValueError):
    """A row failed validation. The message names split, row index, id and problem.

    Attributes:
        split: split name given to the validator.
        index: position of the row in the iterable that was validated.
        question_id: the row's id (``questionId`` by default), or ``None``.
        problem: what is wrong, without the location prefix.
        origin: where the row came from, when its ``origin`` field says (notebook 06's loaders write
            ``"data.jsonl:12"``, file name and line, or ``"train:3"``, split and row of a dataset): the
            row number above counts within the split, after any hold-out, and a user's own id hides the line.

    Raised by ``ON_BAD_ROWS = "raise"`` in ``notebooks/02_florence2_docvqa.ipynb``, section "The data:
    questions about scanned documents"; the message format is shown in the README, section "When things go
    wrong".
    """

    def __init__(self, problem: str, *, split: str, index: int, question_id: Any = None,
                 id_key: str | None = "questionId", origin: str | None = None) -> None:
        self.split = split
        self.index = index
        self.question_id = question_id
        self.problem = problem
        self.origin = origin
        where = f"split={split!r}, row {index}"
        if question_id is not None:
            where += f", {id_key or 'id'}={question_id}"
        if origin is not None and origin != question_id:
            where += f", from {origin}"
        super().__init__(f"[{where}] {problem}")
