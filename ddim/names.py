"""The library's vocabulary: the names a user may type for datasets, samplers, spacings and β schedules, and the
largest T a model may have.

Torch-free, so the command line can list them in ``--help`` (and complete them in a shell), and a sweep store's
grids be checked, without importing torch; ``ddim.data`` and ``ddim.schedules`` re-export them. ``SAMPLERS`` names
the entries of ``ddim.sampling.REGISTRY`` in its order (tests/test_cli_options.py keeps the two equal).
"""

from __future__ import annotations

DATASETS = ("digits", "mnist", "cifar10", "celeba", "folder")
LABELLED_DATASETS = ("digits", "mnist", "cifar10")  # with class labels: what a classifier extractor trains on
# ddim: eq. 12 with σ of eq. 16 (η); sigma_hat: σ̂ of section 5; ddpm: all T steps; then three baselines.
SAMPLERS = ("ddim", "sigma_hat", "ddpm", "dpmpp_2m", "plms", "pndm")
SPACINGS = ("uniform", "quad", "trailing", "linspace")  # the sub-sequence τ (section 4.2, appendix D.2)
BETA_SCHEDULES = ("linear", "quad", "const", "jsd", "sigmoid", "cosine")
MAX_T = 100_000  # the ᾱ table and every timestep list are O(T); the paper's models use T = 1000
DEVICES = ("auto", "cpu", "cuda")  # or cuda:N (``ddim.runtime.resolve_device``)


def canonical_dataset(name: str) -> str:
    """A dataset name as the library spells it: ``MNIST`` and ``CelebA`` (the seed's spelling) work too.

    An unknown name is returned as given, for the caller's one-line error."""
    low = name.strip().lower() if isinstance(name, str) else name
    return low if low in DATASETS else name
