"""A small built-in text corpus for training the tiny models' tokenizers offline.

Tiny mode (``VLM_TINY=1``) cannot download a real tokenizer, so each tiny model trains a
few-hundred-token BPE on this corpus. It covers the words the series' synthetic datasets use
(documents, questions, amounts, dates, airplanes, chat markers), so the tiny tokenizers split
them into few tokens and the tiny models can learn them. Used by every tiny builder in
:mod:`vlm_helpers.tiny` (Florence-2's byte-level BPE and the chat models' byte-fallback BPE).
"""

from __future__ import annotations

from collections.abc import Iterable

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


def default_corpus(extra_texts: Iterable[str] = ()) -> list[str]:
    """The built-in corpus (a few hundred short texts, always the same list), then ``extra_texts``.

    What the tiny models' tokenizers train on (tiny mode: the README, section "Fine-tuning small
    vision-language models: a notebook series").
    """
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
    texts += [text for text in extra_texts if text]
    return texts
