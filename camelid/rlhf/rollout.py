"""Sampling and scoring for rejection sampling and PPO, split across torchrun ranks (Llama-2 §3.2.3).

Each rank generates its share of the prompts from a full copy of the policy (`RunContext.full_copy`: the
FSDP shards gathered before the rollout phase, freed after it) and scores its share with its own replica
of the reward models; the pieces are gathered back in global order, so every statistic (whitening, KL,
advantages, the best of K) is taken over the global batch. Each sample draws from its own generator,
seeded from (seed, iteration, global sample index): the samples are the same whatever the number of
ranks, and whatever else shares a rank's batch.
"""

from __future__ import annotations

import torch

from camelid.chat_format import encode_dialog
from camelid.data.padding import pad_right
from camelid.infer.engine import Engine, Request
from camelid.infer.sampling import SamplingParams
from camelid.parallel.collectives import gather_objects, gather_rows, share
from camelid.rlhf.gold import gold_scores
from camelid.rlhf.ppo_math import token_logprobs
from camelid.rlhf.rewards import in_caller_order

SEED_STRIDE = 1_000_003  # a prime above any batch size: (seed, iteration, index) -> distinct seeds


def sample_seeds(seed: int, iteration: int, n: int) -> list[int]:
    """One seed per global sample index of an iteration."""
    base = (seed * SEED_STRIDE + iteration) * SEED_STRIDE
    return [(base + i) % (1 << 63) for i in range(n)]


def encode_prompts(tokenizer, prompts, max_prompt: int) -> list[list[int]]:
    """Each prompt's dialog as token ids, keeping its last `max_prompt` tokens (room for the answer)."""
    return [encode_dialog(tokenizer, p.messages)[-max_prompt:] for p in prompts]


def sample_answers(model, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, eos_id: int,
                   seeds: list[int] | None = None, max_batch: int = 128) -> list[list[int]]:
    """New tokens of each prompt (EOS excluded) from the batched engine; with `seeds`, prompt i samples from its
    own generator seeded with seeds[i] (temperature 0 is greedy and needs none)."""
    if not prompt_ids:
        return []
    eng = Engine(model.eval(), max_batch=min(len(prompt_ids), max_batch), seed=0)
    sp = SamplingParams(temperature=temperature)
    reqs = [Request(list(p), max_new_tokens, sp, (eos_id,), seed=None if seeds is None else seeds[i])
            for i, p in enumerate(prompt_ids)]
    return [r.tokens for r in eng.run_batch(reqs)]


def sample_shares(ctx, policy, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float, eos_id: int,
                  seeds: list[int] | None = None) -> list[list[int]]:
    """`sample_answers` over all prompts, each rank generating its share from a full copy of the policy."""
    mine = share(len(prompt_ids))
    with ctx.full_copy(policy) as full:
        outs = sample_answers(full, prompt_ids[mine.start:mine.stop], max_new_tokens, temperature, eos_id,
                              None if seeds is None else seeds[mine.start:mine.stop])
    return gather_objects(outs)


def score_shares(scorer, prompts: list, answers: list[str]) -> dict:
    """scorer.score over all (prompt, answer) pairs, each rank scoring its share: {"helpful", "safety" (or
    None), "combined"} tensors in global order on every rank. A score's last bits depend on the batch it is
    read in, so a rank scores whole batches of the reward models' own batching of all pairs."""
    if not hasattr(scorer, "batches"):  # a test's scorer: its scores do not depend on the split
        mine = share(len(prompts))
        part = scorer.score(prompts[mine.start:mine.stop], answers[mine.start:mine.stop])
        return {k: None if v is None else gather_rows(v) for k, v in part.items()}
    seqs = scorer.encode(prompts, answers)
    batches = scorer.batches(seqs)
    mine = share(len(batches))
    part = scorer.score_batches(prompts, seqs, batches[mine.start:mine.stop])
    return in_caller_order({k: None if v is None else gather_rows(v) for k, v in part.items()}, batches)


def rows_of_share(fn, n: int) -> torch.Tensor:
    """fn(rows) -> tensor for this rank's slice of n rows, gathered back into all n rows in order."""
    mine = share(n)
    return gather_rows(fn(slice(mine.start, mine.stop)))


# ------------------------------------------------------------------------------ answers as training rows

def batch_positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def answer_batch(prompts: list[list[int]], answers: list[list[int]]):
    """prompt + answer rows, right-padded: (tokens, mask of real tokens, mask of answer tokens)."""
    tokens, mask = pad_right([p + a for p, a in zip(prompts, answers)])
    resp = torch.zeros_like(mask)
    for r, (p, a) in enumerate(zip(prompts, answers)):
        resp[r, len(p):len(p) + len(a)] = True
    return tokens, mask, resp


@torch.no_grad()
def sequence_logprobs(model, inp, target, mask, chunk: int = 16, temperature: float = 1.0) -> torch.Tensor:
    out = []
    for i in range(0, inp.shape[0], chunk):
        sl = slice(i, i + chunk)
        logits = model(inp[sl], positions=batch_positions(mask[sl]), mask=mask[sl])
        out.append(token_logprobs(logits / temperature, target[sl]))
    return torch.cat(out)


@torch.no_grad()
def answer_logprobs(model, prompt_ids: list[list[int]], answers: list[list[int]], device,
                    chunk: int = 32) -> torch.Tensor:
    """Per answer [n]: sum_t log model(y_t | prompt, y_<t) over the answer's tokens (temperature 1).

    Rows go through in chunks of similar length (little padding), and only the answer positions are projected
    to the vocabulary: RS scores K answers for every prompt, and [chunk, T, vocab] logits of whole rows, freed
    and reallocated at every size, grew the process by gigabytes (the allocator keeps them)."""
    out = torch.zeros(len(answers), device=device)
    order = sorted(range(len(answers)), key=lambda r: len(prompt_ids[r]) + len(answers[r]))
    for i in range(0, len(order), chunk):
        rows = order[i:i + chunk]
        tokens, mask, resp = answer_batch([prompt_ids[r] for r in rows], [answers[r] for r in rows])
        inp, tgt, m, rm = (x.to(device) for x in (tokens[:, :-1], tokens[:, 1:], mask[:, :-1], resp[:, 1:]))
        h = model.hidden(inp, positions=batch_positions(m), mask=m)[rm]  # [answer tokens, dim]
        logp = torch.log_softmax(model.output(h).float(), dim=-1).gather(-1, tgt[rm].unsqueeze(-1)).squeeze(-1)
        out.index_add_(0, torch.tensor(rows, device=device)[:, None].expand_as(rm)[rm], logp)  # by answer
    return out


def sequence_kl(policy, ref, prompt_ids, outs, eos_id, device) -> torch.Tensor:
    """Per sequence [n]: sum_t log pi(y_t) - log pi_ref(y_t) on the given answers."""
    answers = [o + [eos_id] for o in outs]
    return answer_logprobs(policy, prompt_ids, answers, device) - answer_logprobs(ref, prompt_ids, answers, device)


# ------------------------------------------------------------------------------------ held-out measures

@torch.no_grad()
def greedy_answers(policy, ref, tokenizer, ids: list[list[int]], max_new_tokens: int, device):
    """The policy's greedy answers to prompts (token ids) and, given a reference, each answer's KL to it."""
    was = policy.training
    outs = sample_answers(policy, ids, max_new_tokens, 0.0, tokenizer.eos_id)
    kl = sequence_kl(policy, ref, ids, outs, tokenizer.eos_id, device) if ref is not None else None
    policy.train(was)
    return outs, kl


def measures(scores: dict, kl, gold=None) -> dict:
    """The held-out figures: mean combined reward and, given per-answer KLs and gold scores, their means."""
    out = {"reward": scores["combined"].mean().item()}
    if kl is not None:
        out["kl"] = kl.mean().item()
    if gold is not None:
        out["gold"] = gold.mean().item()
    return out


def heldout_reward(policy, ref, scorer, tokenizer, prompts: list, max_new_tokens: int, device) -> dict:
    """Mean combined reward of greedy answers on held-out prompts, their KL to the reference (given one) and
    their gold score (proving-ground prompts), in this process alone."""
    ids = encode_prompts(tokenizer, prompts, policy.args.max_seq_len - max_new_tokens)
    outs, kl = greedy_answers(policy, ref, tokenizer, ids, max_new_tokens, device)
    answers = [tokenizer.decode(o) for o in outs]
    return measures(scorer.score(prompts, answers), kl, gold_scores(prompts, answers))


def heldout_shares(ctx, policy, ref, scorer, tokenizer, prompts: list, max_new_tokens: int, device) -> dict:
    """`heldout_reward` with each rank answering its share of the prompts from a full copy of the policy."""
    ids = encode_prompts(tokenizer, prompts, policy.args.max_seq_len - max_new_tokens)
    mine = share(len(prompts))
    with ctx.full_copy(policy) as full:
        outs, kl = greedy_answers(full, ref, tokenizer, ids[mine.start:mine.stop], max_new_tokens, device)
    answers = [tokenizer.decode(o) for o in gather_objects(outs)]
    scores = score_shares(scorer, prompts, answers)
    return measures(scores, None if kl is None else gather_rows(kl), gold_scores(prompts, answers))
