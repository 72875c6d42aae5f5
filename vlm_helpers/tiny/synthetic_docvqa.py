"""Synthetic DocVQA: rendered pages with questions about them, in the real dataset's columns (tiny mode).

Used by ``notebooks/02_florence2_docvqa.ipynb`` and ``03`` in tiny mode, through
:func:`vlm_helpers.data.sources.docvqa_dataset`. :func:`make_synthetic_docvqa` draws documents with
Pillow (:mod:`vlm_helpers.tiny.render`) and asks questions about them, with exactly the columns and
feature types of ``HuggingFaceM4/DocumentVQA`` (:data:`vlm_helpers.data.docvqa.DOCVQA_FEATURES`).

The data is built to be learnable by a tiny model in a few dozen steps: most questions come
from :data:`QUESTION_TEMPLATES` whose answers are drawn from small pools (so the question alone
already narrows the answer down), the document type shows as a coloured band / stripe /
letterhead (so a model that sees the page does better still), and a few harder questions
(totals, dates, quantities) need actual reading. Every first answer is printed on its page.
"""

from __future__ import annotations

import calendar
import datetime
import io
import random
import zlib
from dataclasses import dataclass

import datasets
from PIL import Image as PILImage

from vlm_helpers.data.docvqa import DOCVQA_FEATURES
from vlm_helpers.tiny.render import LAYOUTS, DocumentSpec, Fonts, load_fonts, render_document

#: Rows per synthetic split when ``docvqa_dataset(..., tiny=True)`` gets no ``max_samples``.
TINY_NUM_ROWS = {"train": 200, "validation": 50}

# ---------------------------------------------------------------- answer pools
# (value, weight) pairs: skewed pools mean even "always say the most common
# answer" scores above zero, which is what a model learns first.
COMPANIES = (("Acme Corp", 1), ("Globex Inc", 1), ("Initech", 1), ("Umbrella Labs", 1), ("Stark Supply", 1))
COMPANY_COLOURS = {
    "Acme Corp": (220, 60, 50),
    "Globex Inc": (240, 170, 30),
    "Initech": (70, 170, 220),
    "Umbrella Labs": (120, 60, 160),
    "Stark Supply": (60, 60, 60),
}
SENDERS = (("John Smith", 1), ("Mary Jones", 1), ("David Lee", 1), ("Susan Clark", 1))
RECIPIENTS = (("Robert Brown", 1), ("Linda Green", 1), ("James White", 1), ("Karen Hall", 1))
CURRENCIES = (("USD", 6), ("EUR", 3), ("GBP", 2))
# Pillow's bundled font has ASCII glyphs only, so euro and pound amounts use the code.
CURRENCY_PREFIXES = {"USD": "$", "EUR": "EUR ", "GBP": "GBP "}
DEPARTMENTS = (("Research", 1), ("Finance", 1), ("Marketing", 1), ("Legal", 1), ("Operations", 1))
STATUSES = (("Approved", 5), ("Pending", 3), ("Rejected", 2))
SUBJECTS = (
    ("Annual budget review", 1),
    ("Quarterly sales report", 1),
    ("Equipment order", 1),
    ("Meeting schedule", 1),
    ("Research proposal", 1),
)
PAGE_NUMBERS = (("1", 5), ("2", 3), ("3", 2))
ITEMS = ("Paper", "Toner", "Folders", "Pens", "Labels", "Binders", "Staples")


@dataclass(frozen=True)
class QuestionTemplate:
    """One kind of question.

    Attributes:
        key: short name, also the key of the answer in a document's facts.
        question: question text; ``{item}`` is filled in for the quantity template.
        question_types: DocVQA question-type labels for this question.
        layouts: layouts whose pages print the answer.
        weight: relative chance of being asked about a document.
        pool: the possible answers, for display; ``None`` for open-ended ones.

    Why answers come from small pools: ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Does it read
    the page?" (a tiny model can answer from the question alone).
    """

    key: str
    question: str
    question_types: tuple[str, ...]
    layouts: tuple[str, ...]
    weight: int = 1
    pool: tuple[str, ...] | None = None


def _values(pool: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    return tuple(value for value, _ in pool)


#: The fixed question list: nine easy templates with small answer pools, three
#: that need reading (numbers and dates). Type labels use DocVQA's vocabulary.
QUESTION_TEMPLATES: tuple[QuestionTemplate, ...] = (
    QuestionTemplate("doc_type", "What type of document is this?", ("layout",), LAYOUTS, 3, LAYOUTS),
    QuestionTemplate("company", "What is the name of the company?", ("layout",), LAYOUTS, 2, _values(COMPANIES)),
    QuestionTemplate("sender", "Who is the sender?", ("form",), LAYOUTS, 1, _values(SENDERS)),
    QuestionTemplate("recipient", "Who is the recipient?", ("form",), LAYOUTS, 1, _values(RECIPIENTS)),
    QuestionTemplate("currency", "What currency is used?", ("form",), ("invoice", "form"), 1, _values(CURRENCIES)),
    QuestionTemplate("department", "Which department is named?", ("form",), LAYOUTS, 1, _values(DEPARTMENTS)),
    QuestionTemplate("status", "What is the handwritten status?", ("handwritten",), LAYOUTS, 1, _values(STATUSES)),
    QuestionTemplate("subject", "What is the subject?", ("free_text",), ("form", "letter"), 1, _values(SUBJECTS)),
    QuestionTemplate("page", "What is the page number?", ("others",), LAYOUTS, 1, _values(PAGE_NUMBERS)),
    QuestionTemplate("total", "What is the total amount?", ("table/list",), ("invoice", "form")),
    QuestionTemplate("date", "What is the date?", ("form",), LAYOUTS),
    QuestionTemplate("quantity", "What is the quantity of {item}?", ("table/list",), LAYOUTS),
)


@dataclass(frozen=True)
class SyntheticDocument:
    """One synthetic page: what is printed on it and the questions asked about it.

    ``questions`` holds ``(question, answers, question_types)`` triples;
    ``answers[0]`` is printed on the page verbatim, later answers are other
    accepted spellings (e.g. without the currency sign, or another date format). The pages of tiny mode
    in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """

    spec: DocumentSpec
    ucsf_document_id: str
    page_no: str
    questions: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]


def sample_document(rng: random.Random, *, min_questions: int = 3, max_questions: int = 5) -> SyntheticDocument:
    """Draw one page's content and ``min_questions``..``max_questions`` questions about it.

    For tiny mode of ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents".
    """
    layout = rng.choice(LAYOUTS)
    company = _pick(rng, COMPANIES)
    sender = _pick(rng, SENDERS)
    recipient = _pick(rng, RECIPIENTS)
    currency = _pick(rng, CURRENCIES)
    department = _pick(rng, DEPARTMENTS)
    status = _pick(rng, STATUSES)
    subject = _pick(rng, SUBJECTS)
    page_no = _pick(rng, PAGE_NUMBERS)
    page_count = int(page_no) + rng.randint(0, 2)
    ucsf_id = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4)) + f"{rng.randint(0, 9999):04d}"
    date = datetime.date(rng.randint(1990, 1999), rng.randint(1, 12), rng.randint(1, 28))
    long_date = f"{calendar.month_name[date.month]} {date.day}, {date.year}"
    short_date = f"{date.month:02d}/{date.day:02d}/{date.year}"

    items = rng.sample(ITEMS, 2 if layout == "letter" else rng.randint(3, 4))
    quantities = [rng.randint(1, 24) for _ in items]
    prices = [rng.randint(2, 60) * 2.5 for _ in items]  # 5.00 .. 150.00 in steps of 2.50
    total = sum(q * p for q, p in zip(quantities, prices))
    total_text = f"{CURRENCY_PREFIXES[currency]}{total:,.2f}"

    facts: dict[str, tuple[str, ...]] = {
        "doc_type": (layout,),
        "company": (company,),
        "sender": (sender,),
        "recipient": (recipient,),
        "currency": (currency,),
        "department": (department,),
        "status": (status,),
        "subject": (subject,),
        "page": (page_no,),
        "total": (total_text, f"{total:,.2f}"),
        # The printed format comes first; the other format is also accepted.
        "date": (long_date, short_date) if layout == "letter" else (short_date, long_date),
    }

    if layout == "invoice":
        fields = (
            ("Invoice No.", f"INV-{rng.randint(1000, 9999)}"),
            ("Date", short_date),
            ("Currency", currency),
            ("From", sender),
            ("To", recipient),
            ("Department", department),
        )
        header = ("Item", "Qty", "Unit price", "Amount")
        rows = tuple((i, str(q), f"{p:,.2f}", f"{q * p:,.2f}") for i, q, p in zip(items, quantities, prices))
        body = (f"Payment is due within 30 days. Please quote the invoice number on all payments to {company}.",)
        signature = None
    elif layout == "form":
        fields = (
            ("From", sender),
            ("To", recipient),
            ("Department", department),
            ("Date", short_date),
            ("Subject", subject),
            ("Currency", currency),
        )
        header = ("Item", "Qty", "Cost")
        rows = tuple((i, str(q), f"{q * p:,.2f}") for i, q, p in zip(items, quantities, prices))
        body = ("Return the completed form to the department office. Requests over budget need a second signature.",)
        signature = None
    else:
        fields = (("Date", long_date), ("To", recipient), ("Department", department), ("Subject", subject))
        header = ("Item", "Qty")
        rows = tuple((i, str(q)) for i, q in zip(items, quantities))
        body = (
            f"Dear {recipient},",
            f"Please find below the items discussed in the {subject.lower()}. "
            f"The {department.lower()} team will confirm the order by the end of the month.",
        )
        signature = sender

    spec = DocumentSpec(
        layout=layout,
        title=layout.upper(),
        organisation=company,
        logo_colour=COMPANY_COLOURS[company],
        fields=fields,
        table_header=header,
        table_rows=rows,
        table_total=("Total", total_text) if layout != "letter" else None,
        body=body,
        handwritten=status,
        signature=signature,
        footer=f"Page {page_no} of {page_count}",
        source=f"Source: industrydocuments.ucsf.edu/docs/{ucsf_id}",
    )

    templates = [t for t in QUESTION_TEMPLATES if layout in t.layouts]
    count = rng.randint(min_questions, max_questions)
    questions = []
    for template in _weighted_sample(rng, templates, count):
        if template.key == "quantity":
            position = rng.randrange(len(items))
            question = template.question.format(item=items[position])
            answers: tuple[str, ...] = (str(quantities[position]),)
        else:
            question, answers = template.question, facts[template.key]
        questions.append((question, answers, template.question_types))
    return SyntheticDocument(spec=spec, ucsf_document_id=ucsf_id, page_no=page_no, questions=tuple(questions))


def make_synthetic_docvqa(
    num_rows: int, *, seed: int = 0, image_size: tuple[int, int] = (384, 480)
) -> datasets.Dataset:
    """Build ``num_rows`` DocVQA-style question rows on synthetic pages.

    Same ``seed`` gives an identical dataset, image bytes included. Several
    consecutive rows share one page (same ``docId`` and image), as in DocVQA.

    Rows are prefix-stable: the first ``n`` rows of a bigger set are exactly the set of
    ``n`` rows, ids included (notebook 01 scores fewer validation rows than 02 and 03, and
    notebook 05 pairs their predictions by ``questionId``). Each ``questionId`` is unique in
    the set and names one row whatever ``num_rows`` is.

    Args:
        num_rows: number of question rows (not documents).
        seed: random seed for content, layout and ids.
        image_size: page size in pixels, (width, height).

    Tiny mode's data in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents", and ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The data: 1,200 questions about
    scanned documents" (through :func:`vlm_helpers.data.sources.docvqa_dataset`).
    """
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    rng = random.Random(seed)
    # Ids come from their own generator, drawn row by row as the rows are made, so that
    # neither the ids nor the pages depend on ``num_rows`` (prefix-stable rows).
    id_rng = random.Random(f"synthetic-docvqa-ids/{seed}")
    question_ids: set[int] = set()
    doc_ids: set[int] = set()
    fonts: Fonts = load_fonts(min(image_size[0] / 384, image_size[1] / 480))

    columns: dict[str, list] = {name: [] for name in DOCVQA_FEATURES}
    while len(columns["question"]) < num_rows:
        document = sample_document(rng)
        png = _png_bytes(render_document(document.spec, size=image_size, fonts=fonts))
        doc_id = _new_id(id_rng, doc_ids, 1_000)
        for question, answers, question_types in document.questions[: num_rows - len(columns["question"])]:
            columns["questionId"].append(_new_id(id_rng, question_ids, 10_000))
            columns["question"].append(question)
            columns["question_types"].append(list(question_types))
            columns["image"].append({"bytes": png, "path": None})
            columns["docId"].append(doc_id)
            columns["ucsf_document_id"].append(document.ucsf_document_id)
            columns["ucsf_document_page_no"].append(document.page_no)
            columns["answers"].append(list(answers))
    return datasets.Dataset.from_dict(columns, features=DOCVQA_FEATURES)


def synthetic_split_seed(seed: int, split: str) -> int:
    """Seed for one synthetic split: stable across runs and machines, different per split.

    So the train and validation pages of tiny mode in ``notebooks/02_florence2_docvqa.ipynb``, section "The
    data: questions about scanned documents", never coincide.
    """
    return zlib.crc32(f"docvqa/{split}/{seed}".encode())


def _new_id(rng: random.Random, taken: set[int], low: int, high: int = 2_000_000_000) -> int:
    """A random id in ``[low, high)`` not in ``taken`` (then added to it); a wide range, so two
    seeds rarely share one, and below 2**31 for the int32 id columns."""
    while True:
        value = rng.randrange(low, high)
        if value not in taken:
            taken.add(value)
            return value


def _pick(rng: random.Random, pool: tuple[tuple[str, int], ...]) -> str:
    """Draw one value from a ``(value, weight)`` pool."""
    values, weights = zip(*pool)
    return rng.choices(values, weights=weights)[0]


def _weighted_sample(rng: random.Random, templates: list[QuestionTemplate], count: int) -> list[QuestionTemplate]:
    """Pick ``count`` distinct templates, favouring those with a larger weight."""
    remaining = list(templates)
    chosen = []
    while remaining and len(chosen) < count:
        template = rng.choices(remaining, weights=[t.weight for t in remaining])[0]
        remaining.remove(template)
        chosen.append(template)
    return chosen


def _png_bytes(image: PILImage.Image) -> bytes:
    """Encode a PIL image as PNG with fixed settings (same pixels -> same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
