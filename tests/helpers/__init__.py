"""The tests' shared helpers, one module per concept (fixtures live in conftest.py):

- ``sweep``: sweep specs on the test checkpoint, typed records from flat dicts, killing a worker mid-cell;
- ``report``: the report tests' synthetic sweep (records of every kind, with their images);
- ``training``: the smallest UNet and training config; ``data``: MNIST files in idx format;
- ``metrics``: one-line error checks and PNG folders; ``tracking``: W&B test state;
- ``sampling``: the sampler tests' ᾱ table, stand-in ε-model and listed noise;
- ``postgres``: a private PostgreSQL server; ``dashboard``: a running dashboard and headless Chromium;
- ``cli``: the command line run in-process.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
