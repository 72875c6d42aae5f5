"""Tokenizers for the tiny chat models, offline: a real SentencePiece vocabulary, or a small trained one.

:func:`sentencepiece_tokenizer` is what the tiny Idefics2 (notebook 03) and LLaVA-Phi-3 (notebooks
01, 04) use: Mistral-7B v0.1's real SentencePiece model from the ``mistral-common`` package, loaded
with the checkpoint's own ``tokenizer_config.json`` so that special tokens sit at their real ids.

:func:`build_byte_fallback_tokenizer` trains a small tokenizer of the same kind (SentencePiece-style
BPE with *byte fallback*: "▁"-prefixed words, byte tokens ``<0x00>``...``<0xFF>`` for anything the
vocabulary lacks) with the ``tokenizers`` library, for tests that need a Llama-style tokenizer of a
few hundred pieces. Vocabulary layout (mirrors Llama / Mistral / Phi-3)::

    0 unk, 1 bos, 2 eos,  3..258 byte tokens <0x00>..<0xFF>,  259.. learned BPE pieces,
    then the added special tokens (pad and ``special_tokens``) in the order given.

Building is deterministic: the same corpus and arguments always give the same ids.

:func:`tiny_tokenizer` makes the tokenizers of the tiny twins of :mod:`vlm_helpers.tiny.families`: each family's
own transformers class (Qwen2's, Gemma's, GPT-2's, Llama 3's byte-level BPE, or the real Mistral SentencePiece
model) trained on the same corpus, with every added token and setting of the real tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from vlm_helpers.tiny.corpus import default_corpus

__all__ = ["DEFAULT_CORPUS", "LLAMA3_SPLIT", "PALIGEMMA_EXTRA_TOKENS", "build_byte_fallback_tokenizer", "default_corpus",
           "tiny_tokenizer"]

#: Built-in corpus: words and sentences about documents (DocVQA, notebook 03) and airplanes
#: (aircraft captioning, notebook 04), plus the chat-template words of both models.
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

    No notebook uses it: it is a small tokenizer of the kind tiny mode's chat models have (tiny mode: the
    README, section "Fine-tuning small vision-language models: a notebook series").
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


# ---------------------------------------------------------------------------------------------
# A real SentencePiece vocabulary, offline
# ---------------------------------------------------------------------------------------------

#: The file inside the ``mistral-common`` package that holds Mistral-7B v0.1's SentencePiece model.
MISTRAL_SENTENCEPIECE = "data/tokenizer.model.v1"


def sentencepiece_tokenizer(tokenizer_config: dict):
    """Mistral-7B v0.1's real tokenizer, loaded with a checkpoint's own ``tokenizer_config.json``.

    The SentencePiece model comes from the ``mistral-common`` package (installed with the test
    extra), so no Hub access is needed. It is Idefics2-8b's base vocabulary exactly (32,000
    pieces; Idefics2 adds three tokens). Phi-3-mini uses Llama-2's vocabulary instead, which no
    package ships offline: Mistral's is of the same kind (a 32,000-piece BPE with byte fallback,
    ``<unk>``/``<s>``/``</s>`` at ids 0-2, byte tokens at 3-258, "▁" word prefixes), so every id
    above 32,000 and every special token sits where the real tokenizer has it; only the ordinary
    pieces differ. ``tokenizer_config`` is the real file's content: its ``added_tokens_decoder``
    places the added tokens at their real ids, and ``add_bos_token``, ``legacy``, the pad token
    and the rest are taken as they are. The tokenizer of the tiny Idefics2 loaded in tiny mode of
    ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "The model in 4 bits"; see also the README,
    section "Using the helpers with other models".
    """
    import shutil
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    try:
        import mistral_common
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise ImportError("tiny chat models need the mistral-common package (pip install -e '.[test]')") from error
    model_file = Path(mistral_common.__file__).parent / MISTRAL_SENTENCEPIECE
    config = {k: v for k, v in tokenizer_config.items() if k not in ("chat_template", "processor_class")}
    config.setdefault("tokenizer_class", "LlamaTokenizer")
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(model_file, Path(folder) / "tokenizer.model")
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    for token_id, token in tokenizer_config.get("added_tokens_decoder", {}).items():
        if tokenizer.convert_tokens_to_ids(token["content"]) != int(token_id):
            raise ValueError(f"{token['content']!r} got id {tokenizer.convert_tokens_to_ids(token['content'])}, "
                             f"the real tokenizer has it at {token_id}")
    return tokenizer


# --------------------------------------------------------------------------------------------------
# the tiny twins' tokenizers (vlm_helpers.tiny.families)
# --------------------------------------------------------------------------------------------------

#: The tokens PaliGemmaProcessor adds to any tokenizer it is given (transformers' EXTRA_TOKENS): the real vocabulary
#: has them (ids 256000-257151), so the twin's has them too, and a <loc0042> in an answer is one token in both.
PALIGEMMA_EXTRA_TOKENS = [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]


#: Llama 3's pre-tokenization split (tokenizer.json of meta-llama/Llama-3.2-11B-Vision-Instruct).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus(extra: list[str]) -> list[str]:
    return list(default_corpus()) + extra


def _train_family_bpe(normalizer, pre_tokenizer, texts, *, vocab_size: int, reserved: list[str], byte_level: bool):
    """A BPE trained with the family's own normalizer/pre-tokenizer; returns (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token=None if byte_level else reserved[0], byte_fallback=not byte_level))
    if normalizer is not None:
        bpe.normalizer = normalizer
    if pre_tokenizer is not None:
        bpe.pre_tokenizer = pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=reserved, initial_alphabet=alphabet,
                                  min_frequency=2, show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(state["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    if not byte_level:  # SentencePiece-style byte fallback: <0x00>..<0xFF> right after the reserved tokens
        pieces = [t for t in vocab if t not in reserved]
        tokens = reserved + [f"<0x{b:02X}>" for b in range(256)] + pieces
        vocab = {}
        for token in tokens:
            vocab.setdefault(token, len(vocab))
    return vocab, merges


def tiny_tokenizer(family, extra_corpus: list[str] = (), vocab_size: int = 600):
    """A small tokenizer of the family's real kind, with the real added tokens and settings.

    Part of the tiny twins of ``notebooks/06_your_data_your_model.ipynb``, section "The model and its LoRA targets".
    """
    import transformers
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    texts = _corpus(list(extra_corpus))
    role = {k: v for k, v in family.roles.items() if v is not None}
    kind = family.tokenizer_kind
    if kind == "sentencepiece":  # Llama-2 / Mistral: the real Mistral SentencePiece model (offline)
        decoder = {str(i): {"content": c, "special": sp, "normalized": False, "lstrip": False, "rstrip": False,
                            "single_word": False} for i, (c, sp) in family.tokens.items()}
        return sentencepiece_tokenizer({**role, **family.tokenizer_settings, "added_tokens_decoder": decoder})
    if kind in ("qwen2", "gpt2"):
        cls = transformers.Qwen2Tokenizer if kind == "qwen2" else transformers.GPT2Tokenizer
        backend = cls(vocab={"a": 0}, merges=[]).backend_tokenizer
        vocab, merges = _train_family_bpe(backend.normalizer, backend.pre_tokenizer, texts, vocab_size=vocab_size,
                                   reserved=[], byte_level=True)
        tokenizer = cls(vocab=vocab, merges=merges, **role, **family.tokenizer_settings)
    elif kind == "gemma":
        backend = transformers.GemmaTokenizer().backend_tokenizer
        base = [family.tokens[i][0] for i in sorted(family.tokens) if i < 5]  # <pad> <eos> <bos> <unk> <mask>
        vocab, merges = _train_family_bpe(backend.normalizer, backend.pre_tokenizer, texts, vocab_size=vocab_size,
                                   reserved=base, byte_level=False)
        tokenizer = transformers.GemmaTokenizer(vocab=vocab, merges=merges, **role, **family.tokenizer_settings)
    elif kind == "llama3":
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
        pre = pre_tokenizers.Sequence([split, byte_level])
        vocab, merges = _train_family_bpe(None, pre, texts, vocab_size=vocab_size, reserved=[], byte_level=True)
        backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
        backend.pre_tokenizer = pre
        backend.decoder = decoders.ByteLevel()
        tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **family.tokenizer_settings)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    if family.name == "paligemma2":  # the real vocabulary's location and segmentation tokens, before <image>
        tokenizer.add_tokens(PALIGEMMA_EXTRA_TOKENS)
    vocabulary = tokenizer.get_vocab()
    tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)
                          for _, (content, special) in sorted(family.tokens.items()) if content not in vocabulary])
    if kind == "llama3":  # roles once the tokens exist; BOS comes from a TemplateProcessing post-processor
        tokenizer.add_special_tokens(role)
        bos = role["bos_token"]
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.convert_tokens_to_ids(bos))])
    return tokenizer
