"""The DDIM paper's published numbers (Song, Meng, Ermon 2020, arXiv 2010.02502) as data.

- Table 1: FID of 50k samples, T = 1000, rows η ∈ {0.0, 0.2, 0.5, 1.0} and σ̂, columns S.
- Table 2: CIFAR10 reconstruction error (per-dimension MSE, pixels in [0, 1]) of η = 0 inversion.
- Table 3 (appendix): LSUN 256 Bedroom / Church FID, η ∈ {0.0, 1.0}, S ≤ 100.

Rows are keyed as the report's rows (``bench.store.cell.row_key``): ``("ddim", eta)`` for the η family
and ``("sigma_hat", None)`` for the larger-variance σ̂ row. The paper used quadratic spacing for CIFAR10 and
uniform elsewhere. No torch; this module is pure data plus look-ups.
"""

from __future__ import annotations

from bench.store.cell import RowKey, row_key
from ddim.errors import DDIMError, printable

_S5 = (10, 20, 50, 100, 1000)
_S4 = (10, 20, 50, 100)


def _rows(s: tuple[int, ...], rows: dict[RowKey, tuple[float, ...]]) -> dict[RowKey, dict[int, float]]:
    return {key: dict(zip(s, vals, strict=True)) for key, vals in rows.items()}


# Table 1 and Table 3: dataset -> row key -> S -> FID.
FID: dict[str, dict[RowKey, dict[int, float]]] = {
    "cifar10": _rows(
        _S5,
        {
            ("ddim", 0.0): (13.36, 6.84, 4.67, 4.16, 4.04),
            ("ddim", 0.2): (14.04, 7.11, 4.77, 4.25, 4.09),
            ("ddim", 0.5): (16.66, 8.35, 5.25, 4.46, 4.29),
            ("ddim", 1.0): (41.07, 18.36, 8.01, 5.78, 4.73),
            ("sigma_hat", None): (367.43, 133.37, 32.72, 9.99, 3.17),
        },
    ),
    "celeba": _rows(
        _S5,
        {
            ("ddim", 0.0): (17.33, 13.73, 9.17, 6.53, 3.51),
            ("ddim", 0.2): (17.66, 14.11, 9.51, 6.79, 3.64),
            ("ddim", 0.5): (19.86, 16.06, 11.01, 8.09, 4.28),
            ("ddim", 1.0): (33.12, 26.03, 18.48, 13.93, 5.98),
            ("sigma_hat", None): (299.71, 183.83, 71.71, 45.20, 3.26),
        },
    ),
    "lsun_bedroom": _rows(
        _S4,
        {
            ("ddim", 0.0): (16.95, 8.89, 6.75, 6.62),
            ("ddim", 1.0): (42.78, 22.77, 10.81, 6.81),
        },
    ),
    "lsun_church": _rows(
        _S4,
        {
            ("ddim", 0.0): (19.45, 12.47, 10.84, 10.58),
            ("ddim", 1.0): (51.56, 23.37, 11.16, 8.27),
        },
    ),
}

# The timestep spacing the paper used per dataset (paper D.2).
SPACING: dict[str, str] = {
    "cifar10": "quad",
    "celeba": "uniform",
    "lsun_bedroom": "uniform",
    "lsun_church": "uniform",
}

# Table 2: S -> per-dimension reconstruction MSE on the CIFAR10 test set.
INVERSION_MSE: dict[int, float] = {
    10: 0.014,
    20: 0.0065,
    50: 0.0023,
    100: 0.0009,
    200: 0.0004,
    500: 0.0001,
    1000: 0.0001,
}

# Where each table's numbers come from, for captions.
SOURCE: dict[str, str] = {
    "cifar10": "Song et al. 2020, Table 1",
    "celeba": "Song et al. 2020, Table 1",
    "lsun_bedroom": "Song et al. 2020, Table 3",
    "lsun_church": "Song et al. 2020, Table 3",
}

_ALIASES = {
    "cifar_10": "cifar10",
    "cifar": "cifar10",
    "celeb_a": "celeba",
    "bedroom": "lsun_bedroom",
    "church": "lsun_church",
    "lsun_church_outdoor": "lsun_church",
}


def datasets() -> tuple[str, ...]:
    """The dataset names with published FID numbers."""
    return tuple(FID)


def canonical(dataset: str) -> str:
    """Normalise a dataset name ("CIFAR-10" -> "cifar10"); raise DDIMError for one the paper lacks."""
    key = dataset.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in FID:
        raise DDIMError(f"the paper has no FID table for dataset {dataset!r}; use one of: {', '.join(datasets())}")
    return key


def fid(dataset: str, sampler: str, eta: float | None, steps: int) -> float | None:
    """The paper's FID for one (dataset, sampler, η, S) cell, or None where the paper has no number."""
    table = FID[canonical(dataset)]
    return table.get(row_key(sampler, eta), {}).get(int(steps))


def spacing(dataset: str) -> str:
    """The timestep spacing the paper used for ``dataset`` ("quad" for CIFAR10, else "uniform")."""
    return SPACING[canonical(dataset)]


def inversion_mse(steps: int) -> float | None:
    """The paper's Table 2 reconstruction error at S = ``steps``, or None where it has none."""
    return INVERSION_MSE.get(int(steps))


def _same_dataset(paper_ds: str, dataset: str | None) -> bool:
    try:
        return dataset is not None and canonical(str(dataset)) == canonical(paper_ds)
    except DDIMError:
        return False


def mismatch(paper_ds: str, dataset: str | None, extractor: str | None) -> str | None:
    """What makes a sweep of ``dataset`` scored with ``extractor`` features incomparable with the paper's
    ``paper_ds`` numbers (Table 1/3: that dataset, Inception FID), e.g. "digits scored with classifier
    features"; None when it is comparable. Both are read from a store: shown ``printable``."""
    if _same_dataset(paper_ds, dataset) and str(extractor or "").startswith("inception"):
        return None
    what, how = printable(str(dataset or "an unnamed dataset")), printable(str(extractor or "unknown"))
    return f"{what} scored with {how} features"


def comparison(paper_ds: str, sweep: str, dataset: str | None, extractor: str | None, force: bool) -> tuple[str, str]:
    """(column-group title, caption note) for the paper's ``paper_ds`` FID shown beside a sweep.

    A sweep of another dataset or feature extractor is refused (DDIMError) unless ``force``; then its
    paper columns are titled as another dataset's and the caption says they are not comparable.
    """
    why = mismatch(paper_ds, dataset, extractor)
    if why is None:
        return f"paper ({paper_ds})", ""
    if not force:
        raise DDIMError(
            f"--compare-paper {paper_ds}: the paper's numbers are {paper_ds} with Inception FID, but sweep {sweep!r} "
            f"is {why}; compare a {paper_ds} sweep made with extractor=inception, or add --force to show them "
            "labelled as another dataset's"
        )
    other = "Inception features" if _same_dataset(paper_ds, dataset) else "another dataset"
    return (
        f"paper ({paper_ds}: {other}, not comparable)",
        f"These columns are the paper's {paper_ds} Inception FID, not this sweep's {why}: not comparable.",
    )
