"""A small Llama-style tokenizer trained offline, for the tiny Idefics2 and LLaVA-Phi-3 models.

The real checkpoints of notebooks 03 (Idefics2, Mistral tokenizer) and 04 (LLaVA-Phi-3, Phi-3
tokenizer) both use a SentencePiece-style BPE with *byte fallback*: text is split on "▁"-prefixed
words, merged with BPE, and any character the vocabulary lacks is spelled as byte tokens
``<0x00>``...``<0xFF>`` instead of becoming ``<unk>``. This module trains the same kind of
tokenizer on a few hundred sentences with the ``tokenizers`` library (no Hub access needed) and
wraps it as a transformers ``LlamaTokenizer`` (in transformers 5.x ``LlamaTokenizerFast`` is the
same class).

Vocabulary layout (mirrors Llama / Mistral / Phi-3)::

    0 unk, 1 bos, 2 eos,  3..258 byte tokens <0x00>..<0xFF>,  259.. learned BPE pieces,
    then the added special tokens (pad and ``special_tokens``) in the order given.

Building is deterministic: the same corpus and arguments always give the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

__all__ = ["DEFAULT_CORPUS", "build_byte_fallback_tokenizer", "default_corpus"]

# ---------------------------------------------------------------------------------------------
# Built-in corpus: words and sentences about documents (DocVQA, notebook 03) and airplanes
# (aircraft captioning, notebook 04), plus the chat-template words of both models.
# ---------------------------------------------------------------------------------------------

_DOCUMENT_FIELDS = (
    "invoice number", "invoice date", "due date", "total amount", "subtotal", "tax", "balance due",
    "account number", "purchase order", "order number", "customer name", "company name", "address",
    "phone number", "fax number", "email address", "zip code", "city", "state", "country",
    "title of the document", "name of the author", "date of the letter", "page number", "signature",
    "reference number", "quantity", "unit price", "discount", "shipping cost", "payment terms",
    "bank name", "project title", "budget", "grant number", "report period", "department",
    "heading of the table", "first row", "last column", "percentage", "year", "month", "time",
)

_DOCUMENT_SENTENCES = (
    "Answer briefly.",
    "Answer the question about the document.",
    "Read the document and answer the question.",
    "The invoice is addressed to the finance department.",
    "Please remit payment within 30 days of the invoice date.",
    "The memo was sent to all members of the research committee.",
    "The table lists the sales figures for each quarter of the year.",
    "The letter is signed by the director of the company.",
    "Total due: $1,250.00 including tax.",
    "The report was prepared by the marketing department in March 1998.",
    "The form must be returned before the end of the month.",
    "Figure 2 shows the results of the survey.",
    "The meeting will be held on Tuesday at 10:30 a.m. in room 204.",
    "The receipt shows the date, the store name and the total.",
    "The chart compares the budget with the actual expenses.",
    "The fax cover sheet lists the sender, the recipient and the number of pages.",
    "Name: John Smith. Date: 12/05/1997. Amount: 45.60",
    "Confidential. Do not distribute.",
    "Tobacco Institute annual report, page 3 of 12.",
    "Phone: (212) 555-0147. Fax: (212) 555-0199.",
    "The nutrition facts label lists calories, fat, sodium and sugar.",
    "The agenda has five items, starting with the approval of the minutes.",
    "The answer is not stated in the document.",
    "Yes", "No", "None", "N/A", "Unknown",
)

_AIRCRAFT = (
    "Boeing 707", "Boeing 717", "Boeing 727", "Boeing 737", "Boeing 747", "Boeing 757",
    "Boeing 767", "Boeing 777", "Boeing 787", "Boeing 737 MAX", "Airbus A220", "Airbus A300",
    "Airbus A310", "Airbus A318", "Airbus A319", "Airbus A320", "Airbus A321", "Airbus A330",
    "Airbus A340", "Airbus A350", "Airbus A380", "Embraer E170", "Embraer E190", "Embraer ERJ 145",
    "Bombardier CRJ200", "Bombardier CRJ900", "Bombardier Dash 8", "ATR 42", "ATR 72",
    "McDonnell Douglas MD-11", "McDonnell Douglas MD-80", "Douglas DC-9", "Lockheed L-1011",
    "Cessna 172", "Cessna Citation", "Beechcraft King Air", "Concorde", "Fokker 100", "Saab 340",
    "de Havilland Canada DHC-6 Twin Otter", "Gulfstream G650", "Antonov An-124",
)

_AIRCRAFT_SENTENCES = (
    "Generate a concise caption for this image, mentioning specific airplane types.",
    "Describe the image.",
    "Describe this airplane in one sentence.",
    "A white passenger jet is taking off from the runway.",
    "A large airliner with four engines is parked at the gate.",
    "Two jets are taxiing on the tarmac under a blue sky.",
    "A small propeller plane is flying over green fields.",
    "The aircraft has a red tail and twin engines under the wings.",
    "A cargo plane is landing at the airport at sunset.",
    "The airplane is climbing through the clouds with its landing gear up.",
    "A regional jet is parked next to the terminal building.",
    "The photo shows the cockpit, the wings and the fuselage of the plane.",
    "A military transport aircraft is on display at an air show.",
    "An airliner in the livery of a national airline is approaching the runway.",
)

_CHAT_WORDS = (
    "User:", "Assistant:", "User", "Assistant", "user", "assistant", "system", "image", "question",
    "answer", "caption", "What", "Which", "Who", "When", "Where", "How many", "How much", "Is", "Are",
)

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)


def default_corpus() -> list[str]:
    """Return the built-in training corpus (a few hundred short texts, always the same list)."""
    texts: list[str] = []
    texts += list(_DOCUMENT_SENTENCES) + list(_AIRCRAFT_SENTENCES) + list(_CHAT_WORDS)
    for field in _DOCUMENT_FIELDS:
        texts.append(f"What is the {field}?")
        texts.append(f"What is the {field} mentioned in the document?")
    for i, plane in enumerate(_AIRCRAFT):
        texts.append(plane)
        texts.append(f"A {plane} is on the runway.")
        texts.append(f"What type of aircraft is this? It is a {plane}.")
        if i % 3 == 0:
            texts.append(f"The {plane} of the airline is flying above the clouds.")
    # Digits, dates and amounts, so numbers get compact pieces.
    texts.append("0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100")
    texts.append(". , : ; ! ? ' \" ( ) [ ] - / % $ # & * + = @ _")
    for i, month in enumerate(_MONTHS):
        day = 3 * i + 1
        year = 1990 + 2 * i
        texts.append(f"{month} {day}, {year}")
        texts.append(f"{day:02d}/{i + 1:02d}/{year}")
        texts.append(f"The date is {month} {day}, {year}.")
        texts.append(f"Amount: ${(i + 1) * 137.25:,.2f}")
        texts.append(f"Total: {(i + 1) * 1049} USD")
    return texts


DEFAULT_CORPUS: tuple[str, ...] = tuple(default_corpus())

_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def _train_bpe(texts: Sequence[str], n_pieces: int, reserved: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Train a "▁"-word BPE and return (learned pieces in id order, merges in rank order)."""
    bpe = Tokenizer(models.BPE(unk_token=reserved[0], byte_fallback=True))
    # split=True while training so merges never cross a word boundary (as in SentencePiece).
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=n_pieces + len(reserved),
        special_tokens=list(reserved),
        min_frequency=2,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    by_id = sorted(state["vocab"].items(), key=lambda kv: kv[1])
    pieces = [tok for tok, _ in by_id if tok not in reserved]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return pieces, merges


def build_byte_fallback_tokenizer(
    corpus: Iterable[str] = (),
    *,
    vocab_size: int = 640,
    special_tokens: Sequence[str] = (),
    tokenizer_class=None,
    unk_token: str = "<unk>",
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    pad_token: str | None = "<pad>",
    padding_side: str = "right",
    include_default_corpus: bool = True,
    **tokenizer_kwargs,
):
    """Train a byte-fallback BPE on ``DEFAULT_CORPUS`` + ``corpus`` and wrap it as a Llama tokenizer.

    Args:
        corpus: extra texts (e.g. the questions/captions of a synthetic dataset).
        vocab_size: size of the *base* vocabulary: unk/bos/eos + 256 byte tokens + learned pieces.
            On a small corpus BPE may run out of pairs first, giving a smaller vocabulary.
        special_tokens: tokens added after the base vocabulary as special, never-split tokens
            (e.g. ``["<fake_token_around_image>", "<image>", "<end_of_utterance>"]``).
        tokenizer_class: a transformers class taking ``vocab=`` and ``merges=``
            (default ``transformers.LlamaTokenizer``).
        unk_token, bos_token, eos_token: ids 0, 1 and 2, as in Llama/Mistral/Phi-3.
        pad_token: added as a special token unless it is one of the tokens above or in
            ``special_tokens``; ``None`` leaves the tokenizer without a pad token.
        padding_side: "right" (the default here, for training; Llama's own default is "left").
        include_default_corpus: set False to train on ``corpus`` alone.
        **tokenizer_kwargs: passed on to ``tokenizer_class`` (``chat_template=...``, ...).

    Returns:
        The tokenizer; ``add_bos_token=True`` so every encoded text starts with ``bos_token``.
    """
    if tokenizer_class is None:
        from transformers import LlamaTokenizer

        tokenizer_class = LlamaTokenizer
    texts = (list(DEFAULT_CORPUS) if include_default_corpus else []) + [str(t) for t in corpus]
    if not texts:
        raise ValueError("The corpus is empty: pass texts or keep include_default_corpus=True.")
    reserved = [unk_token, bos_token, eos_token]
    n_pieces = vocab_size - len(reserved) - len(_BYTE_TOKENS)
    if n_pieces < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces (minimum 260).")

    pieces, merges = _train_bpe(texts, n_pieces, reserved)
    vocab: dict[str, int] = {}
    for token in [*reserved, *_BYTE_TOKENS, *pieces]:
        vocab.setdefault(token, len(vocab))

    tokenizer = tokenizer_class(
        vocab=vocab,
        merges=merges,
        unk_token=unk_token,
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos_token=True,
        add_eos_token=False,
        padding_side=padding_side,
        **tokenizer_kwargs,
    )
    extra = [t for t in special_tokens if t not in reserved]
    if extra:
        tokenizer.add_special_tokens({"extra_special_tokens": list(extra)})
    if pad_token is not None:
        # A pad token that is not already a special token is appended after `special_tokens`.
        tokenizer.add_special_tokens({"pad_token": pad_token})
    return tokenizer
