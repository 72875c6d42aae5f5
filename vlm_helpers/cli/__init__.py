"""The command line, ``vlm-train`` (``python -m vlm_helpers.cli``): the notebooks' recipes on one GPU or many.

* :mod:`vlm_helpers.cli.main`: options, settings and ``main()``;
* :mod:`vlm_helpers.cli.recipes`: what each ``--recipe`` trains, with which defaults;
* :mod:`vlm_helpers.cli.launch`: distributed setup under ``torchrun`` (DDP or FSDP2);
* :mod:`vlm_helpers.tracking` (not in this package): the ``--report-to`` experiment trackers.

Nothing here is taught in a notebook cell: it reuses the helpers the notebooks teach.
"""
