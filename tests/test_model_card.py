"""The model card next to a saved adapter (written, re-read, checked) and the opt-in push to the Hub, offline.

``push_to_hub`` gets a recording stand-in for ``huggingface_hub.HfApi``: everything up to the upload call
runs for real, and the test sees what would be uploaded, where, how and with which token.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lora_checks import trainer_values

from vlm_helpers.model_card import (
    CARD_MARKER,
    METRIC_DEFINITIONS,
    metric_definition,
    read_model_card,
    write_model_card,
)
from vlm_helpers.sharing import push_to_hub
from vlm_helpers.runtime import HardwareProfile, choose_preset, mode_label

CPU = HardwareProfile("cpu", None, None, None, on_colab=False, flash_attn_installed=False)
T4 = HardwareProfile("cuda", "Tesla T4", (7, 5), 15.0, on_colab=True, flash_attn_installed=False)
LABEL = mode_label(True)
TOKEN = "hf_offline_test_token_0123456789"

DATA = {"source": "Synthetic DocVQA pages rendered by vlm_helpers.tiny (questions about a page's text)",
        "counts": {"train": 48, "validation": 6, "test": 12},
        "fields": {"image": "image", "question": "question", "answer": "answers"}, "split_seed": 17}
HYPERPARAMETERS = {"learning_rate": 2e-4, "lora_r": 8, "lora_alpha": 16, "epochs": 2.5, "scheduler": "cosine",
                   "quantize_4bit": True, "eval_every": 25}
BEFORE = {"anls": 0.123456, "levenshtein_similarity": 0.271828, "samples": 12}
AFTER = {"anls": 0.654321, "levenshtein_similarity": 0.707107, "samples": 12}


def rounded(value: float, decimals: int = 4) -> float:
    return float(f"{value:.{decimals}f}")


def card(folder, *, tiny=True, before=BEFORE, after=AFTER, **extra):
    preset = choose_preset(CPU, "idefics2-qlora-docvqa", tiny=True) if tiny else choose_preset(T4,
                                                                                              "idefics2-qlora-docvqa")
    arguments = dict(base_model="HuggingFaceM4/idefics2-8b", task="DocVQA question answering", data=DATA,
                     hyperparameters=HYPERPARAMETERS, metrics_before=before, metrics_after=after, preset=preset,
                     hardware="CPU only" if tiny else "Tesla T4 (15.0 GB)", run_seconds=4321.987, tiny=tiny,
                     best_step=150, best_metric="val_anls", best_value=0.612345)
    return write_model_card(folder, **{**arguments, **extra})


class RecordingApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, uploads nothing."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["present"] = sorted(p.name for p in folder.iterdir() if p.name in kwargs["allow_patterns"])
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return "commit-info"


# ---------------------------------------------------------------------------------------------- the card


def test_the_card_shows_every_number_with_the_tiny_label_and_reads_back(tmp_path):
    path = card(tmp_path)
    text = path.read_text()
    back = read_model_card(tmp_path)

    assert back["front_matter"] == {"base_model": "HuggingFaceM4/idefics2-8b", "library_name": "peft",
                                    "pipeline_tag": "image-text-to-text",
                                    "tags": ["peft", "lora", "vision-language-model", "vlm-finetuning-series",
                                             "tiny-random-not-a-real-result"]}  # no license: none was given
    assert text.startswith("---\nbase_model: HuggingFaceM4/idefics2-8b\n")
    assert back["tiny"] and back["title"] == f"DocVQA question answering: a LoRA adapter for " \
                                             f"HuggingFaceM4/idefics2-8b {LABEL}"
    assert back["data"] == DATA
    assert back["hyperparameters"] == {name: str(value) for name, value in HYPERPARAMETERS.items()}
    assert back["preset"] == {"name": "tiny", "dtype": "float32", "hardware": "CPU only"}
    assert back["run_seconds"] == 4322.0
    assert back["best"] == {"step": 150, "metric": "val_anls", "value": rounded(0.612345)}
    assert back["decimals"] == 4 and "rounded to 4 decimals" in text
    assert back["metrics_before"] == {"anls": rounded(0.123456), "levenshtein_similarity": rounded(0.271828),
                                      "samples": 12}
    assert back["metrics_after"] == {"anls": rounded(0.654321), "levenshtein_similarity": rounded(0.707107),
                                     "samples": 12}
    assert back["changes"] == {"anls": rounded(0.654321 - 0.123456),
                               "levenshtein_similarity": rounded(0.707107 - 0.271828), "samples": None}
    assert back["definitions"] == {name: METRIC_DEFINITIONS[name] for name in ("anls", "levenshtein_similarity",
                                                                               "samples")}
    # the label stands next to every number, as shown
    for shown in ("0.1235", "0.6543", "+0.5309", "0.2718", "0.7071", "0.6123", "4322.0", "| 48", "| 6", "| 12",
                  "seed: 17", "step 150", "| 0.0002", "| 8", "| 16", "| 2.5", "| 25"):
        assert f"{shown} {LABEL}" in text, shown
    assert f"> **{LABEL}**" in text  # and once more, prominently, under the title
    assert "| cosine |" in text and "| True |" in text  # words are not numbers


def test_a_full_mode_card_has_no_tiny_label_and_a_license_only_when_given(tmp_path):
    card(tmp_path / "a", tiny=False, license="apache-2.0", tags=("docvqa",))
    back = read_model_card(tmp_path / "a")
    assert not back["tiny"] and LABEL not in (tmp_path / "a" / "README.md").read_text()
    assert back["front_matter"]["license"] == "apache-2.0" and "docvqa" in back["front_matter"]["tags"]
    assert "tiny-random-not-a-real-result" not in back["front_matter"]["tags"]
    assert back["preset"] == {"name": "t4", "dtype": "float16", "hardware": "Tesla T4 (15.0 GB)"}
    assert back["metrics_after"]["anls"] == rounded(0.654321)
    card(tmp_path / "b", tiny=False, best_step=None, decimals=2)
    back = read_model_card(tmp_path / "b")
    assert "license" not in back["front_matter"] and back["best"] is None
    assert back["decimals"] == 2 and back["metrics_before"]["anls"] == 0.12


def test_every_metric_needs_a_definition_and_prefixed_names_share_one(tmp_path):
    assert metric_definition("val_tag_f1") == metric_definition("tag_f1") == METRIC_DEFINITIONS["tag_f1"]
    for name in ("anls", "exact_match", "rouge1", "rouge2", "rougeL", "tag_f1"):
        assert len(METRIC_DEFINITIONS[name]) > 40, name  # a definition, not a label
    with pytest.raises(KeyError, match="no definition for metric 'bleu'"):
        card(tmp_path, after={**AFTER, "bleu": 0.3})
    assert not (tmp_path / "README.md").exists()
    card(tmp_path, after={**AFTER, "bleu": 0.3}, metric_definitions={"bleu": "BLEU-4 against one reference."})
    back = read_model_card(tmp_path)
    assert back["definitions"]["bleu"] == "BLEU-4 against one reference."
    assert back["metrics_after"]["bleu"] == 0.3 and back["metrics_before"]["bleu"] is None


def test_a_readme_the_module_did_not_write_is_never_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# My adapter\n\nNotes I wrote by hand.\n")
    with pytest.raises(FileExistsError, match=str(readme)):
        card(tmp_path)
    assert readme.read_text() == "# My adapter\n\nNotes I wrote by hand.\n"
    with pytest.raises(ValueError, match="not written by write_model_card"):
        read_model_card(tmp_path)

    # its own card it replaces: the second run's numbers are the ones read back
    card(tmp_path / "own")
    card(tmp_path / "own", after={**AFTER, "anls": 0.5})
    assert read_model_card(tmp_path / "own")["metrics_after"]["anls"] == 0.5
    assert (tmp_path / "own" / "README.md").read_text().count(CARD_MARKER) == 1


# ---------------------------------------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tmp_path_factory):
    """Tiny LLaVA-Phi-3 + LoRA: scores before, 4 Trainer steps keeping the best by validation ANLS, scores after,
    adapter saved with adapters.save_adapter (which also drops PEFT's template README.md there)."""
    from vlm_helpers import evaluation
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.data.sources import docvqa_dataset
    from vlm_helpers.hf_trainer import make_training_arguments, train_with_trainer
    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, load_chat_vlm
    from vlm_helpers.adapters import save_adapter
    from vlm_helpers.tiny import tiny_checkpoint

    preset = choose_preset(CPU, "phi3-aircraft", tiny=True)
    base = tiny_checkpoint("llava-phi3", tiny_cache)
    model, processor = load_chat_vlm(base, dtype=preset.dtype, attn_implementation=preset.attn_implementation,
                                     quantize_4bit=False)
    model = add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, dropout=0.0, quantized=False)
    collator = ChatVLMCollator(processor, instruction="Answer briefly.")
    seed = 3
    train_rows = docvqa_dataset("train", tiny=True, max_samples=8, seed=seed)
    eval_rows = list(docvqa_dataset("validation", tiny=True, max_samples=3, seed=seed))
    scoring = dict(task="docvqa", model_name="tiny-llava-phi3", tiny=True, max_new_tokens=4, batch_size=3)
    _, before = evaluation.evaluate(model, processor, collator, eval_rows, title="before", **scoring)
    out = tmp_path_factory.mktemp("card-run")
    hyperparameters = {"learning_rate": 1e-2, "max_steps": 4, "lora_targets": LLAVA_PHI3_LORA_TARGETS}
    args = make_training_arguments(**trainer_values(preset), output_dir=str(out / "run"),
                                   learning_rate=hyperparameters["learning_rate"], max_steps=4, logging_steps=1,
                                   seed=0, disable_tqdm=True)
    validation = evaluation.generation_eval_fn(model, processor, collator, eval_rows, task="docvqa",
                                               max_new_tokens=4)
    started = time.perf_counter()
    trainer, _ = train_with_trainer(model, train_rows, collator, args, eval_fn=validation, eval_every=2,
                                    keep_best="val_anls", processor=processor)
    seconds = time.perf_counter() - started
    _, after = evaluation.evaluate(model, processor, collator, eval_rows, title="after", **scoring)
    adapter = save_adapter(model, processor, out / "adapter")
    peft_readme = (adapter / "README.md").read_text()
    return {"adapter": adapter, "before": before, "after": after, "seconds": seconds, "preset": preset,
            "trainer": trainer, "hyperparameters": hyperparameters, "peft_readme": peft_readme,
            "data": {"source": "synthetic DocVQA pages (tiny mode)",
                     "counts": {"train": len(train_rows), "validation": len(eval_rows)},
                     "fields": {"image": "image", "question": "question", "answer": "answers"},
                     "split_seed": seed}}


def write_tiny_card(run) -> Path:
    state = run["trainer"].state
    return write_model_card(run["adapter"], base_model="xtuner/llava-phi-3-mini-hf", task="DocVQA question answering",
                            data=run["data"], hyperparameters=run["hyperparameters"], metrics_before=run["before"],
                            metrics_after=run["after"], preset=run["preset"], hardware="CPU only",
                            run_seconds=run["seconds"], tiny=True, best_step=state.best_global_step,
                            best_metric="val_anls", best_value=state.best_metric)


def test_the_card_of_a_real_tiny_run_holds_the_measured_numbers(tiny_run):
    assert "[More Information Needed]" in tiny_run["peft_readme"] and CARD_MARKER not in tiny_run["peft_readme"]
    write_tiny_card(tiny_run)  # replaces PEFT's empty template, which nobody wrote by hand
    back = read_model_card(tiny_run["adapter"])
    for side in ("before", "after"):
        measured = tiny_run[side]
        assert set(back[f"metrics_{side}"]) == {"anls", "levenshtein_similarity", "samples"}
        assert back[f"metrics_{side}"]["samples"] == measured["samples"] == 3
        for name in ("anls", "levenshtein_similarity"):
            assert back[f"metrics_{side}"][name] == rounded(measured[name]), (side, name)
    assert back["run_seconds"] == rounded(tiny_run["seconds"], 1)
    assert back["data"]["counts"] == {"train": 8, "validation": 3} and back["data"]["split_seed"] == 3
    state = tiny_run["trainer"].state
    assert back["best"] == {"step": state.best_global_step, "metric": "val_anls", "value": rounded(state.best_metric)}
    assert back["hyperparameters"]["lora_targets"] == " ".join(tiny_run["hyperparameters"]["lora_targets"].split())
    assert back["tiny"] and back["front_matter"]["library_name"] == "peft"


def test_push_uploads_adapter_processor_and_card_with_the_environment_token(tiny_run, monkeypatch, capsys):
    write_tiny_card(tiny_run)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = RecordingApi()
    assert push_to_hub(tiny_run["adapter"], "someone/tiny-llava-docvqa", api=api) == "commit-info"
    (create, repo, create_kwargs), (upload, repo_again, upload_kwargs) = api.calls
    assert (create, repo, upload, repo_again) == ("create_repo", "someone/tiny-llava-docvqa", "upload_folder",
                                                  "someone/tiny-llava-docvqa")
    assert create_kwargs == {"token": TOKEN, "private": True, "repo_type": "model", "exist_ok": True}
    assert upload_kwargs["token"] == TOKEN and upload_kwargs["folder_path"] == str(tiny_run["adapter"])
    files = upload_kwargs["allow_patterns"]
    assert files == sorted(p.name for p in tiny_run["adapter"].iterdir())
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
            "processor_config.json"} <= set(files)
    assert upload_kwargs["present"] == files
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    assert f"uploaded {len(files)} files to https://huggingface.co/someone/tiny-llava-docvqa (private" in printed.out

    api = RecordingApi()  # an explicit token wins over the environment's; public on request
    push_to_hub(tiny_run["adapter"], "someone/public", token="hf_other", private=False, api=api)
    assert api.calls[0][2]["token"] == api.calls[1][2]["token"] == "hf_other" and api.calls[0][2]["private"] is False


def test_push_without_a_token_stops_before_any_call(tiny_run, monkeypatch):
    write_tiny_card(tiny_run)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    api = RecordingApi()
    with pytest.raises(ValueError, match="no Hugging Face token: add HF_TOKEN .* never paste it into a cell"):
        push_to_hub(tiny_run["adapter"], "someone/x", api=api)
    assert api.calls == []


def test_push_names_what_the_folder_lacks_before_anything_else(tmp_path, tiny_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = RecordingApi()
    with pytest.raises(FileNotFoundError, match=r"no model card \(README.md\).*no adapter_config.json.*"
                                                r"no adapter weights \(adapter_model.safetensors\)"):
        push_to_hub(tmp_path, "someone/x", api=api)
    card(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"is not ready to share: no adapter weights") as error:
        push_to_hub(tmp_path, "someone/x", api=api)
    assert "model card" not in str(error.value) and "adapter_config" not in str(error.value)

    template = tmp_path / "peft"  # PEFT's template README is not a model card
    template.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (template / name).write_bytes((tiny_run["adapter"] / name).read_bytes())
    (template / "README.md").write_text(tiny_run["peft_readme"])
    with pytest.raises(FileNotFoundError, match="PEFT's empty template"):
        push_to_hub(template, "someone/x", api=api)
    assert api.calls == []


def test_an_edited_peft_template_is_the_users_and_is_kept(tmp_path, tiny_run):
    edited = tiny_run["peft_readme"].replace("[More Information Needed]", "Trained on my invoices.", 1)
    (tmp_path / "README.md").write_text(edited)
    with pytest.raises(FileExistsError, match="was not written by write_model_card"):
        card(tmp_path)
    assert (tmp_path / "README.md").read_text() == edited
    (tmp_path / "README.md").write_text(tiny_run["peft_readme"])
    card(tmp_path)  # the untouched template is replaced
    assert read_model_card(tmp_path)["metrics_after"]["anls"] == rounded(0.654321)


def test_push_to_hub_checks_the_repository_name_first(tmp_path):
    for bad in (None, "", "a/b/c", "has space/x"):
        with pytest.raises(ValueError, match="repo_id must name a Hub repository"):
            push_to_hub(tmp_path, bad, token="x", api=object())


def test_a_card_names_local_data_by_its_name_only(tmp_path):
    from vlm_helpers.model_card import source_name

    data = tmp_path / "secret-project" / "data.jsonl"
    data.parent.mkdir()
    data.write_text("{}\n")
    assert source_name(data) == "data.jsonl" and source_name("org/dataset") == "org/dataset"
    assert source_name({"train": data, "validation": "org/x"}) == "train=data.jsonl, validation=org/x"
    assert "tiny mode" in source_name(None)


# ---------------------------------------------------------------------------------------------- your data


def _loaded(path, columns, *, format="auto"):
    """Notebook 06's steps before the card: load (skipping), hold out, check (``data_section``'s inputs)."""
    from vlm_helpers.data.formats import load_your_data
    from vlm_helpers.data.splits import train_validation_test
    from vlm_helpers.data.validation import clean_dataset

    splits, load_report = load_your_data(path, columns, format=format, on_bad="skip")
    parts = dict(zip(("train", "validation", "test"),
                     train_validation_test(splits, seed=5, validation_fraction=0.2, test_fraction=0.2)))
    used, checks = {}, []
    for name in ("train", "validation", "test"):
        used[name], check = clean_dataset(parts[name], split=name, on_bad="skip", question_key="question",
                                          answer_key="answers", id_key="id")
        checks.append(check)
    return load_report, used, checks


def _photos(folder: Path, count: int, sizes=None) -> list[str]:
    from PIL import Image

    (folder / "photos").mkdir(parents=True)
    names = []
    for index in range(count):
        size = (sizes or {}).get(index, (30 + index, 20))
        Image.new("RGB", size, (index * 20 % 255, 10, 90)).save(folder / "photos" / f"{index}.png")
        names.append(f"photos/{index}.png")
    return names


def test_the_card_describes_the_data_that_was_loaded(tmp_path):
    """A user's CSV (their ids and column names, a line whose image is missing, a 2000 x 1500 photo): the card names
    the file by its name only, its format and columns, the rows used and skipped per split and why, the image
    sizes and the metric with why; and reads back so. No path of the user's machine is in the card."""
    from vlm_helpers.data.formats import Columns
    from vlm_helpers.model_card import data_section

    folder = tmp_path / "private" / "receipts"
    names = _photos(folder, 12, {4: (2000, 1500)})
    lines = ["Beleg,Bild,Frage,Antwort"] + [f"B{index},{name},Summe?,{index}.00" for index, name in enumerate(names)]
    lines.insert(3, "B99,photos/missing.png,Summe?,1.00")  # line 4
    (folder / "belege.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    columns = Columns(image="Bild", question="Frage", answer="Antwort", id="Beleg")
    load_report, used, checks = _loaded(folder / "belege.csv", columns)

    data = data_section(load_report, used, task="qa", split_seed=5, columns=columns, checks=checks,
                        note=f"copied from {folder}/belege.csv")
    assert data["source"] == "belege.csv" and data["format"].startswith("CSV")
    assert data["fields"] == {"id": "Beleg", "image": "Bild", "question": "Frage", "answer": "Antwort"}
    assert data["counts"] == {name: len(rows) for name, rows in used.items()} and sum(data["counts"].values()) == 12
    assert data["read"] == 13 and data["skipped"] == {"train": 1, "validation": 0, "test": 0}
    assert data["skipped_reasons"] == {"image file not found": 1}
    assert "the largest 2000x1500 px" in data["images"] and data["metric"].startswith("anls, short answers")
    assert data["note"] == "copied from belege.csv"  # a path of the user's machine is cut to its name

    card(tmp_path / "card", data=data)
    text = (tmp_path / "card" / "README.md").read_text()
    assert str(tmp_path) not in text and "private" not in text
    back = read_model_card(tmp_path / "card")["data"]
    assert back == data
    assert f"Rows read: 13 {LABEL}" in text and f"| train | {data['counts']['train']} {LABEL} | 1 {LABEL} |" in text
    assert f"the largest 2000x1500 px {LABEL}" in text  # a line holding numbers carries the tiny label


def test_conversations_without_columns_get_their_layout_in_the_card(tmp_path):
    """``COLUMNS = None`` with conversation data: the card's roles are the parts of the conversation (building it
    once read ``COLUMNS.fields()`` and crashed after training)."""
    import json

    from vlm_helpers.model_card import CONVERSATION_FIELDS, data_section

    folder = tmp_path / "chats"
    names = _photos(folder, 10)
    rows = [{"images": [name], "messages": [{"role": "user", "content": "<image>Which colour?"},
                                            {"role": "assistant", "content": "dark"}]} for name in names]
    rows[3]["messages"].append({"role": "user", "content": "and then?"})  # two rounds: skipped
    (folder / "chats.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    load_report, used, checks = _loaded(folder / "chats.jsonl", None, format="conversations")
    data = data_section(load_report, used, task="captioning", split_seed=5, columns=None, checks=checks)
    assert data["fields"] == CONVERSATION_FIELDS and data["format"].startswith("conversations")
    assert data["source"] == "chats.jsonl" and data["read"] == 10 and sum(data["counts"].values()) == 9
    assert data["metric"].startswith("rouge1") and list(data["skipped_reasons"].values()) == [1]
    card(tmp_path / "card", data=data, tiny=False)
    back = read_model_card(tmp_path / "card")["data"]
    assert back["fields"] == CONVERSATION_FIELDS and back["skipped"] == data["skipped"]
