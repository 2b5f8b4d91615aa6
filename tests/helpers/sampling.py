"""Shared pieces of the sampler tests (test_sampling.py, test_sampling_diffusers.py): the linear ᾱ table over
T = 1000 steps (DDPM's schedule, which the DDIM paper's models use), a stand-in ε-model and noise from a list."""

import torch

from ddim import schedules

T = 1000
AB = schedules.alpha_bar("linear", T)


class TinyEps(torch.nn.Module):
    """A fixed, nonlinear, batch-independent ε-model that depends on t (stands in for a UNet)."""

    def __init__(self, c=1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(c, c, 3, 3, generator=g) * 0.3)

    def forward(self, x, t):
        h = torch.nn.functional.conv2d(x, self.w.to(x.dtype), padding=1)
        return torch.tanh(h + torch.sin(t.to(x.dtype) / 97.0)[:, None, None, None])


def listed_noise(zs):
    return lambda i, x: zs[i]
