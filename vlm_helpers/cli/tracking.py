"""``--report-to``: the experiment trackers ``vlm-train`` can send its training records to.

The choices and their checks are the Trainer's (:data:`vlm_helpers.hf_trainer.REPORT_TO_CHOICES`,
:func:`vlm_helpers.hf_trainer.validate_report_to`, taught in notebook 03), so a tracker the
notebooks accept is one the command line accepts. :class:`Tracker` logs the explicit loop's records
(the Trainer recipes hand ``report_to`` to the Trainer instead).
"""

from __future__ import annotations

from collections.abc import Callable

from vlm_helpers.hf_trainer import REPORT_TO_CHOICES, validate_report_to

__all__ = ["REPORT_TO_CHOICES", "Tracker", "check_report_to"]


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
        """``settings``: the run's :class:`vlm_helpers.cli.recipes.RunSettings`."""
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
