"""Pinned revisions (issue 26): every default Hub checkpoint and dataset is loaded at the commit in the table.

``vlm_helpers/tiny/real_configs/revisions.json`` pins each default id to a commit read from a stored Hub page.
The tests here check, with nothing downloaded:

- the table covers exactly the series' default ids, each pin 40 hex digits traceable to the page recorded with it
  (or marked "none found"), and ships with the package;
- every ``from_pretrained`` a model loader makes for a default id passes the pinned ``revision=``: the real
  transformers entry points are wrapped to record their arguments and to read the tiny twin's folder instead of
  the Hub, so each loader runs through to the end on a CPU;
- every ``datasets.load_dataset`` the dataset loaders make does too (the Hub replaced by synthetic rows);
- a revision you give wins, your own ids load unpinned with one printed line, local folders get no revision and
  print nothing (tiny mode stays quiet);
- no notebook cell or package module loads a default id past the loaders without a revision (source scan), the
  notebooks show the pin in their parameters cell and pass it to their loaders, and the README lists the pins.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import datasets
import pytest

from vlm_helpers import florence2, lora, revisions
from vlm_helpers.data import aircraft, cauldron, docvqa, formats, sources
from vlm_helpers.florence2 import FLORENCE2_MODEL_ID
from vlm_helpers.llava_phi3 import LLAVA_PHI3_MODEL_ID
from vlm_helpers.lora import IDEFICS2_MODEL_ID
from vlm_helpers.lora_targets import IDEFICS2_LORA_TARGETS
from vlm_helpers.model_choices import MODEL_CHOICES

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HEX40 = re.compile(r"[0-9a-f]{40}")
MISSING = "<no revision passed>"

DEFAULT_MODELS = {FLORENCE2_MODEL_ID, IDEFICS2_MODEL_ID, LLAVA_PHI3_MODEL_ID} | {
    choice.model_id for choice in MODEL_CHOICES.values()}
DEFAULT_DATASETS = {docvqa.DOCVQA_ID, docvqa.DOCVQA_1200_ID, aircraft.TRAIN_DATASET_ID, aircraft.TEST_DATASET_ID,
                    cauldron.CAULDRON_DATASET_ID}
#: Calls that fetch from the Hub by id.
HUB_LOADS = {"from_pretrained", "load_dataset", "snapshot_download", "hf_hub_download"}
#: The series' loaders of a model, whose notebook calls must carry the pin.
MODEL_LOADERS = {"load_florence2", "load_chat_vlm", "load_chat_processor", "load_adapter", "merge_for_export"}


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees its own "at revision ..." lines (they are printed once per process)."""
    monkeypatch.setattr(revisions, "_SAID", set())


# ------------------------------------------------------------------------------------------------- the table

def notebook_code(path: Path) -> list[str]:
    """The code cells of a notebook as Python: shell and magic lines become ``pass``."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        code.append("\n".join(line[: len(line) - len(line.lstrip())] + "pass"
                              if line.lstrip().startswith(("!", "%")) else line for line in lines))
    return code


def notebook_hub_ids() -> set[str]:
    """Hub ids a notebook assigns to a ``..._ID`` parameter (``MODEL_ID = "org/name"``)."""
    found = set()
    for path in NOTEBOOKS:
        for code in notebook_code(path):
            for node in ast.walk(ast.parse(code)):
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and isinstance(node.value.value, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", node.value.value)
                        and any(isinstance(t, ast.Name) and t.id.endswith("_ID") for t in node.targets)):
                    found.add(node.value.value)
    return found


def test_the_table_pins_every_default_id_to_a_commit_a_page_shows():
    table = revisions.pinned_revisions()
    assert notebook_hub_ids() <= DEFAULT_MODELS | DEFAULT_DATASETS  # the notebooks' ids are the package's
    assert set(table) == DEFAULT_MODELS | DEFAULT_DATASETS
    for repo_id, entry in table.items():
        assert entry["kind"] == ("model" if repo_id in DEFAULT_MODELS else "dataset"), repo_id
        assert entry["read"], repo_id
        revision = entry["revision"]
        if revision is None:  # said plainly, never invented
            assert entry["checked"].startswith("pin: none found"), repo_id
            continue
        assert HEX40.fullmatch(revision), (repo_id, revision)
        assert entry["source"].startswith("https://huggingface.co/"), repo_id
        # traceable: the recorded page shows the commit, at least by its short hash
        shown = " ".join(str(entry.get(key)) for key in ("source", "page_date", "checked"))
        assert revision[:7] in shown, (repo_id, revision)
        if revision not in entry["source"]:  # the full hash then comes from a file that quotes it
            assert revision in entry["full_hash_from"], repo_id
    assert revisions.pinned_revision("someone/not-a-default") is None


def test_the_table_ships_with_the_package():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    tiny = ROOT / "vlm_helpers" / "tiny"
    shipped = {path for pattern in patterns["vlm_helpers.tiny"] for path in tiny.glob(pattern)}
    assert revisions.REVISIONS_FILE in shipped


# ------------------------------------------------------------------------------------------------ the models

@pytest.fixture
def hub_models(monkeypatch):
    """Wrap the transformers entry points the loaders use: record ``(class, id or folder, revision)`` of every
    call, and read a redirected Hub id from its local folder (``redirect[id] = folder``) instead of the Hub."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    calls, redirect = [], {}

    def wrap(owner):
        defining = next(klass for klass in owner.__mro__ if "from_pretrained" in klass.__dict__)
        original = defining.__dict__["from_pretrained"].__func__

        def from_pretrained(cls, path, *args, **kwargs):
            calls.append((owner.__name__, str(path), kwargs.get("revision", MISSING)))
            if isinstance(path, str) and path in redirect:
                kwargs.pop("revision", None)  # the tiny twin's folder has no commits
                path = redirect[path]
            return original(cls, path, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(from_pretrained))

    for owner in (transformers.AutoConfig, transformers.AutoProcessor, transformers.AutoImageProcessor,
                  transformers.AutoModelForImageTextToText, ProcessorMixin):  # ProcessorMixin: image-only processors
        wrap(owner)
    return calls, redirect


def hub_calls(calls, repo_id):
    return [(owner, revision) for owner, path, revision in calls if path == repo_id]


def _load(choice, **revision):
    """Load a model choice's default id with its loader, as full mode does (``revision=`` only if given)."""
    if choice.kind == "florence2":
        return florence2.load_florence2(choice.model_id, dtype="float32", **revision)
    longest_edge = {"image_longest_edge": 490} if choice.key == "idefics2" else {}  # + AutoImageProcessor
    return lora.load_chat_vlm(choice.model_id, dtype="float32", attn_implementation="sdpa", quantize_4bit=False,
                              image_budget=choice.image_budget("t4"), **longest_edge, **revision)


@pytest.mark.parametrize("key", sorted(MODEL_CHOICES))
def test_every_hub_call_of_a_model_loader_carries_the_pin(key, hub_models, tiny_cache, capsys):
    from vlm_helpers.tiny import tiny_checkpoint

    calls, redirect = hub_models
    choice = MODEL_CHOICES[key]
    redirect[choice.model_id] = str(tiny_checkpoint(choice.tiny_name, tiny_cache))
    model, processor = _load(choice)
    assert model is not None and processor is not None  # the loader ran to its end

    made = hub_calls(calls, choice.model_id)
    owners = {owner for owner, _ in made}
    assert {"AutoConfig", "AutoModelForImageTextToText"} <= owners and owners & {"AutoProcessor", "ProcessorMixin"}
    if key == "idefics2":
        assert "AutoImageProcessor" in owners
    pin = revisions.pinned_revision(choice.model_id)
    assert {revision for _, revision in made} == {pin or MISSING}, made
    out = capsys.readouterr().out
    said = f"{choice.model_id} at revision {pin} (pinned)" if pin else f"{choice.model_id}: unpinned"
    assert out.count(said) == 1, out  # one line, however many files were read


def test_the_adapter_loaders_load_the_base_at_its_pin(hub_models, tiny_cache, tmp_path):
    from vlm_helpers.tiny import tiny_checkpoint

    calls, redirect = hub_models
    folder = str(tiny_checkpoint("idefics2", tiny_cache))
    redirect[IDEFICS2_MODEL_ID] = folder
    base, _ = lora.load_chat_vlm(folder, dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    adapter = tmp_path / "adapter"
    lora.add_lora(base, target_modules=IDEFICS2_LORA_TARGETS, quantized=False).save_pretrained(adapter)  # no processor
    pin = revisions.pinned_revision(IDEFICS2_MODEL_ID)

    calls.clear()
    lora.load_adapter(IDEFICS2_MODEL_ID, adapter, dtype="float32", attn_implementation="sdpa", quantize_4bit=False)
    made = hub_calls(calls, IDEFICS2_MODEL_ID)
    assert "AutoModelForImageTextToText" in {owner for owner, _ in made}
    assert {revision for _, revision in made} == {pin}

    calls.clear()
    lora.merge_for_export(IDEFICS2_MODEL_ID, adapter, tmp_path / "merged", dtype="float32")
    made = hub_calls(calls, IDEFICS2_MODEL_ID)
    owners = {owner for owner, _ in made}
    assert "AutoModelForImageTextToText" in owners and owners & {"AutoProcessor", "ProcessorMixin"}  # base's processor
    assert {revision for _, revision in made} == {pin}


def test_a_revision_you_give_wins(hub_models, tiny_cache, capsys):
    from vlm_helpers.tiny import tiny_checkpoint

    calls, redirect = hub_models
    redirect[IDEFICS2_MODEL_ID] = str(tiny_checkpoint("idefics2", tiny_cache))
    mine = "c" * 40
    _load(MODEL_CHOICES["idefics2"], revision=mine)
    assert {revision for _, revision in hub_calls(calls, IDEFICS2_MODEL_ID)} == {mine}
    assert capsys.readouterr().out.count(f"{IDEFICS2_MODEL_ID} at revision {mine} (yours)") == 1


def test_your_own_model_loads_unpinned_with_one_line(hub_models, tiny_cache, capsys):
    from vlm_helpers.tiny import tiny_checkpoint

    calls, redirect = hub_models
    redirect["someone/my-florence"] = str(tiny_checkpoint("florence2", tiny_cache))
    florence2.load_florence2("someone/my-florence", dtype="float32")
    assert {revision for _, revision in hub_calls(calls, "someone/my-florence")} == {MISSING}
    assert capsys.readouterr().out.count("someone/my-florence: unpinned") == 1


def test_local_folders_get_no_revision_and_print_nothing(hub_models, tiny_cache, capsys):
    from vlm_helpers.tiny import tiny_checkpoint

    calls, _ = hub_models
    folder = tiny_checkpoint("florence2", tiny_cache)
    florence2.load_florence2(folder, dtype="float32", revision="d" * 40)  # a notebook's REVISION, in tiny mode
    assert calls and {revision for *_, revision in calls} <= {MISSING, None}  # (transformers passes None inside)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------- the datasets

def _docvqa_1200(n: int) -> datasets.Dataset:
    from PIL import Image

    return datasets.Dataset.from_dict({
        "id": [f"q{i}" for i in range(n)], "image": [Image.new("L", (40, 30), 40 * i) for i in range(n)],
        "query": [{"de": "?", "en": f"What is item {i}?", "es": "?", "fr": "?", "it": "?"} for i in range(n)],
        "answers": [[f"answer {i}"] for i in range(n)]})


def _fake_rows(path: str, name: str | None) -> datasets.Dataset:
    from vlm_helpers.tiny.synthetic_aircraft import make_synthetic_fgvc
    from vlm_helpers.tiny.synthetic_cauldron import make_synthetic_cauldron
    from vlm_helpers.tiny.synthetic_docvqa import make_synthetic_docvqa

    if path == docvqa.DOCVQA_1200_ID:
        return _docvqa_1200(4)
    if path in (aircraft.TRAIN_DATASET_ID, aircraft.TEST_DATASET_ID):
        return make_synthetic_fgvc(40, seed=len(path), image_size=(32, 24))
    if path == cauldron.CAULDRON_DATASET_ID:
        return make_synthetic_cauldron(2, subsets=[name])[name]
    return make_synthetic_docvqa(4)


@pytest.fixture
def hub_datasets(monkeypatch):
    """``datasets.load_dataset`` replaced: record ``(id, config, revision)`` and serve synthetic rows."""
    calls = []

    def load_dataset(path, name=None, *, split=None, streaming=False, cache_dir=None, **kwargs):
        calls.append((path, name, kwargs.get("revision", MISSING)))
        rows = _fake_rows(path, name)
        return rows.to_iterable_dataset() if streaming else rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_every_dataset_loader_passes_the_pin(hub_datasets, capsys):
    sources.docvqa_dataset("validation", tiny=False)  # the whole split
    docvqa.load_docvqa("train", max_samples=2)  # the first rows, streamed
    docvqa.load_docvqa("train", max_samples=2, streaming=True)  # its own streaming call
    sources.docvqa_dataset("train", tiny=False, dataset_id=docvqa.DOCVQA_1200_ID)
    sources.aircraft_dataset(tiny=False, verbose=False)  # two repositories
    sources.cauldron_dataset(("docvqa", "ai2d"), tiny=False, max_samples=2)  # one call per subset
    formats.load_your_data(docvqa.DOCVQA_ID, formats.Columns(answer="answers"), format="hf", split="validation")
    assert {path for path, _, _ in hub_datasets} == DEFAULT_DATASETS
    assert len(hub_datasets) == 9
    for path, _, revision in hub_datasets:
        assert revision == revisions.pinned_revision(path), path
    out = capsys.readouterr().out
    for path in DEFAULT_DATASETS:
        assert out.count(f"{path} at revision {revisions.pinned_revision(path)} (pinned)") == 1, out


def test_your_own_dataset_loads_at_your_revision_or_unpinned_with_one_line(hub_datasets, capsys):
    columns = formats.Columns(answer="answers")
    formats.load_your_data("someone/receipts", columns, format="hf", split="train")
    formats.load_your_data("someone/receipts", columns, format="hf", split="train")
    formats.load_your_data("someone/receipts", columns, format="hf", split="train", revision="e" * 40)
    sources.aircraft_dataset(tiny=False, verbose=False, test_revision="main")
    assert [revision for *_, revision in hub_datasets] == [
        MISSING, MISSING, "e" * 40, revisions.pinned_revision(aircraft.TRAIN_DATASET_ID), "main"]
    out = capsys.readouterr().out
    assert out.count("someone/receipts: unpinned") == 1
    assert f"someone/receipts at revision {'e' * 40} (yours)" in out
    assert f"{aircraft.TEST_DATASET_ID} at revision main (yours)" in out


# ---------------------------------------------------------------------------------- the source, the notebooks

def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _names_of_default_ids(trees) -> set[str]:
    """Names and attributes that hold a default id: constants (``FLORENCE2_MODEL_ID``), notebook parameters
    (``MODEL_ID``, ``FLORENCE_ID``), names assigned from one of those, and a model choice's ``model_id``."""
    defaults = DEFAULT_MODELS | DEFAULT_DATASETS
    names = {"model_id"}
    for _ in range(3):  # MODEL_ID = IDEFICS2_MODEL_ID = "..." : follow a chain of assignments
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Assign):
                    continue
                value = node.value
                holds = ((isinstance(value, ast.Constant) and value.value in defaults)
                         or (isinstance(value, ast.Name) and value.id in names)
                         or (isinstance(value, ast.Attribute) and value.attr in names))
                if holds:
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def unpinned_loads(sources_by_name: dict[str, str]) -> list[str]:
    """``from_pretrained`` / ``load_dataset`` / ... calls on a default id (a literal, or a name holding one)
    without ``revision=`` (or ``**revision_kwargs(...)``, or ``**hub`` assigned from it)."""
    trees = {where: ast.parse(code) for where, code in sources_by_name.items()}
    defaults, names = DEFAULT_MODELS | DEFAULT_DATASETS, _names_of_default_ids(trees.values())
    found = []
    for where, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _call_name(node) in HUB_LOADS and node.args):
                continue
            first = node.args[0]
            default = ((isinstance(first, ast.Constant) and first.value in defaults)
                       or (isinstance(first, ast.Name) and first.id in names)
                       or (isinstance(first, ast.Attribute) and first.attr in names))
            pinned = any(k.arg == "revision" or (k.arg is None and (
                (isinstance(k.value, ast.Call) and _call_name(k.value) == "revision_kwargs")
                or (isinstance(k.value, ast.Name) and k.value.id == "hub"))) for k in node.keywords)
            if default and not pinned:
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_the_scan_finds_a_load_that_bypasses_the_pin():
    code = ('MODEL_ID = "HuggingFaceM4/idefics2-8b"\nCHECKPOINT = MODEL_ID\n'
            'a = AutoProcessor.from_pretrained(CHECKPOINT)\n'
            'b = datasets.load_dataset(TRAIN_DATASET_ID, split="train")\n'
            'TRAIN_DATASET_ID = "Multimodal-Fatima/FGVC_Aircraft_train"\n'
            'c = AutoProcessor.from_pretrained(MODEL_ID, revision=REVISION)\n'
            'd = datasets.load_dataset(TRAIN_DATASET_ID, **revision_kwargs(TRAIN_DATASET_ID, None))\n'
            'e = AutoProcessor.from_pretrained("someone/else")\n')
    assert [line.split(":")[1] for line in unpinned_loads({"cell": code})] == ["3", "4"]


def test_no_notebook_or_module_loads_a_default_id_past_the_pin():
    code = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
            for path in sorted((ROOT / "vlm_helpers").rglob("*.py"))}
    for path in NOTEBOOKS:
        for number, cell in enumerate(notebook_code(path)):
            code[f"{path.name} cell {number}"] = cell
    assert unpinned_loads(code) == []


@pytest.mark.parametrize("path", [path for path in NOTEBOOKS if path.name[:2] in {"01", "02", "03", "04", "06"}],
                         ids=lambda path: path.name[:2])
def test_each_notebook_shows_the_pin_and_passes_it_to_its_loaders(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    headings = [i for i, cell in enumerate(cells) if cell["cell_type"] == "markdown"
                and "".join(cell["source"]).startswith("## Parameters")]
    parameters = next(cell for cell in cells[headings[0]:] if cell["cell_type"] == "code")
    text = "".join(parameters["source"])
    assert re.search(r"^\w*REVISION = ", text, flags=re.M), "the parameters cell sets the revision"
    assert '"main"' in text and "Pinned revisions" in text, "and says how to change it"

    trees = [ast.parse(code) for code in notebook_code(path)]
    carries = set()  # dicts built with revision=, e.g. LOAD_KWARGS = dict(..., revision=REVISION)
    hub_ids = _names_of_default_ids(trees)  # + what full mode loads from the Hub: checkpoint = resolve_checkpoint(...)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                targets = {t.id for t in node.targets if isinstance(t, ast.Name)}
                if any(k.arg == "revision" for k in node.value.keywords):
                    carries |= targets
                if _call_name(node.value) == "resolve_checkpoint":
                    hub_ids |= targets
    loads = [node for tree in trees for node in ast.walk(tree)  # of a Hub id; a saved folder takes no revision
             if isinstance(node, ast.Call) and _call_name(node) in MODEL_LOADERS
             and isinstance(node.args[0], ast.Name) and node.args[0].id in hub_ids]
    assert loads
    for node in loads:
        assert any(k.arg == "revision" or (k.arg is None and isinstance(k.value, ast.Name) and k.value.id in carries)
                   for k in node.keywords), ast.unparse(node)


def test_the_readme_lists_every_pin():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## Pinned revisions\n" in readme
    section = readme.split("\n## Pinned revisions\n", 1)[1].split("\n## ", 1)[0]
    for repo_id, entry in revisions.pinned_revisions().items():
        row = next((line for line in section.splitlines() if f"`{repo_id}`" in line), None)
        assert row is not None, repo_id
        assert (entry["revision"] or "none found") in row, repo_id
        assert entry["source"] is None or entry["source"] in row, repo_id
    assert '"main"' in section  # how to change a pin
