"""The code the notebooks teach agrees with the package's tested copy.

Each notebook writes out the key pieces it teaches in cells tagged ``lesson`` (imports and
definitions only). These tests run exactly those cells, take the functions they define and
compare them with ``vlm_helpers`` on fixed inputs:

- notebook 02: the Florence-2 collate step (labels padded with -100), ANLS, and one training
  step with the token-summed loss over the accumulation window;
- notebook 03: the chat label masking, and the QLoRA configs (``BitsAndBytesConfig``, ``LoraConfig``) the
  notebook builds in view and hands to the loaders;
- notebook 04: the LoRA target selection;
- notebook 06: the hold-out split (which rows are held out) and the keep-best rule (what wins, what patience
  counts);
- notebook 01: Florence-2's location tokens for a region; notebook 05: loss smoothing over steps.
"""

from __future__ import annotations

import ast
import json
import math
import random
from pathlib import Path

import pytest
import torch

from vlm_helpers import florence2, loop, metrics
from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = {  # notebook -> the names its lesson cells must define
    "01_baseline_inference.ipynb": {"location_tokens"},
    "02_florence2_docvqa.ipynb": {"florence2_collate", "normalize", "anls", "token_loss_sum", "training_step"},
    "03_idefics2_qlora_docvqa.ipynb": {"chat_labels", "qlora_quantization", "lora_adapters"},
    "04_phi3_aircraft_captioning.ipynb": {"lora_targets"},
    "05_before_after_comparison.ipynb": {"smooth_by_steps"},
    "06_your_data_your_model.ipynb": {"held_out_rows", "beats_best", "evaluations_since_best"},
}


def lesson_cells(name: str) -> list[tuple[str, str]]:
    """``(cell id, source)`` of the cells of ``notebooks/<name>`` tagged ``lesson``, in order."""
    notebook = json.loads((NOTEBOOKS / name).read_text())
    return [(cell.get("id", "?"), "".join(cell["source"])) for cell in notebook["cells"]
            if cell["cell_type"] == "code" and "lesson" in cell.get("metadata", {}).get("tags", [])]


def lesson(name: str) -> dict:
    """Run the lesson cells of one notebook in a fresh namespace and return what they define."""
    namespace: dict = {}
    for cell_id, source in lesson_cells(name):
        exec(compile(source, f"{name}#{cell_id}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", sorted(LESSONS))
def test_lesson_cells_only_import_and_define(name):
    """A lesson cell must run on its own: no notebook globals, no work done at definition time."""
    cells = lesson_cells(name)
    assert cells, f"{name} has no cell tagged 'lesson'"
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    for cell_id, source in cells:
        for node in ast.parse(source).body:
            constant = isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.Tuple, ast.UnaryOp))
            assert isinstance(node, allowed) or constant, f"{name}#{cell_id}: {ast.unparse(node)[:80]}"
    defined = set(lesson(name))
    assert LESSONS[name] <= defined, f"{name} lesson cells lack {sorted(LESSONS[name] - defined)}"


# ---------------------------------------------------------------------------------- notebook 02


@pytest.fixture(scope="module")
def nb02():
    return lesson("02_florence2_docvqa.ipynb")


@pytest.fixture(scope="module")
def docvqa_rows():
    return [dict(row) for row in make_synthetic_docvqa(12, seed=5)]


def test_notebook_collate_equals_florence2_collator(nb02, tiny_florence2_path, docvqa_rows):
    _, processor = florence2.load_florence2(tiny_florence2_path, dtype=torch.float32)
    package = florence2.Florence2Collator(processor, answer_choice="first")
    lengths = set()
    for start in (0, 4, 8):
        rows = docvqa_rows[start:start + 4]
        ours, theirs = nb02["florence2_collate"](rows, processor), package(rows)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
        lengths |= {int(row.ne(-100).sum()) for row in ours["labels"]}
        assert (ours["labels"] == processor.tokenizer.pad_token_id).sum() == 0, "padding is -100, never <pad>"
    assert len(lengths) > 1, "the rows should mix answer lengths, so that padding is compared"


ANLS_CASES = [  # (predictions, references, ANLS by hand)
    (["$1,250.00"], [["$1,250.00", "1,250.00"]], 1.0),
    (["  Acme   CORP "], [["acme corp"]], 1.0),                  # case and whitespace are normalised
    (["1,250"], [["1,250.00"]], 1 - 3 / 8),                      # distance 3 of 8 characters
    (["1,25"], [["1,250.00"]], 0.0),                             # distance 4 of 8: NL 0.5 is not < 0.5
    (["april"], [["March 10", "April"]], 1.0),                   # the best reference counts
    ([""], [["7"]], 0.0),
    (["7", "x"], [["7"], ["8"]], 0.5),                           # the mean over questions
    (["Mr. Smith"], [["John Smith"]], 1 - 4 / 10),
    (["Zürich"], [["zurich"]], 1 - 1 / 6),                       # code points, not bytes
]


@pytest.mark.parametrize("predictions,references,expected", ANLS_CASES)
def test_notebook_anls_equals_the_package_on_hand_cases(nb02, predictions, references, expected):
    ours = nb02["anls"](predictions, references)
    assert math.isclose(ours, expected, abs_tol=1e-12)
    assert math.isclose(ours, metrics.anls(predictions, references), abs_tol=1e-12)


def test_notebook_anls_equals_the_package_on_random_strings(nb02):
    rng = random.Random(0)
    alphabet = "abAB 12.,$"
    words = lambda: "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))  # noqa: E731
    predictions = [words() for _ in range(300)]
    references = [[words() or "x" for _ in range(rng.randint(1, 3))] for _ in range(300)]
    for threshold in (0.5, 0.3):
        assert math.isclose(nb02["anls"](predictions, references, threshold=threshold),
                            metrics.anls(predictions, references, threshold=threshold), abs_tol=1e-12)


def test_notebook_training_step_is_one_step_of_the_package_loop(nb02, no_dropout_cache, docvqa_rows, tmp_path):
    """Same rows, same accumulation window of 2 micro-batches of 2: the notebook's step and
    ``loop.train`` report the same loss and leave the same weights."""
    from vlm_helpers.tiny import tiny_checkpoint

    path = tiny_checkpoint("florence2", no_dropout_cache)
    config = loop.TrainConfig(output_dir=str(tmp_path / "loop"), learning_rate=1e-3, max_steps=1, batch_size=2,
                              grad_accum=2, warmup_steps=0, max_grad_norm=1.0, seed=3, progress=False)
    torch.manual_seed(0)
    model, processor = florence2.load_florence2(path, dtype=torch.float32)
    collator = florence2.Florence2Collator(processor, answer_choice="first")
    state = loop.train(model, docvqa_rows, collator, config)

    torch.manual_seed(0)
    ours, _ = florence2.load_florence2(path, dtype=torch.float32)
    ours.train()
    order = loop.epoch_indices(len(docvqa_rows), seed=config.seed, epoch=0, batch_size=2)[:2]
    window = [collator([docvqa_rows[i] for i in batch]) for batch in order]
    tokens = [int(batch["labels"].ne(-100).sum()) for batch in window]
    assert tokens[0] != tokens[1], "micro-batches of different answer lengths tell the two averages apart"
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    initial = {name: p.detach().clone() for name, p in ours.named_parameters()}
    step_loss = nb02["training_step"](ours, optimizer, window, max_grad_norm=config.max_grad_norm)

    assert math.isclose(step_loss, state.history[0]["loss"], rel_tol=1e-5)
    for (name, theirs), mine in zip(model.named_parameters(), ours.parameters()):
        assert torch.allclose(theirs, mine, atol=1e-6), name
    moved = [name for name, p in ours.named_parameters() if not torch.equal(p, initial[name])]
    assert len(moved) > len(initial) // 2, "the step changed the weights"


def test_notebook_token_loss_sum_equals_the_package(nb02):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    labels[0, 3:] = -100
    labels[2, 1:] = -100
    assert torch.allclose(nb02["token_loss_sum"](logits, labels), loop.token_loss_sum(logits, labels))


# ---------------------------------------------------------------------------------- notebook 03


def _chat_rows() -> list[dict]:
    from PIL import Image

    answers = [["7"], ["Acme Corp"], ["March 10, 1990", "03/10/1990"], ["The annual budget review"]]
    questions = ["What is the page number?", "Who sent it?", "What is the date?", "What is the subject?"]
    return [{"questionId": 10 + i, "question": q, "answers": a, "image": Image.new("RGB", (40 + 12 * i, 64), c)}
            for i, (q, a, c) in enumerate(zip(questions, answers, [(200, 30, 30), (30, 200, 30),
                                                                    (30, 30, 200), (90, 90, 90)]))]


@pytest.mark.parametrize("name", ["idefics2", "llava-phi3"])
def test_notebook_chat_labels_equal_chat_collator(tiny_cache, name):
    from vlm_helpers.chat_collator import ChatVLMCollator
    from vlm_helpers.lora import load_chat_processor
    from vlm_helpers.tiny import tiny_checkpoint

    chat_labels = lesson("03_idefics2_qlora_docvqa.ipynb")["chat_labels"]
    processor = load_chat_processor(tiny_checkpoint(name, tiny_cache))
    collator = ChatVLMCollator(processor, instruction="Answer briefly.", answer_choice="first")
    rows = _chat_rows()
    batch = collator(rows)
    prompt_lengths = [len(ids) for ids in collator.prompt_ids(rows)]
    ours = chat_labels(batch["input_ids"], batch["attention_mask"], prompt_lengths, collator.end_of_turn_id,
                       collator.vision_ids)
    assert torch.equal(ours, batch["labels"])
    assert (batch["attention_mask"] == 0).any(), "rows of different lengths, so padding is compared"
    kept = [processor.tokenizer.decode(row[row != -100]) for row in ours]
    assert [k.endswith(collator.end_of_turn) for k in kept] == [True] * len(rows)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_notebook_quantization_config_equals_the_package(dtype):
    """The ``BitsAndBytesConfig`` notebook 03 writes out is the one ``lora.bnb_4bit_config`` builds, and the
    loader accepts it; a config of another kind or compute dtype is refused by name."""
    from transformers import BitsAndBytesConfig

    from vlm_helpers import lora

    ours = lesson("03_idefics2_qlora_docvqa.ipynb")["qlora_quantization"](dtype)
    assert ours.to_dict() == lora.bnb_4bit_config(dtype).to_dict()
    assert lora.check_quantization_config(ours, dtype) is ours
    with pytest.raises(ValueError, match="4 bits"):
        lora.check_quantization_config(BitsAndBytesConfig(load_in_8bit=True), dtype)
    other = torch.bfloat16 if dtype != torch.bfloat16 else torch.float16
    with pytest.raises(ValueError, match="computes in"):
        lora.check_quantization_config(ours, other)


def test_notebook_lora_config_equals_the_package_and_add_lora_takes_it(tiny_cache):
    """The ``LoraConfig`` of notebook 03's lesson is :func:`lora.build_lora_config` of the same settings, and
    ``add_lora(lora_config=...)`` adapts exactly the modules ``add_lora(target_modules=...)`` does; settings
    given both ways, or a config without targets, are refused."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText

    from vlm_helpers import lora
    from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS
    from vlm_helpers.tiny import tiny_checkpoint

    lora_adapters = lesson("03_idefics2_qlora_docvqa.ipynb")["lora_adapters"]
    ours = lora_adapters(IDEFICS2_LORA_TARGETS, r=8, alpha=16, dropout=0.1, modules_to_save=["lm_head"])
    theirs = lora.build_lora_config(IDEFICS2_LORA_TARGETS, r=8, alpha=16, dropout=0.1, modules_to_save=["lm_head"],
                                    init_lora_weights="gaussian")
    assert ours.to_dict() == theirs.to_dict()

    def fresh():
        return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint("idefics2", tiny_cache))

    by_config = lora.add_lora(fresh(), lora_config=lora_adapters(IDEFICS2_LORA_TARGETS, r=4, alpha=4, dropout=0.0),
                              quantized=False)
    by_arguments = lora.add_lora(fresh(), target_modules=IDEFICS2_LORA_TARGETS, r=4, alpha=4, dropout=0.0,
                                 init_lora_weights="gaussian", quantized=False)
    assert lora.lora_module_names(by_config) == lora.lora_module_names(by_arguments)
    assert by_config.peft_config["default"].to_dict() == by_arguments.peft_config["default"].to_dict()
    with pytest.raises(ValueError, match="not both"):
        lora.add_lora(fresh(), lora_config=ours, r=4, quantized=False)
    with pytest.raises(ValueError, match="no target_modules"):
        lora.add_lora(fresh(), lora_config=LoraConfig(r=4), quantized=False)
    with pytest.raises(ValueError, match="needs target_modules"):
        lora.add_lora(fresh(), quantized=False)


# ---------------------------------------------------------------------------------- notebook 06


@pytest.fixture(scope="module")
def nb06():
    return lesson("06_your_data_your_model.ipynb")


@pytest.mark.parametrize("n_rows, fraction, seed", [(10, 0.1, 0), (57, 0.12, 3), (57, 0.11, 3), (400, 0.1, 43), (3, 0.5, 7)])
def test_notebook_held_out_rows_are_the_ones_the_package_holds_out(nb06, n_rows, fraction, seed):
    import datasets

    from vlm_helpers.data.splits import split_off_validation

    rows = datasets.Dataset.from_dict({"row": list(range(n_rows))})
    train, held, _ = split_off_validation(rows, fraction=fraction, seed=seed)
    assert list(held["row"]) == nb06["held_out_rows"](n_rows, fraction, seed)
    assert sorted(list(train["row"]) + list(held["row"])) == list(range(n_rows))


def test_notebook_keep_best_rule_is_the_callbacks(nb06):
    """On random score sequences with ties and NaNs, for a metric to maximise and one to minimise."""
    from vlm_helpers import best_checkpoint

    rng = random.Random(4)
    for _ in range(300):
        scores = [rng.choice([0.1, 0.2, 0.2, 0.5, float("nan"), float("inf"), rng.random()])
                  for _ in range(rng.randint(0, 8))]
        log = [{"step": 10 * (i + 1), "val_anls": value} for i, value in enumerate(scores)]
        for greater in (True, False):
            assert nb06["evaluations_since_best"](scores, greater_is_better=greater) == \
                best_checkpoint.evaluations_without_improvement(log, "val_anls", greater_is_better=greater)
            best = None
            for value in scores:
                assert nb06["beats_best"](value, best, greater_is_better=greater) == \
                    best_checkpoint.is_improvement(value, best, greater_is_better=greater)
                best = value if best_checkpoint.is_improvement(value, best, greater_is_better=greater) else best
    assert not nb06["beats_best"](0.5, 0.5) and nb06["beats_best"](0.4, 0.5, greater_is_better=False)


# ---------------------------------------------------------------------------------- notebook 04


def test_notebook_lora_targets_equal_the_package_pattern(tiny_cache):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForImageTextToText

    from vlm_helpers.llava_phi3 import LLAVA_PHI3_LORA_TARGETS
    from vlm_helpers.lora import add_lora, lora_module_names
    from vlm_helpers.tiny import tiny_checkpoint

    lora_targets = lesson("04_phi3_aircraft_captioning.ipynb")["lora_targets"]
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint("llava-phi3", tiny_cache))
    ours = lora_targets(model)
    config = LoraConfig(target_modules=LLAVA_PHI3_LORA_TARGETS)
    pattern = sorted(name for name, _ in model.named_modules() if name and check_target_module_exists(config, name))
    assert ours == pattern
    layers = model.config.text_config.num_hidden_layers
    assert len(ours) == 7 * layers and not any("vision" in name for name in ours)
    adapted = add_lora(model, target_modules=LLAVA_PHI3_LORA_TARGETS, r=4, alpha=4, dropout=0.0, quantized=False,
                       gradient_checkpointing=False)
    assert sorted(name.removeprefix("base_model.model.") for name in lora_module_names(adapted)) == ours


# ---------------------------------------------------------------------------------- notebooks 01, 05


def test_notebook_location_tokens_equal_the_package():
    location_tokens = lesson("01_baseline_inference.ipynb")["location_tokens"]
    rng = random.Random(1)
    for _ in range(200):
        width, height = rng.randint(1, 2000), rng.randint(1, 2000)
        x0, x1 = sorted(rng.uniform(-10, width + 10) for _ in range(2))
        y0, y1 = sorted(rng.uniform(-10, height + 10) for _ in range(2))
        box = (x0, y0, x1, y1)
        assert location_tokens(box, (width, height)) == florence2.box_to_location_tokens(box, (width, height))
    assert location_tokens((0, 0, 768, 192), (768, 768)) == "<loc_0><loc_0><loc_999><loc_250>"


def test_notebook_smoothing_equals_the_package_on_irregular_logging():
    from vlm_helpers import plotting

    smooth = lesson("05_before_after_comparison.ipynb")["smooth_by_steps"]
    rng = random.Random(2)
    steps = list(range(1, 30)) + list(range(30, 200, 10)) + [201, 202]  # dense, then sparse, then dense
    values = [10 / step + rng.random() for step in steps]
    for window in (1, 5, 10, 40):
        ours, theirs = smooth(steps, values, window), plotting.smooth_by_steps(steps, values, window)
        assert ours[0] == theirs[0] == sorted(steps)
        assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(ours[1], theirs[1]))
    assert smooth([3, 1, 2], [30.0, 10.0, 20.0], 2) == ([1, 2, 3], [15.0, 20.0, 25.0])
