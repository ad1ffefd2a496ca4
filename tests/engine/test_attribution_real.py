"""The engine on a real pretrained model: SmolLM2-135M-Instruct (Llama, 30 layers), offline."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from eapbench.engine.attribution import attribute
from eapbench.engine.graph import ResidualGraph
from eapbench.models import load_model, smollm2_checkpoint

pytestmark = pytest.mark.slow

QUESTION = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
            "for her friends every day with four. She sells the remainder at the farmers' market daily for "
            "$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?")
ANSWER = ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. She makes 9 * 2 = $18 every day at the farmer's "
          "market. The answer is \\boxed{18}.")


def qa_batch(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + a_ids])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(p_ids):] = True
    return ids, mask


@pytest.fixture(scope="module")
def smollm2_fp32():
    return load_model(smollm2_checkpoint(), dtype="float32")


def test_smollm2_scores_real_text(smollm2_fp32):
    model, tok = smollm2_fp32
    graph = ResidualGraph.from_model(model)
    assert (graph.n_layers, graph.n_edges) == (30, 3691)
    ids, mask = qa_batch(tok)
    scores, loss = attribute(model, ids, mask, graph=graph, return_loss=True)
    real = scores[0][graph.edge_mask]
    assert torch.isfinite(real).all() and (real != 0).float().mean() > 0.99
    assert 0 < float(loss) < 3  # a pretrained model finds a correct worked answer plausible


def test_bf16_agrees_with_fp32_in_rank(smollm2_fp32):
    model, tok = smollm2_fp32
    graph = ResidualGraph.from_model(model)
    ids, mask = qa_batch(tok)
    s32 = attribute(model, ids, mask, graph=graph)[0][graph.edge_mask]
    model16, _ = load_model(smollm2_checkpoint(), dtype="bfloat16")
    s16 = attribute(model16, ids, mask, graph=graph)[0][graph.edge_mask]
    assert s16.dtype == torch.float32
    rho = spearmanr(s32.numpy(), s16.numpy()).statistic
    print(f"SmolLM2-135M bf16 vs fp32 Spearman over {graph.n_edges} edges: {rho:.4f}")
    assert rho >= 0.99
