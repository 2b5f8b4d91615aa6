"""Test-wide settings: one intra-op thread (the suite runs on 2 shared cores) and offline W&B."""

import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")
