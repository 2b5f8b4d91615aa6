"""Metrics: FID / IS / KID through torch-fidelity (``fidelity``), their reference statistics
(``reference``), the offline classifier extractor (``classifier``) and the Inception weights
(``inception``).

The names below are torch-free, so the command line lists them in ``--help`` without importing torch.
"""

EXTRACTORS = ("classifier", "inception")  # feature extractors for FID / IS / KID
METRICS = ("fid", "isc", "kid")
