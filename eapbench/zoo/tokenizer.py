"""The mini zoo's tokenizer: byte-level BPE trained on synthetic problem text, digits split.

Every digit is its own token (so arithmetic is learned digit by digit), words common in
the templated stories become single tokens, and the full 256-byte alphabet is kept so any
text round-trips. The result is an ordinary ``PreTrainedTokenizerFast`` that
``save_pretrained`` writes and ``AutoTokenizer.from_pretrained`` reads offline.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def build_tokenizer(texts: Iterable[str], vocab_size: int = 384):
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts and size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (256 bytes + 2 special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   bos_token=None, unk_token=None, padding_side="left",
                                   model_max_length=512, clean_up_tokenization_spaces=False)
    return fast
