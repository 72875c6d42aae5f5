"""Batching rows for chat vision-language models (Idefics2, LLaVA-Phi-3), with an exact loss mask.

Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb`` and reused unchanged by
``notebooks/04_phi3_aircraft_captioning.ipynb``. Each row becomes a two-turn chat::

    user:      <instruction> <image> <question>
    assistant: <answer><end-of-turn>

and the chat template of the processor turns it into text, e.g. for Idefics2
``"User: Answer briefly.<image>What is the total?<end_of_utterance>\\nAssistant: 12.50<end_of_utterance>\\n"``.

Only the answer and the end-of-turn token are learned. What the Idefics2 article got wrong,
and what the Phi-3 article got wrong, fixed here:

- the article put the *image token id* into the labels at pad positions, and the loss counts it;
  here pad, image tokens and the whole prompt are -100, the value the loss ignores;
- without the end-of-turn token (``<end_of_utterance>``, ``<|end|>``) in the labels the model
  never learns to stop; we keep it and mask whatever the template writes after it;
- the Phi-3 collator only ever used ``examples[0]`` (batch size 1); this one takes any batch.

The contract, for any processor with a chat template (tested on nine families in
``tests/test_other_families.py``):

- the training tokens of a row are exactly ``processor.apply_chat_template(conversation, tokenize=True)``:
  the rendered text goes through the processor with ``add_special_tokens=False`` when the template
  writes the BOS token itself (Gemma 3, Llama 3.2 Vision), as transformers does, so no row starts
  with two BOS tokens. One exception: a template that writes no end-of-turn token after the answer
  (vicuna-style LLaVA-1.5; LLaVA-NeXT-Mistral, whose template writes a literal ``<\\s>``) gets the
  tokenizer's eos token right after the answer instead of whatever text follows it, which is what
  these models were trained with; otherwise they never learn to stop;
- the generation prompt (``add_generation_prompt=True``) is exactly the text before the answer in
  training; a template whose generation prompt differs from the assistant header it renders
  (LLaVA-OneVision's ``"assistant\\n"`` vs ``"assistant \\n"``) is refused with both renderings;
- only the answer and the end-of-turn token are supervised; prompt, image tokens and padding are -100.

How the prompt is masked: each row is rendered twice, prompt only and the full conversation. Both
go through the processor (which expands ``<image>`` into the image tokens), and the prompt's ids
must be a prefix of the full ids. If a tokenizer merged characters across the prompt/answer
boundary that check fails loudly instead of silently supervising the wrong tokens. The images
are processed twice for that; on real data this costs milliseconds per row.

Prefix-LM processors (PaliGemma) are not chat models and are refused at construction: they build
labels themselves from ``processor(text=prefix, images=..., suffix=answer)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vlm_helpers.supervision import (IGNORE_INDEX, check_plain_text, is_prefix_lm_processor, pick_answer,
                                     reserved_text, to_rgb)

__all__ = ["AnswerLayout", "ChatVLMCollator", "answer_layout", "check_chat_processor",
           "detect_end_of_turn", "special_tokens_flag", "vision_token_ids"]

#: Processor attributes that may name vision placeholder tokens (Idefics2 has the first two;
#: Idefics3/SmolVLM add a global image token; other families use begin/end-of-image tokens).
#: :func:`vision_token_ids` also finds, by trying, every token the processor inserts for an image.
_VISION_TOKEN_ATTRIBUTES = ("image_token", "fake_image_token", "global_image_token", "global_image_tag",
                            "boi_token", "eoi_token", "image_start_token", "image_end_token", "image_break_token",
                            "vision_start_token", "vision_end_token")

_SENTINEL = "\u2402ANSWER\u2402"  # a string no chat template writes by itself
_PROBE_TEXT = "Q"


def _probe_messages(*, image: bool = True, answer: str | None = None) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": _PROBE_TEXT}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _probe_image() -> Image.Image:
    """A plain RGB image big enough for every image processor's minimum (e.g. Qwen2-VL's 56 px)."""
    return Image.new("RGB", (64, 64), (128, 96, 64))


def special_tokens_flag(tokenizer, texts: Sequence[str]) -> bool:
    """``add_special_tokens`` for rendered chat texts: False when the template wrote the BOS itself.

    The rule transformers' ``apply_chat_template(tokenize=True)`` applies; without it, templates that
    write ``bos_token`` (Gemma 3, Llama 3.2 Vision) get a second BOS from the tokenizer. Part of the
    collation taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may
    see"; the families it matters for are in the README, section "Using the helpers with other models".
    """
    bos = tokenizer.bos_token
    starts = {bool(bos) and text.startswith(bos) for text in texts}
    if len(starts) > 1:
        raise ValueError(f"some rendered rows start with {bos!r} and some do not: check the chat template")
    return not starts.pop() if starts else True


def check_chat_processor(processor) -> None:
    """Refuse processors the chat collator cannot serve, with what to do instead.

    Prefix-LM processors (PaliGemma) take the answer as ``suffix=`` and build ``labels`` and
    ``token_type_ids`` themselves; a chat template bolted on would train a format the model never saw.
    Listed among the refusals in the README, section "Using the helpers with other models"; the collator it
    guards is taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may
    see".
    """
    if is_prefix_lm_processor(processor):
        raise ValueError(
            f"{type(processor).__name__} is a prefix-LM processor (PaliGemma-style), not a chat model: the prompt "
            "is attended bidirectionally and only the suffix is generated. ChatVLMCollator cannot train it: "
            "use vlm_helpers.prefix_collator.PrefixLMCollator (notebook 06's paligemma2-3b), or fine-tune it with processor(text=['<image>' + prefix, ...], images=..., suffix=[answer, ...], "
            "return_tensors='pt'), which returns input_ids, token_type_ids and labels (prefix masked, eos "
            "appended to the answer), and generate from processor(text=prompts, images=...) without a suffix.")
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{type(processor).__name__} has no chat template: set processor.chat_template "
                         "(the model card gives the prompt format) before building a ChatVLMCollator")
    if getattr(processor, "tokenizer", None) is None:
        raise ValueError(f"{type(processor).__name__} has no tokenizer: is it a text-and-image processor?")


def vision_token_ids(processor) -> set[int]:
    """Ids of every image-related token the processor inserts (never supervised).

    Found by trying: the same one-line user turn is processed with and without an image, and every
    added token (``tokenizer.added_tokens_decoder``) that appears only with the image is an image
    token: Gemma 3's ``<start_of_image>``, ``<image_soft_token>``, ``<end_of_image>``; SmolVLM's
    ``<global-img>`` and ``<row_1_col_1>`` tiles; Qwen2-VL's ``<|vision_start|>``, ``<|image_pad|>``...
    Ordinary text the processor adds around images (newlines) is not an added token and stays
    learnable. The ids named by the processor's image-token attributes are added to the set.
    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see"
    (the collator's ``vision_ids``, set to -100 there).
    """
    tokenizer = processor.tokenizer
    ids: set[int] = set()
    if getattr(processor, "image_token_id", None) is not None:
        ids.add(int(processor.image_token_id))
    for attribute in _VISION_TOKEN_ATTRIBUTES:
        token = getattr(processor, attribute, None)
        if isinstance(token, str) and token:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(int(token_id))
    if getattr(processor, "chat_template", None):
        added = {int(i) for i in tokenizer.added_tokens_decoder} | set(tokenizer.all_special_ids)
        with_image = processor.apply_chat_template(_probe_messages(image=True), add_generation_prompt=True)
        without = processor.apply_chat_template(_probe_messages(image=False), add_generation_prompt=True)
        flag = special_tokens_flag(tokenizer, [with_image])
        inserted = processor(text=[with_image], images=[[_probe_image()]], add_special_tokens=flag)
        plain = processor(text=[without], add_special_tokens=flag)
        ids |= (set(_flat_ids(inserted["input_ids"])) - set(_flat_ids(plain["input_ids"]))) & added
    if not ids:
        raise ValueError(f"{type(processor).__name__} defines no image token: is it a vision-language processor?")
    return ids


def _flat_ids(input_ids) -> list[int]:
    return [int(i) for row in input_ids for i in (row.tolist() if hasattr(row, "tolist") else row)]


@dataclass(frozen=True)
class AnswerLayout:
    """Where the answer sits in a processor's chat template (see :func:`answer_layout`).

    ``end_of_turn``: the token that ends the answer. ``appended``: True when the template writes no
    end-of-turn token after the answer, so the collator appends ``end_of_turn`` itself. ``tail``: the
    text the template writes after the answer (replaced by ``end_of_turn`` when ``appended``).
    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see";
    each family's end of an answer is listed in the README, section "Using the helpers with other models".
    """

    end_of_turn: str
    appended: bool
    tail: str


def answer_layout(processor, end_of_turn: str | None = None) -> AnswerLayout:
    """Read from the chat template how an answer ends, and check the generation prompt.

    A conversation whose answer is a sentinel string is rendered, and:

    - the generation prompt (``add_generation_prompt=True``) must be exactly the text before the
      answer, give or take whitespace the answer itself starts with; otherwise training and
      inference prompts differ, and this raises with both renderings;
    - the first special token after the answer is the end-of-turn token (``<end_of_utterance>``,
      ``<|end|>``, ``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``). When the template writes
      none (vicuna-style LLaVA-1.5, LLaVA-NeXT-Mistral's literal ``<\\s>``), the tokenizer's eos
      token is appended right after the answer, which is what those models were trained with.

    ``end_of_turn`` overrides the detected token (it is appended if the template does not write it).
    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see";
    each family's result is in the README, section "Using the helpers with other models".
    """
    tokenizer = processor.tokenizer
    rendered = processor.apply_chat_template(_probe_messages(answer=_SENTINEL))
    if rendered.count(_SENTINEL) != 1:
        raise ValueError(f"The chat template does not write the assistant's answer once: {rendered!r}")
    head, tail = rendered.split(_SENTINEL)
    prompt = processor.apply_chat_template(_probe_messages(), add_generation_prompt=True)
    if not head.startswith(prompt) or head[len(prompt):].strip():
        raise ValueError(
            "The chat template's generation prompt is not the text it writes before an answer, so a model "
            "trained on its conversations would be asked differently at inference. With a one-word question "
            f"'Q' and an image:\n  inference prompt (add_generation_prompt=True): {prompt!r}\n"
            f"  training conversation, up to the answer:         {head!r}\n"
            "Fix processor.chat_template so that both agree (usually the assistant header of the "
            "conversation or the generation prompt has a stray space or newline).")
    special = set(tokenizer.all_special_ids) | {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    written = [tokenizer.convert_ids_to_tokens(i) for i in tokenizer(tail, add_special_tokens=False)["input_ids"]
               if i in special]
    if end_of_turn is None:
        if written:
            return AnswerLayout(written[0], appended=False, tail=tail)
        if tokenizer.eos_token is None:
            raise ValueError(f"The chat template writes no special token after the answer ({tail!r}) and the "
                             "tokenizer has no eos token: pass end_of_turn= (the token that should end an answer)")
        end_of_turn = tokenizer.eos_token
    elif end_of_turn in written:
        return AnswerLayout(end_of_turn, appended=False, tail=tail)
    if tail.strip():
        warnings.warn(f"The chat template writes {tail!r} after the answer, with no end-of-turn token; the "
                      f"collator ends each answer with {end_of_turn!r} instead, as the model was trained "
                      "(e.g. LLaVA-NeXT-Mistral's template writes a literal '<\\s>', a typo for '</s>').",
                      UserWarning, stacklevel=3)
    return AnswerLayout(end_of_turn, appended=True, tail=tail)


def detect_end_of_turn(processor) -> str:
    """The token that ends an assistant answer: the first special token the chat template writes
    after it (``<end_of_utterance>`` for Idefics2, ``<|end|>`` for Phi-3), else the eos token
    (see :func:`answer_layout`). Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches,
    and what the loss may see" (``collator.end_of_turn``)."""
    return answer_layout(processor).end_of_turn


class ChatVLMCollator:
    """Turn rows into training batches (``__call__``) or generation inputs (``generation_inputs``).

    Args:
        processor: a processor with a chat template and an image token (Idefics2, LLaVA, Qwen2-VL,
            Gemma 3, ...); prefix-LM processors (PaliGemma) are refused (:func:`check_chat_processor`).
        instruction: a short text put before the image, e.g. ``"Answer briefly."`` ("" for none).
        question_key: column with the question; ``None`` for tasks without one (captioning).
        answer_key: column with the target: a list of acceptable answers (DocVQA) or one string.
        image_key, id_key: columns with the image and the row id (the id seeds the answer pick
            and names the row in error messages).
        answer_choice: ``"random"`` (reproducible per row id and ``seed``) or ``"first"``.
        max_length: the longest training sequence, in tokens (prompt, image tokens, answer and end of
            turn); a row that does not fit raises with its id (nothing is cut silently: a cut answer never
            learns to stop). Of several acceptable answers, only those that fit are drawn from.
            :meth:`length_problem` applies the same rule before training
            (``clean_dataset(..., collator=collator)``). None (the default): no limit, nothing is refused.
        end_of_turn: the token that ends the assistant turn; detected from the template if None
            (:func:`answer_layout`: the template's own end-of-turn token, else eos appended).

    Taught in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see", and
    reused in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Batches, and what the loss may see".
    """

    def __init__(self, processor, *, instruction: str, question_key: str | None = "question",
                 answer_key: str = "answers", image_key: str = "image", id_key: str = "questionId",
                 answer_choice: str = "random", seed: int = 0, max_length: int | None = None,
                 end_of_turn: str | None = None):
        check_chat_processor(processor)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.instruction = instruction
        self.question_key = question_key
        self.answer_key = answer_key
        self.image_key = image_key
        self.id_key = id_key
        self.answer_choice = answer_choice
        self.seed = seed
        self.max_length = max_length
        self.layout = answer_layout(processor, end_of_turn)
        self.end_of_turn = self.layout.end_of_turn
        self.end_of_turn_id = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if self.end_of_turn_id is None or self.end_of_turn_id == self.tokenizer.unk_token_id:
            raise ValueError(f"end_of_turn {self.end_of_turn!r} is not a single token of this tokenizer")
        self.vision_ids = vision_token_ids(processor)
        if self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; set tokenizer.pad_token before batching")
        if self.end_of_turn_id in self.vision_ids:
            raise ValueError(f"end_of_turn {self.end_of_turn!r} is an image token")
        self.reserved = reserved_text(processor)
        check_plain_text(instruction, self.reserved, where="ChatVLMCollator(instruction=...)", what="instruction")

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the end-of-turn token, then the tokenizer's eos.

        :func:`vlm_helpers.evaluation.generate_predictions` passes them to ``generate``, so a
        checkpoint whose generation config forgets the end-of-turn token still stops there.
        """
        ids = [self.end_of_turn_id]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id != self.end_of_turn_id:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    # ------------------------------------------------------------------ text
    def _where(self, row: dict, position: int) -> str:
        return f"row {position} of the batch ({self.id_key}={row.get(self.id_key, position)!r})"

    def _check_question(self, row: dict, position: int) -> None:
        if self.question_key is not None:
            check_plain_text(row[self.question_key], self.reserved, where=self._where(row, position),
                             what="question")

    def messages(self, row: dict, answer: str | None = None) -> list[dict]:
        """The chat for one row: the user turn, plus the assistant turn when ``answer`` is given."""
        content = []
        if self.instruction:
            content.append({"type": "text", "text": self.instruction})
        content.append({"type": "image"})
        if self.question_key is not None:
            content.append({"type": "text", "text": row[self.question_key]})
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def prompt_text(self, row: dict) -> str:
        """The prompt a user sends at inference: user turn + the assistant marker."""
        return self.processor.apply_chat_template(self.messages(row), add_generation_prompt=True)

    def full_text(self, row: dict, answer: str) -> str:
        """The whole conversation, answer and end-of-turn included.

        When the template writes no end-of-turn token (``self.layout.appended``), the text it writes
        after the answer is replaced by the end-of-turn token (see :func:`answer_layout`).
        """
        text = self.processor.apply_chat_template(self.messages(row, answer))
        if not self.layout.appended:
            return text
        tail = self.layout.tail
        if not text.endswith(answer + tail):
            raise ValueError(f"the chat template renders this answer differently from the probe ({text[-80:]!r} "
                             f"does not end with the answer + {tail!r}): pass end_of_turn= explicitly")
        return text[: len(text) - len(tail)] + self.end_of_turn

    def _process(self, texts: list[str], images: list[list], **kwargs):
        """The processor on rendered texts: no second BOS when the template wrote one (:func:`special_tokens_flag`)."""
        return self.processor(text=texts, images=images,
                              add_special_tokens=special_tokens_flag(self.tokenizer, texts), **kwargs)

    def conversation_lengths(self, row: dict, answers: Sequence[str], images: list | None = None) -> list[int]:
        """Tokens of the whole training conversation of ``row`` with each of ``answers``: what ``max_length``
        limits. The same rendering (:meth:`full_text`) and processor call (image tokens expanded) as a
        training batch, without padding."""
        images = self._images([row])[0] if images is None else images
        texts = [self.full_text(row, answer) for answer in answers]
        return [len(ids) for ids in self._process(texts, [images] * len(texts), padding=False)["input_ids"]]

    def _fits(self, length: int) -> bool:
        return self.max_length is None or length <= self.max_length

    def _too_long(self, lengths: Sequence[int], prompt: int) -> str:
        """The problem of a row none of whose conversations fits, with their lengths and the limit."""
        if len(lengths) == 1:
            said = (f"the conversation takes {lengths[0]} tokens ({prompt} for the prompt, images included, "
                    f"{lengths[0] - prompt} for the answer and what follows it)")
        else:
            said = (f"none of its {len(lengths)} answers fits: the conversations take "
                    f"{', '.join(map(str, lengths))} tokens ({prompt} of them for the prompt, images included)")
        return (f"{said}, more than max_length={self.max_length}; raise max_length, shrink the image or drop "
                "the row (nothing is cut silently)")

    def _answers(self, row: dict) -> list:
        answers = row.get(self.answer_key)
        return [] if answers is None else [answers] if isinstance(answers, str) else list(answers)

    def length_problem(self, row: dict, *, answers: bool = True) -> str | None:
        """Why ``row`` cannot be batched for its length, or None when one of its conversations fits.

        The collator's own rule, for validation before training: each answer's whole conversation is
        tokenized as a batch would tokenize it (:meth:`conversation_lengths`) and compared with
        ``max_length``; a row with several answers is bad only when none fits (the collator draws among
        those that fit). With ``answers=False`` (a split that is only answered by generation) the prompt alone
        is priced. No ``max_length``: nothing is refused and nothing is computed. Used by
        :func:`vlm_helpers.data.validation.clean_dataset` with ``collator=``, as in
        ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
        """
        if self.max_length is None:
            return None
        images = self._images([row])[0]
        if not answers:
            length = len(self.prompt_ids([row], [images])[0])
            return None if length <= self.max_length else (
                f"the prompt takes {length} tokens with its image tokens, more than max_length={self.max_length}")
        candidates = self._answers(row)
        if not candidates:
            return None
        lengths = self.conversation_lengths(row, candidates, images)
        if any(self._fits(length) for length in lengths):
            return None
        return self._too_long(lengths, len(self.prompt_ids([row], [images])[0]))

    def target(self, row: dict, position: int) -> str:
        """The answer to learn for one row; a clear error names the row when there is none.

        With ``max_length``, a row with several answers draws among those whose conversation fits.
        """
        key = row.get(self.id_key, position)
        where = f"row {position} of the batch ({self.id_key}={key!r})"
        if self.answer_key not in row:
            raise ValueError(f"{where} has no {self.answer_key!r} column")
        answers = row[self.answer_key]
        if isinstance(answers, str):
            if not answers.strip():
                raise ValueError(f"{where} has an empty {self.answer_key!r}")
            check_plain_text(answers, self.reserved, where=where, what="answer")
            return answers
        if answers is None or len(answers) == 0:
            raise ValueError(f"{where} has an empty {self.answer_key!r} list: drop it or fix the data")
        if self.max_length is not None and len(answers) > 1 and all(isinstance(a, str) and a.strip()
                                                                     for a in answers):
            # several acceptable answers: draw among those that fit, so a long alternative cannot stop a
            # run at the batch where the seeded draw happens to pick it
            for answer in answers:
                check_plain_text(answer, self.reserved, where=where, what="answer")
            images = self._images([row])[0]
            lengths = self.conversation_lengths(row, answers, images)
            answers = [a for a, length in zip(answers, lengths) if self._fits(length)]
            if not answers:
                raise ValueError(f"{where}: {self._too_long(lengths, len(self.prompt_ids([row], [images])[0]))}")
        try:
            answer = pick_answer(answers, choice=self.answer_choice, seed=self.seed, key=key)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        check_plain_text(answer, self.reserved, where=where, what="answer")
        return answer

    def _images(self, rows: Sequence[dict]) -> list[list]:
        return [[to_rgb(row[self.image_key])] for row in rows]

    # ------------------------------------------------------------------ batches
    def generation_inputs(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Prompt-only inputs for ``model.generate``, LEFT-padded, without labels.

        Left padding puts every prompt's last token in the last column, so the generated
        tokens of all rows start at the same position (what ``generate_predictions`` cuts at).
        The padding side is passed per call, so the tokenizer's own setting is not changed.
        """
        for position, row in enumerate(rows):
            self._check_question(row, position)
        texts = [self.prompt_text(row) for row in rows]
        return dict(self._process(texts, self._images(rows), return_tensors="pt", padding=True, padding_side="left"))

    def prompt_ids(self, rows: Sequence[dict], images: list[list] | None = None) -> list[list[int]]:
        """Each row's prompt as token ids (image tokens expanded), unpadded: what precedes the answer.

        The training labels mask exactly these positions (plus padding and image tokens); notebook 03
        uses their lengths to write the masking out by hand.
        """
        images = self._images(rows) if images is None else images
        texts = [self.prompt_text(row) for row in rows]
        return [list(ids) for ids in self._process(texts, images, padding=False)["input_ids"]]

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        """A RIGHT-padded training batch: processor outputs plus ``labels``."""
        for position, row in enumerate(rows):
            self._check_question(row, position)
        answers = [self.target(row, i) for i, row in enumerate(rows)]
        images = self._images(rows)
        full = self._process([self.full_text(row, a) for row, a in zip(rows, answers)], images,
                             return_tensors="pt", padding=True, padding_side="right")
        prompts = self.prompt_ids(rows, images)
        input_ids, attention = full["input_ids"], full["attention_mask"]  # (batch, width)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(rows):
            where = f"row {i} of the batch ({self.id_key}={row.get(self.id_key, i)!r})"
            length = int(attention[i].sum())
            ids = input_ids[i, :length].tolist()
            prompt = list(prompts[i])
            if ids[: len(prompt)] != prompt:
                raise ValueError(
                    f"{where}: the prompt's tokens are not a prefix of the full conversation's tokens, "
                    "so the prompt cannot be masked by its length (the tokenizer merges text across the "
                    "prompt/answer boundary; check the chat template)")
            answer_ids = ids[len(prompt):]
            if self.end_of_turn_id not in answer_ids:  # e.g. an answer that ends in text the template changes
                raise ValueError(f"{where}: no {self.end_of_turn!r} after the answer; pass end_of_turn= explicitly")
            stop = len(prompt) + answer_ids.index(self.end_of_turn_id) + 1  # keep the end-of-turn token
            if not self._fits(length):
                raise ValueError(f"{where}: {self._too_long([length], len(prompt))}")
            labels[i, len(prompt):stop] = input_ids[i, len(prompt):stop]
        for token_id in self.vision_ids:
            labels[input_ids == token_id] = IGNORE_INDEX
        # Padding is found by the attention mask, not by id: some tokenizers reuse eos as pad.
        labels[attention == 0] = IGNORE_INDEX
        batch = dict(full)
        batch["labels"] = labels
        return batch
