"""Gated checkpoints (issue 28): Gemma 3 and PaliGemma 2 need the license accepted and a token; a missing one gets one
clear line before anything downloads, never a 401/403 traceback from deep inside a download."""

from __future__ import annotations

import os

import pytest
from huggingface_hub.errors import GatedRepoError

from vlm_helpers import gated, model_choices


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)


def test_the_gated_choices_are_the_google_ones():
    assert {key for key, choice in model_choices.MODEL_CHOICES.items() if choice.gated} == {"gemma3-4b", "paligemma2-3b"}


def test_tiny_mode_and_open_models_need_nothing(no_token):
    assert "tiny mode builds its twin here" in gated.require_access("google/gemma-3-4b-it", gated=True, tiny=True)
    assert "no token needed" in gated.require_access("Qwen/Qwen2-VL-2B-Instruct", gated=False, tiny=False)


def test_no_token_is_one_line_that_says_where_to_put_it(no_token):
    with pytest.raises(gated.GatedModelError) as caught:
        gated.require_access("google/gemma-3-4b-it", gated=True, tiny=False, check=lambda *a, **k: pytest.fail())
    message = str(caught.value)
    assert "https://huggingface.co/google/gemma-3-4b-it" in message and "HF_TOKEN" in message
    assert "secrets panel" in message and "\n" not in message
    assert caught.value._render_traceback_() == [f"GatedModelError: {message}"]  # what IPython shows: one line


def test_a_token_without_the_license_accepted_names_the_page(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")

    def refuse(model_id, *, token):
        assert token == "hf_test_token_not_real"
        error = GatedRepoError.__new__(GatedRepoError)  # its constructor wants an HTTP response of the hub's library
        Exception.__init__(error, f"403: access to {model_id} is restricted")
        raise error

    with pytest.raises(gated.GatedModelError, match="has not accepted its license: accept it at "
                                                    "https://huggingface.co/google/paligemma2-3b-pt-448"):
        gated.require_access("google/paligemma2-3b-pt-448", gated=True, tiny=False, check=refuse)


def test_a_token_with_access_is_handed_to_the_downloads(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(gated, "secret", lambda name: "hf_from_colab_secrets" if name == "HF_TOKEN" else None)
    line = gated.require_access("google/gemma-3-4b-it", gated=True, tiny=False, check=lambda *a, **k: None)
    assert os.environ["HF_TOKEN"] == "hf_from_colab_secrets" and "hf_from_colab_secrets" not in line


def test_vlm_train_stops_in_one_line_before_loading_a_gated_model(no_token, monkeypatch, capsys, tmp_path):
    """The command line's form: full mode, ``--model gemma3-4b``, no token: exit 2, one line, nothing loaded."""
    from vlm_helpers import cli, runtime

    data = tmp_path / "data.jsonl"
    data.write_text('{"image": "a.png", "question": "q?", "answer": "a"}\n')
    monkeypatch.setattr(runtime, "require_gpu_unless_tiny", lambda *a, **k: None)  # as on a GPU machine
    monkeypatch.setattr(cli, "init_distributed", lambda *a, **k: pytest.fail("went past the access check"))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--recipe", "custom", "--model", "gemma3-4b", "--data", str(data), "--output-dir",
                  str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-train: error: --model gemma3-4b: google/gemma-3-4b-it is gated")
