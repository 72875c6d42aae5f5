"""Gated checkpoints (Gemma 3, PaliGemma 2): the license accepted on the Hub, then a token, checked before loading.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets" (``MODEL =
"gemma3-4b"`` or ``"paligemma2-3b"``). Google's repositories serve their files only to a logged-in account that has
accepted the license on the model's page. Without that, ``from_pretrained`` fails deep in a download with a 401 or
403 traceback. :func:`require_access` says it in one line before anything downloads:

- no token: where to put one (Colab's secrets panel, key icon, as ``HF_TOKEN``; or the ``HF_TOKEN`` environment
  variable; never in a cell);
- a token, but the license not accepted (the Hub answers "gated"): the page to accept it on.

The token is read with :func:`vlm_helpers.tracking.secret` and handed to ``huggingface_hub`` through the
``HF_TOKEN`` environment variable of this process, which every download then uses; it is never printed.
"""

from __future__ import annotations

import os

from huggingface_hub import auth_check
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from vlm_helpers.tracking import secret

__all__ = ["GatedModelError", "require_access"]


class GatedModelError(RuntimeError):
    """A gated checkpoint cannot be downloaded with this machine's credentials; the message says what to do.

    Raised in ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets"."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for this error in a notebook: the one line, without the traceback."""
        return [f"{type(self).__name__}: {self}"]


def require_access(model_id: str, *, gated: bool, tiny: bool, check=None) -> str:
    """Make sure ``model_id`` can be downloaded; return one line saying how (printed by the notebook).

    ``tiny``: nothing is downloaded (the tiny twin is built here), nothing is needed. An open checkpoint
    (``gated=False``) needs nothing. A gated one needs a token (``HF_TOKEN`` from Colab's secrets panel or the
    environment: :class:`GatedModelError` otherwise) and the license accepted: ``check(model_id, token=...)``
    (default: ``huggingface_hub.auth_check``) raising ``GatedRepoError`` becomes :class:`GatedModelError` with the
    page to accept it on; a network problem is left to the download itself (it names it). Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    page = f"https://huggingface.co/{model_id}"
    if tiny:
        return (f"{model_id} is gated (license and token needed in full mode); tiny mode builds its twin here"
                if gated else f"{model_id}: tiny mode builds its twin here")
    if not gated:
        return f"{model_id}: open, no token needed"
    token = secret("HF_TOKEN")
    if not token:
        raise GatedModelError(
            f"{model_id} is gated: accept its license at {page} (logged in), create a read token at "
            "https://huggingface.co/settings/tokens and add it as HF_TOKEN to Colab's secrets panel (key icon, "
            "notebook access on) or export HF_TOKEN; never paste it into a cell")
    try:
        (check or auth_check)(model_id, token=token)
    except GatedRepoError:
        raise GatedModelError(f"{model_id} is gated and this token's account has not accepted its license: accept "
                              f"it at {page} (same account as the token), then run this cell again") from None
    except RepositoryNotFoundError:
        raise GatedModelError(f"{model_id}: the Hub does not know it or the token cannot see it; check MODEL and "
                              "the token") from None
    except OSError:  # offline, a proxy: the download says what went wrong
        pass
    os.environ["HF_TOKEN"] = token  # huggingface_hub reads it for every download of this process
    return f"{model_id} is gated: a token was found (HF_TOKEN) and its account may download it"
