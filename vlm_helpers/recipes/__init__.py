"""The command line's recipes: what to train, on which data, with which defaults; one module per recipe.

Used by :mod:`vlm_helpers.cli` (``vlm-train --recipe ...``). A recipe is a small
:class:`~vlm_helpers.recipes.settings.Recipe` record (name, datasets it accepts, default hyper-parameters for
full and tiny mode, the notebook it follows and the steps they share) plus one ``run(settings, env)`` function
that does the work with the same helpers the notebooks use, in the same order: each module's ``RECIPE``.
Adding a recipe = one module with its ``RECIPE`` and one line in :data:`vlm_helpers.cli.RECIPES`; the command
line picks it up (choices, defaults, ``--help``).

- :mod:`~vlm_helpers.recipes.settings`: ``Recipe``, ``Defaults``, ``RunSettings``, ``YourData``, ``UserError``;
- :mod:`~vlm_helpers.recipes.options`: the command line's options turned into settings;
- :mod:`~vlm_helpers.recipes.common`: the steps every recipe shares (row validation, weight digests);
- :mod:`~vlm_helpers.recipes.florence2_docvqa` (notebook 02), :mod:`~vlm_helpers.recipes.chat` (the HF Trainer
  recipes' shared run), :mod:`~vlm_helpers.recipes.idefics2_docvqa` (notebook 03),
  :mod:`~vlm_helpers.recipes.phi3_aircraft` (notebook 04), :mod:`~vlm_helpers.recipes.custom` (notebook 06).

``run`` receives:

* ``settings`` (:class:`RunSettings`): every option already resolved: command line
  value if given, else the recipe's default for the mode, else the hardware preset's;
* ``env`` (:class:`vlm_helpers.launch.Distributed`): rank, world size, device, and helpers
  (``env.wrap(model)`` for DistributedDataParallel or FSDP2, ``env.barrier()``,
  ``env.main_process_first()``, ``env.log(...)`` which prints on rank 0 only).

It returns a small dict summarising the run (printed by the command line as JSON).

Two kinds of recipe exist. ``trainer="loop"`` (florence2-docvqa) runs the series' own
loop, :func:`vlm_helpers.loop.train`, on a model the recipe wraps with ``env.wrap``.
``trainer="hf"`` (idefics2-qlora-docvqa, phi3-aircraft) hands the model to the HF Trainer
(:func:`vlm_helpers.hf_trainer.train_with_trainer`), which does its own DDP under
torchrun; those share :func:`vlm_helpers.recipes.chat.run_chat_recipe` and differ only by a :class:`ChatSpec`
and a data function. Both kinds write a checkpoint after the last step (plus every
``--checkpoint-every`` steps) and continue one with ``--resume``; the formats differ
(``training_state.pt`` vs the Trainer's ``trainer_state.json`` + adapter + optimizer).
"""
