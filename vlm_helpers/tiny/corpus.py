"""A small built-in text corpus for training the tiny models' tokenizers offline.

Tiny mode (``VLM_TINY=1``) cannot download a real tokenizer, so each tiny model
trains a few-hundred-token BPE on this corpus. It covers the words the series'
synthetic datasets use (documents, questions, amounts, dates, airplanes), so the
tiny tokenizers split them into few tokens and the tiny models can learn them.
Used by every tiny builder in :mod:`vlm_helpers.tiny`.
"""

from __future__ import annotations

from collections.abc import Iterable

_SENTENCES = (
    "What is the document type? What is the title of the document?",
    "Who is the sender? Who is the recipient? To whom is the letter addressed?",
    "What is the date? What is the total amount? What is the invoice number?",
    "What currency is used? What is the name of the company? What is the phone number?",
    "Which department issued the form? What is the reference number? What is the page number?",
    "Invoice Form Letter Memo Report Receipt Statement Purchase Order Total Subtotal Tax",
    "Date Amount Quantity Price Description Item Unit Name Address City Phone Fax Email",
    "Dear Sir or Madam, thank you for your letter. Sincerely yours, Best regards.",
    "January February March April May June July August September October November December",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "USD EUR GBP $ 0 1 2 3 4 5 6 7 8 9 10 12 25 50 100 250 1,250.00 12/03/1998 03/12/1998",
    "Research Marketing Finance Legal Sales Accounting Operations Quality Administration",
    "Smith Johnson Brown Miller Davis Wilson Taylor Anderson Thomas Moore Martin Clark",
    "Generate a concise caption for this image, mentioning specific airplane types.",
    "Boeing 707, Boeing 737, Boeing 777, Boeing 787, 707-320, 737-800, 777-300, 787-9",
    "Airbus A320, Cessna 172, airliner, aircraft, airplane, jet, plane, runway, sky, tail",
    "Answer briefly. Answer the question using a single word or phrase from the document.",
    "the a an of and to in for on with at by from is are was be this that it as or",
)


def default_corpus(extra_texts: Iterable[str] = ()) -> list[str]:
    """Return the built-in corpus, followed by ``extra_texts`` (e.g. a dataset's answers)."""
    return list(_SENTENCES) + [text for text in extra_texts if text]
