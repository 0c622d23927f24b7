"""Greedy generation the way transformers' generate sees it, for the oracle scripts."""
import torch


def greedy_through_cache(model, prompt_ids, n):
    """The prompt in one forward pass, then n argmax tokens fed back one at a
    time through the KV cache. Returns the ids and the smallest gap met
    between the two best logits (how far float rounding is from a flip)."""
    ids, margins, past, feed = [], [], None, prompt_ids
    with torch.no_grad():
        for _ in range(n):
            o = model(input_ids=torch.tensor([feed]), past_key_values=past, use_cache=True)
            past = o.past_key_values
            top = torch.topk(o.logits[0, -1].double(), 2)
            ids.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            feed = [ids[-1]]
    return ids, min(margins)
