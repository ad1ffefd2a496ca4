"""Hand-built "Markov" language models whose greedy answers are known exactly (for pipeline tests).

A one-layer Llama whose attention and MLP weights are zero passes the token embedding straight
to the final norm, so its next-token logits depend on the current token only. With one-hot
embeddings (hidden size = vocab size, rounded up to even) and an ``lm_head`` holding one large weight per row we
choose the successor of every token: a question ending in word ``w`` is answered by a chosen
path of tokens and then EOS. Two such models with different paths share one tokenizer, so the
paired protocol's outcome (who is correct, answer lengths) is fixed by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

SPECIALS = ("<unk>", "<pad>", "<eos>")


def build_vocab(words: Sequence[str]) -> list[str]:
    vocab = list(SPECIALS)
    for w in words:
        if w not in vocab:
            vocab.append(w)
    return vocab


def make_tokenizer(vocab: Sequence[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def make_markov_model(folder: Path, vocab: Sequence[str], paths: dict[str, Sequence[str]]) -> Path:
    """Save a checkpoint that answers a prompt ending in word ``w`` with ``paths[w]`` then EOS."""
    from transformers import LlamaConfig, LlamaForCausalLM

    index = {w: i for i, w in enumerate(vocab)}
    n = len(vocab)
    d = n + n % 2  # RoPE needs an even head dimension
    eos = index["<eos>"]
    config = LlamaConfig(vocab_size=n, hidden_size=d, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=d, max_position_embeddings=256,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=eos,
                         pad_token_id=index["<pad>"], bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    nxt = {i: eos for i in range(n)}
    for last, path in paths.items():
        chain = [last, *path]
        for a, b in zip(chain, chain[1:]):
            if nxt[index[a]] not in (eos, index[b]):
                raise ValueError(f"token {a!r} already has another successor; use distinct path tokens")
            nxt[index[a]] = index[b]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, :n].copy_(torch.eye(n))
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        for a, b in nxt.items():
            model.lm_head.weight[b, a] = 10.0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    make_tokenizer(vocab).save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: Sequence[dict | str]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
