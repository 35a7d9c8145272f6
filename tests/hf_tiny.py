"""Tiny Hugging Face models for the tests, built from configs, with tokenizers trained here.

Nothing downloads (``HF_HUB_OFFLINE=1``): each tokenizer is trained in a second on ``N_TEXTS``
sentences of the shipped Rotten Tomatoes corpus, each model is a seeded random transformer of a
few thousand weights. Built once per process (``functools.cache``), in eval mode; a test that
needs to change one must copy it. ``transformers`` and ``tokenizers`` are imported inside the
builders, so importing this module needs neither.

- ``bert()``: ``BertForSequenceClassification`` (labels in ``id2label``) with a WordPiece
  tokenizer as a ``transformers.PreTrainedTokenizerFast`` (``[CLS] ... [SEP]``);
- ``roberta()``: ``RobertaForSequenceClassification`` (3 labels) with a byte-level BPE
  ``tokenizers.Tokenizer`` (``<s> ... </s>``, ``Ġ`` marks a leading space);
- ``gpt2()``: ``GPT2LMHeadModel`` with a byte-level BPE tokenizer (``<|endoftext|>``).
"""
from __future__ import annotations

import functools
import os

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

N_TEXTS = 300
SENTIMENT = ("rotten", "fresh")


@functools.cache
def corpus() -> tuple[str, ...]:
    """The first ``N_TEXTS`` training sentences of the shipped sentiment corpus."""
    from data.loaders import rotten_tomatoes

    return tuple(rotten_tomatoes("train")[0][:N_TEXTS])


@functools.cache
def wordpiece_tokenizer(vocab_size: int = 400):
    """A BERT-style WordPiece tokenizer (lower-cased), wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


@functools.cache
def byte_bpe_tokenizer(vocab_size: int = 500, roberta: bool = True):
    """A byte-level BPE ``tokenizers.Tokenizer``: RoBERTa's specials and ``<s> $A </s>``, or GPT-2's
    ``<|endoftext|>`` and no post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"] if roberta else ["<|endoftext|>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _small(**extra) -> dict:
    return dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                initializer_range=0.3, **extra)


@functools.cache
def bert(labels: tuple[str, ...] = SENTIMENT):
    """``(model, tokenizer)``: a tiny BERT classifier with ``labels`` in its ``id2label`` (random
    weights, seed 0)."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = wordpiece_tokenizer()
    config = BertConfig(vocab_size=len(tok), max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={v: k for k, v in enumerate(labels)},
                        pad_token_id=tok.pad_token_id, **_small())
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval(), tok


@functools.cache
def roberta():
    """``(model, tokenizer)``: a tiny RoBERTa classifier with 3 labels and a raw byte-level BPE tokenizer."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = byte_bpe_tokenizer()
    labels = {0: "rotten", 1: "fresh", 2: "plot"}
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64 + 2, num_labels=3,
                           id2label=labels, label2id={v: k for k, v in labels.items()},
                           pad_token_id=tok.token_to_id("<pad>"),
                           bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), **_small())
    torch.manual_seed(1)
    return RobertaForSequenceClassification(config).eval(), tok


@functools.cache
def gpt2():
    """``(model, tokenizer)``: a tiny GPT-2 language model with a byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_bpe_tokenizer(roberta=False)
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=eos, eos_token_id=eos, initializer_range=0.3)
    torch.manual_seed(2)
    return GPT2LMHeadModel(config).eval(), tok
