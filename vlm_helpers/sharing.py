"""Sharing a trained adapter on the Hub: opt-in, private by default, and only a folder that is ready to share
(a model card with the measured numbers, the adapter files, a base named by its Hub id, a token from Colab's
secrets panel or the environment). Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Share the
result"; the card itself is :mod:`vlm_helpers.model_card`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from huggingface_hub import HfApi

from vlm_helpers.adapters import portable_base_name
from vlm_helpers.model_card import CARD_FILE, is_peft_template
from vlm_helpers.tracking import secret

__all__ = ["push_to_hub"]


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = True,
                commit_message: str = "Upload LoRA adapter, processor and model card", api=None):
    """Upload an adapter folder (weights, config, processor files, ``README.md``) to ``repo_id`` on the Hub.

    Checked first, before any network call: the folder holds a model card and the adapter files
    (``FileNotFoundError`` naming what is missing), and there is a token: ``token``, else ``HF_TOKEN`` from
    Colab's secrets panel or the environment (``ValueError`` otherwise). Then
    ``api.create_repo(repo_id, private=private, exist_ok=True)`` (an existing repository keeps its
    visibility) and ``api.upload_folder`` with exactly the folder's files. ``api``: a
    ``huggingface_hub.HfApi`` (default: a new one). Returns ``upload_folder``'s commit info; prints one line
    (never the token). An ``adapter_config.json`` naming its base by a path of this machine (an adapter saved
    without :func:`vlm_helpers.adapters.save_adapter`) is refused too (``ValueError``): the adapter would be uploaded
    with that path in it, and nobody could find its base. Opt-in cell of
    ``notebooks/06_your_data_your_model.ipynb``, section "Share the result".
    """
    if not (isinstance(repo_id, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id)):
        raise ValueError(f"repo_id must name a Hub repository, 'your-name/your-adapter' (notebook: HUB_REPO_ID), "
                         f"got {repo_id!r}")
    folder = Path(folder)
    missing = _upload_problems(folder)
    if missing:
        raise FileNotFoundError(f"{folder} is not ready to share: {'; '.join(missing)}")
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base and portable_base_name(base) != base:
        raise ValueError(f"{folder / 'adapter_config.json'} names its base model by a path of this machine ({base}): "
                         "name the Hub model instead, adapters.portable_adapter_files(folder, base_model='org/name') "
                         "(adapters.save_adapter(..., base_model='org/name') does it when saving)")
    if token is None:
        token = secret("HF_TOKEN")
    if not token:
        raise ValueError("no Hugging Face token: add HF_TOKEN (a write token from huggingface.co/settings/tokens) "
                         "to Colab's secrets panel (key icon) or export it as an environment variable; never "
                         "paste it into a cell")
    files = _upload_files(folder)
    if api is None:
        api = HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                               commit_message=commit_message, allow_patterns=files)
    print(f"uploaded {len(files)} files to https://huggingface.co/{repo_id} "
          f"({'private' if private else 'public'} repository requested): {', '.join(files)}")
    return commit


def _upload_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being shared: no model card, no adapter config, no adapter weights."""
    problems = []
    card = folder / CARD_FILE
    if not card.is_file():
        problems.append(f"no model card ({CARD_FILE}): write one with write_model_card")
    elif is_peft_template(card.read_text(encoding="utf-8")):
        problems.append(f"{CARD_FILE} is PEFT's empty template, not a model card: write one with write_model_card")
    if not (folder / "adapter_config.json").is_file():
        problems.append("no adapter_config.json (save the adapter with adapters.save_adapter)")
    if not any((folder / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        problems.append("no adapter weights (adapter_model.safetensors)")
    return problems


def _upload_files(folder: Path) -> list[str]:
    """The folder's files, relative, sorted; hidden files and staging leftovers stay home."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()
                  and not any(part.startswith(".") or part.endswith((".tmp", ".old"))
                              for part in path.relative_to(folder).parts))
