"""Experiment trackers (``report_to``), and secrets read from Colab's secrets panel or the environment.

The choices and their checks (:data:`REPORT_TO_CHOICES`, :func:`validate_report_to`) are taught in
``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer", and serve
the Trainer (:func:`vlm_helpers.hf_trainer.make_training_arguments`) and ``vlm-train --report-to`` alike, so a
tracker the notebooks accept is one the command line accepts. :class:`Tracker` logs the explicit loop's
records (the Trainer recipes hand ``report_to`` to the Trainer instead). Keys come from Colab secrets or
environment variables (:func:`secret`), never from a notebook cell (the article's ``wandb.login(key="...")``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence

__all__ = ["REPORT_TO_CHOICES", "Tracker", "check_report_to", "secret", "validate_report_to"]

#: Tracker -> (Python package it needs, environment variable holding its key, or None).
REPORT_TO_CHOICES: dict[str, tuple[str | None, str | None]] = {
    "none": (None, None),
    "tensorboard": ("tensorboard", None),
    "trackio": ("trackio", None),  # logs locally; HF_TOKEN only to sync to a Space
    "wandb": ("wandb", "WANDB_API_KEY"),
}


def secret(name: str) -> str | None:
    """A secret's value from Colab's secrets panel, else from the environment; ``None`` if absent.

    The value is returned, never printed or logged. Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``,
    section "Training with the Hugging Face Trainer" (experiment tracking without pasting keys).
    """
    try:
        from google.colab import userdata  # only importable on Colab

        try:
            value = userdata.get(name)
        except Exception:  # SecretNotFoundError, or notebook access not granted
            value = None
        if value:
            return value
    except ImportError:
        pass
    return os.environ.get(name) or None


def validate_report_to(report_to: str | Sequence[str]) -> list[str]:
    """Check a ``report_to`` choice and return it as a list for ``TrainingArguments``.

    Accepts ``"none"``, ``"tensorboard"``, ``"trackio"`` or ``"wandb"`` (or a list of them).
    Raises ``ValueError`` for anything else, for a tracker whose package is missing, and for
    ``wandb`` without ``WANDB_API_KEY`` in Colab secrets or the environment. A key found only in
    Colab secrets is copied into this process's environment, where the tracker looks for it.
    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer".
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [name.strip().lower() for name in names]
    unknown = [name for name in names if name not in REPORT_TO_CHOICES]
    if unknown or not names:
        raise ValueError(f"report_to must be among {sorted(REPORT_TO_CHOICES)}, got {report_to!r}")
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"report_to='none' cannot be combined with other trackers: {report_to!r}")
        return ["none"]
    for name in names:
        package, key_name = REPORT_TO_CHOICES[name]
        if package and importlib.util.find_spec(package) is None:
            raise ValueError(f"report_to={name!r} needs the {package!r} package: pip install {package}")
        if key_name:
            value = secret(key_name)
            if value is None:
                raise ValueError(f"report_to={name!r} needs {key_name}: add it to Colab's secrets panel "
                                 f"(key icon) or export it as an environment variable, never in a cell")
            os.environ[key_name] = value
    return names


def check_report_to(names: tuple[str, ...]) -> str | None:
    """A problem with ``--report-to`` (unknown name, missing package or key), or None.

    Keys come from the environment (``WANDB_API_KEY``), never from the command line. The same checks as
    ``REPORT_TO`` in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face
    Trainer".
    """
    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown:
        return f"unknown tracker(s) {unknown}; choose from {', '.join(REPORT_TO_CHOICES)}"
    try:
        validate_report_to(list(names))
    except ValueError as error:
        return str(error)
    return None


class Tracker:
    """Sends each training record to the trackers of ``--report-to`` (rank 0 only).

    Keys come from the environment (``WANDB_API_KEY``), never from the command line. The trackers are those
    of ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Training with the Hugging Face Trainer"; this
    class serves the explicit loop of ``vlm-train`` (README, section "Scaling out: from one GPU to several
    machines").
    """

    def __init__(self, names: tuple[str, ...], settings):
        """``settings``: the run's :class:`vlm_helpers.recipes.settings.RunSettings`."""
        self.names = [n for n in names if n != "none"]
        self._writers: list[Callable[[dict, int], None]] = []
        self._closers: list[Callable[[], None]] = []
        run_name = f"{settings.recipe}-{settings.dataset}"
        config = {k: v for k, v in settings.describe().items() if isinstance(v, (int, float, str, bool, type(None)))}
        for name in self.names:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(settings.output_dir / "runs"))
                self._writers.append(lambda rec, step, w=writer: [w.add_scalar(k, v, step) for k, v in rec.items()])
                self._closers.append(writer.close)
            elif name in ("wandb", "trackio"):
                module = __import__(name)
                module.init(project="vlm-finetuning", name=run_name, config=config)
                self._writers.append(lambda rec, step, m=module: m.log(rec, step=step))
                self._closers.append(module.finish)

    def log(self, record: dict) -> None:
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        for write in self._writers:
            write(values, int(record["step"]))

    def close(self) -> None:
        for close in self._closers:
            close()
