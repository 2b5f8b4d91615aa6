"""ddim.training's ``diffusion_loss`` (Algorithm 1's L_simple) with stub ε-models: a model that inverts
the forward process exactly (loss 0) and one that predicts nothing (loss = ‖ε‖²)."""

from __future__ import annotations

import pytest
import torch

from ddim import schedules
from ddim.training import diffusion_loss

T = 1000
AB = schedules.alpha_bar("linear", T)  # float64
# Small and large ᾱ on purpose: at ᾱ_t = 1/2 a swap of √ᾱ_t and √(1−ᾱ_t) would be invisible.
T_SAMPLE = torch.tensor([0, 10, 250, 999])


def _x0_eps(shape=(4, 3, 5, 6), dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=g, dtype=dtype) * 2 - 1
    return x0, torch.randn(shape, generator=g, dtype=dtype)


def _eps_oracle(x0: torch.Tensor, alpha_bar: torch.Tensor, calls: list | None = None):
    """ε_θ that knows x₀: solves x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (Algorithm 1, line 5) for ε."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t.clone())
        ab = alpha_bar[t][:, None, None, None]  # (B, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return model


# --- L_simple ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-6)], ids=["float64", "float32"])
def test_loss_is_zero_for_the_model_that_inverts_the_forward_process(dtype, tol):
    x0, eps = _x0_eps(dtype=dtype)
    ab = AB.to(dtype)
    calls: list[torch.Tensor] = []
    loss = diffusion_loss(_eps_oracle(x0, ab, calls), x0, T_SAMPLE, eps, ab)
    assert loss.shape == () and float(loss) < tol, float(loss)
    assert len(calls) == 1 and torch.equal(calls[0], T_SAMPLE)  # one call, t passed through unchanged
    # Negative control: an oracle for the swapped forward process (√(1−ᾱ) x₀ + √ᾱ ε) is far from 0 here.
    swapped = _eps_oracle(x0, 1 - ab)
    assert float(diffusion_loss(swapped, x0, T_SAMPLE, eps, ab)) > 10.0


def test_loss_of_a_zero_model_is_eps_squared_summed_over_pixels_and_averaged_over_images():
    x0, eps = _x0_eps()
    loss = diffusion_loss(lambda x, t: torch.zeros_like(x), x0, T_SAMPLE, eps, AB)
    assert torch.equal(loss, eps.square().sum(dim=(1, 2, 3)).mean())
    # By hand: ε ≡ 1 in image 0 and ≡ 3 in image 1, 2·4·4 = 32 pixels each → (32·1 + 32·9) / 2 = 160.
    eps = torch.ones(2, 2, 4, 4)
    eps[1] = 3.0
    loss = diffusion_loss(lambda x, t: torch.zeros_like(x), torch.zeros_like(eps), torch.tensor([5, 500]), eps, AB)
    assert float(loss) == 160.0
