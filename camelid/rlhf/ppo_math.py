"""PPO's arithmetic on [B, T] tensors of response tokens (mask marks real response tokens), as pure
functions so each can be checked against hand-computed values."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[:, t] | ...) from logits [B, T, V] that predict those tokens -> [B, T] fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_per_token(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """The per-token KL estimate used in the reward (k1: log pi - log pi_ref on the sampled token).
    Its expectation under pi is KL(pi || pi_ref); it is exactly zero when the policies agree."""
    return logp - logp_ref


def penalized_rewards(score: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """Llama-2's R = R_c - beta * KL, spread over tokens: -beta * KL at every response token, plus the
    (whitened) sequence score at the last response token of each row."""
    rewards = -beta * kl_per_token(logp, logp_ref) * mask
    last = (torch.arange(mask.shape[1], device=mask.device) * mask).argmax(1)
    rewards[torch.arange(mask.shape[0]), last] += score
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (rows right-padded; masked positions are
    ignored and the value after the last token is 0). Returns (advantages, returns)."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, device=rewards.device)
    next_adv = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t].float()
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # padding positions pass the "next" values through unchanged
        next_value = m * values[:, t] + (1 - m) * next_value
        next_adv = m * a + (1 - m) * next_adv
    return adv, (adv + values) * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    m = mask.float()
    n = m.sum().clamp(min=1)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate, SUMMED over response tokens: sum max(-A r, -A clip(r, 1 - eps, 1 + eps))."""
    ratio = torch.exp(logp - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    m = mask.float()
    loss = (torch.maximum(unclipped, clipped) * m).sum()
    n = m.sum().clamp(min=1)
    stats = {"clip_fraction": (((ratio - 1).abs() > clip).float() * m).sum().item() / n.item(),
             "ratio": ((ratio * m).sum() / n).item()}
    return loss, stats


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """Clipped value loss, SUMMED: 0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    clipped = values_old + torch.clamp(values - values_old, -clip, clip)
    return (0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2) * mask.float()).sum()


def group_whiten(score: torch.Tensor, group_size: int, eps: float = 1e-8) -> torch.Tensor:
    """Credit for the answer, not the prompt: each score minus the mean of its prompt's group (the
    `group_size` consecutive rollouts of one prompt), divided by the spread of those differences over the
    batch. Whitening over the whole batch instead keeps what separates prompts (a safety prompt's reward is
    ~5 above a helpful one's), and the policy then learns which prompt it was given, not which answer was
    better."""
    g = score.view(-1, group_size)
    centered = (g - g.mean(1, keepdim=True)).reshape(-1)
    return centered * torch.rsqrt(centered.pow(2).mean() + eps)
