"""ddim: a faithful PyTorch reproduction of Denoising Diffusion Implicit Models (Song et al. 2020).

Submodules are light and import only torch (and torchvision / scikit-learn for data):

- ``ddim.schedules``  β / ᾱ schedules and timestep sub-sequences
- ``ddim.sampling``   generalised DDIM (eq. 12/16), σ̂, DDPM ancestral, inversion, slerp
- ``ddim.solvers``    baselines: DPM-Solver++(2M), PLMS, PNDM
- ``ddim.unet``       the DDPM UNet and its presets
- ``ddim.data``       datasets scaled to [-1, 1]
- ``ddim.training``   Algorithm 1: loss, train loop, EMA (config in ``ddim.train_config``)
- ``ddim.checkpoint`` atomic, self-describing checkpoints; ``ddim.rundir`` run-directory rules
- ``ddim.batches``    seeded per-step batches; ``ddim.distributed`` torchrun/DDP context
- ``ddim.convert``    import diffusers / official DDPM weights into our UNet
"""

from ddim.errors import DDIMError

__all__ = ["DDIMError"]
__version__ = "0.1.0"
