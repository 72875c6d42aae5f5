"""A tiny random Florence-2 (notebooks 01, 02, 05), shrunk from Florence-2-base-ft's configuration.

Tiny mode of ``notebooks/02_florence2_docvqa.ipynb`` saves this model to a local folder and loads
it back with :func:`vlm_helpers.florence2.load_florence2`, the same loader that loads
``florence-community/Florence-2-base-ft`` on Colab. It starts from the configuration in
``real_configs/florence-community--Florence-2-base-ft/`` (the published ``config.json``; the
generation, preprocessor and processor files are reconstructions, ``reconstructed/README.md`` says how
each was made) and changes sizes only (:func:`vlm_helpers.tiny.real.shrink`):

- vision: DaViT with one block per stage, widths 8/16/32/64 (real: 1/1/9/1 blocks, 128-1024), so
  a ``S`` px image gives ``(S/32)**2 + 1`` image tokens (128 px -> 17; real 768 px -> 577);
- text: BART with one encoder and one decoder layer, ``d_model = 64`` (real: 6 + 6, 768);
  dropout 0.1 and drop-path 0.1 as in the real model. The published text config also names
  ``num_hidden_layers`` (6), which BART reads as ``encoder_layers``: it is shrunk with it;
- weights stored in fp16, because the published config says ``"dtype": "float16"``: a load that passes
  no ``dtype`` gets fp16 weights from the tiny checkpoint exactly as from the real one (transformers 5
  defaults to ``dtype="auto"``), so a missing ``dtype=`` shows up in tiny mode too;
- generation config: the real one (``forced_bos_token_id`` 0, ``num_beams`` 3,
  ``no_repeat_ngram_size`` 3, ``early_stopping``), so tiny and full mode decode alike;
- tokenizer: byte-level BPE trained offline on :func:`~vlm_helpers.tiny.corpus.default_corpus`,
  with BART's special tokens at ids 0-3, Florence-2's 1,024 task and ``<loc_*>`` tokens in the
  real order, and ``<image>`` last. ``image_token_id`` is the tiny tokenizer's id of ``<image>``.

The language model's weights are redrawn with std 0.1 (:func:`~vlm_helpers.tiny.common.reinit_weights`)
instead of BART's 0.02: at width 64 the default makes cross-attention so weak that the decoder
ignores the question for hundreds of steps. The DaViT tower keeps transformers' initialisation
(redrawn at std 0.1 as well, notebook 02's tiny run reached ANLS 0.05 instead of 0.125).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from vlm_helpers.tiny.corpus import default_corpus

from .common import save_shrunk_checkpoint
from .real import REAL_CHECKPOINTS, build_config, real_json

MODEL_ID = REAL_CHECKPOINTS["florence2"]

_BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in BART/Florence-2; <mask> ends the pieces
#: Florence-2's added tokens, in the order microsoft's Florence2Processor adds them (1,024 in all).
FLORENCE2_ADDED_TOKENS = (["<od>", "</od>", "<ocr>", "</ocr>"] + [f"<loc_{i}>" for i in range(1000)]
                          + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>",
                             "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
                             "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>",
                             "<poly>", "</poly>", "<and>"])

#: Sizes of the tiny model, applied to the published config.json and the reconstructed preprocessor_config.json
#: (the text vocabulary is set to the tiny tokenizer's length, rounded up to 64, by build_tiny_florence2).
#: ``num_hidden_layers`` is BART's alias of ``encoder_layers`` and ``dim_embed`` microsoft's name of
#: ``embed_dim``: the published file has both, so both are shrunk.
TINY_FLORENCE2_SIZES = {
    "config": {
        "text_config": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "num_hidden_layers": 1,
                        "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 128,
                        "decoder_ffn_dim": 128},
        "vision_config": {"embed_dim": [8, 16, 32, 64], "dim_embed": [8, 16, 32, 64], "depths": [1, 1, 1, 1],
                          "num_heads": [1, 1, 2, 2], "num_groups": [1, 1, 2, 2], "window_size": 2,
                          "projection_dim": 64},
    },
    "preprocessor_config.json": {"size": {"height": 128, "width": 128}, "crop_size": {"height": 128, "width": 128},
                                 "image_seq_length": 17},
}

#: Florence-2-base at full size (0.23 B parameters, 768 px, 577 image tokens, 51,328 embedding rows):
#: the real-shape tier, built with the small tokenizer (whose ids all fit in the real vocabulary).
REAL_SHAPE_FLORENCE2_SIZES: dict = {"config": {}}


def build_tiny_florence2_tokenizer(corpus: Iterable[str], vocab_size: int = 600):
    """Train a byte-level BPE on ``corpus`` and wrap it as Florence-2's tokenizer (BART + 1,025 added tokens).

    The tokenizer of the tiny Florence-2 that tiny mode loads in ``notebooks/02_florence2_docvqa.ipynb``,
    section "The model, and freezing the vision encoder".
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BartTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_BART_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(corpus), trainer=trainer)
    model_state = json.loads(bpe.to_str())["model"]
    vocab = dict(model_state["vocab"])
    vocab["<mask>"] = len(vocab)  # BART's <mask> is the last base piece (50264 in the real vocabulary)
    # Florence-2's tokens, then the <image> that transformers' conversion of the microsoft checkpoint adds
    for token in [*FLORENCE2_ADDED_TOKENS, "<image>"]:
        vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_state["merges"]]
    tokenizer = BartTokenizer(vocab=vocab, merges=merges, extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in FLORENCE2_ADDED_TOKENS],
                         special_tokens=True)
    return tokenizer


def build_tiny_florence2(save_dir: str | Path, *, seed: int = 0, init_std: float = 0.1,
                         extra_corpus: Iterable[str] = ()) -> Path:
    """Build the tiny random Florence-2 of tiny mode; save model and processor to ``save_dir``, return it.

    Loading it back is the job of :func:`vlm_helpers.florence2.load_florence2`, exactly as in full mode.
    The text vocabulary is the small tokenizer's length rounded up to 64, as the conversion pads it.
    Tiny mode loads it in ``notebooks/02_florence2_docvqa.ipynb``, section "The model, and freezing the
    vision encoder".
    """
    tokenizer = build_tiny_florence2_tokenizer(default_corpus(extra_corpus))
    sizes = json.loads(json.dumps(TINY_FLORENCE2_SIZES))
    sizes["config"]["text_config"]["vocab_size"] = -(-len(tokenizer) // 64) * 64
    return build_florence2(save_dir, sizes, tokenizer, seed=seed, init_std=init_std)


def build_florence2(save_dir: str | Path, sizes: dict, tokenizer, *, seed: int = 0,
                    init_std: float | None = None) -> Path:
    """Shrink Florence-2-base-ft's configuration by ``sizes``; save a random model with ``tokenizer``.

    ``image_token_id`` becomes the tokenizer's id of ``<image>`` (token ids follow the tokenizer);
    everything else is the published configuration (``dtype`` float16 included: the weights are saved in
    fp16) and the reconstructed processor and generation files. ``init_std`` redraws the
    language model's weights only; ``None`` keeps transformers' initialisation. Returns ``save_dir``.
    Behind :func:`build_tiny_florence2`, the model tiny mode loads in ``notebooks/02_florence2_docvqa.ipynb``,
    section "The model, and freezing the vision encoder".
    """
    return save_shrunk_checkpoint(save_dir, MODEL_ID, sizes, tokenizer, seed=seed, init_std=init_std,
                                  reinit=lambda model: model.model.language_model,
                                  token_ids={"image_token_id": tokenizer.convert_tokens_to_ids("<image>")},
                                  reconstructed=True)


def florence2_base_config():
    """The configuration of Florence-2-base (0.23 B parameters), for random-init benchmarks.

    DaViT widths 128-1024 with depths 1/1/9/1 and a 6+6-layer BART of width 768, as in
    ``florence-community/Florence-2-base-ft``'s published configuration (whose ``dtype`` is float16: the
    config object carries it, a model built from it directly is fp32 until cast); images of 768 px give
    577 image tokens. The ``--size base`` benchmark of the README, section "Measured
    here, and what is not".
    """
    return build_config(real_json(MODEL_ID, "config.json"))
