"""The course's AdamW (Loshchilov & Hutter 2019, Algorithm 2, as the first assignment writes it).

Per parameter, at step t (1-based):

    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    alpha_t <- alpha * sqrt(1 - beta2^t) / (1 - beta1^t)
    theta <- theta - alpha_t * m / (sqrt(v) + eps)
    theta <- theta - alpha * lambda * theta

The state (m, v) is created lazily at the first step, one tensor of each per parameter: the
"optimizer state = 2 P" of the accounting, and the reason the first step's memory peak is
higher than a later step's. accounting.ADAMW_OPS_PER_PARAMETER counts the FLOPs of this
update element by element.
"""

from __future__ import annotations

import math

import torch


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid AdamW hyperparameters lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t, m, v, g = state["t"], state["m"], state["v"], p.grad
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                alpha_t = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-alpha_t)
                p.mul_(1 - lr * wd)  # decoupled weight decay: theta - alpha*lambda*theta
        return loss
