"""Creating an optzoo optimizer for a model by name, the way timm users do (``timm.optim.create_optimizer_v2``).

    python examples/timm_style.py

``optzoo.create_optimizer(model, "lamb", lr=..., weight_decay=...)`` puts biases, norm layers' scales and
shifts (every 1-D tensor) and whatever ``model.no_weight_decay()`` names into a ``wd=0`` group, everything else
into a group with ``wd=weight_decay``, and returns a real ``torch.optim.Optimizer``.
"""

from __future__ import annotations

import torch

import optzoo


class TinyViTBlock(torch.nn.Module):
    def __init__(self, dim: int = 32, tokens: int = 16):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, tokens, dim))
        self.norm = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
        self.head = torch.nn.Linear(dim, 10)

    def no_weight_decay(self):
        return {"pos_embed"}  # timm's convention: the model names what must not decay

    def forward(self, x):
        x = x + self.pos_embed
        x = x + self.mlp(self.norm(x))
        return self.head(x.mean(1))


def main() -> None:
    torch.manual_seed(0)
    model = TinyViTBlock()
    opt = optzoo.create_optimizer(model, "lamb", lr=0.02, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        print(f"wd={group['wd']}: {', '.join(names[id(p)] for p in group['params'])}")
    x, y = torch.randn(64, 16, 32), torch.randint(0, 10, (64,))
    for step in range(50):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0 or step == 49:
            print(f"step {step:2d}  loss {loss.item():.4f}  lr {sched.get_last_lr()[0]:.5f}")


if __name__ == "__main__":
    main()
