"""Dataset loaders: one entry point, `load_dataset(spec)`, whatever the format.

`spec` is "synthetic" (the built-in generator, see synthetic.py) or a folder in one of the layouts
that the loaders read, recognised by the files it holds:

    dataset.json                                   -> canonical (canonical.py)
    shopping_queries_dataset_examples.parquet      -> Amazon ESCI (esci.py)
    product.csv, query.csv, label.csv              -> Wayfair WANDS (wands.py)
"""

from __future__ import annotations

import os

from leser_jax.catalog import Catalog, SplitConfig
from leser_jax.data import canonical, esci, synthetic, wands


def load_dataset(spec: str, *, strict: bool = False, split_config: SplitConfig = SplitConfig(),
                 synthetic_config: synthetic.SyntheticConfig | None = None,
                 esci_locale: str = "us") -> Catalog:
    """Loads the dataset named by `spec` ("synthetic" or a folder path)."""
    if spec == "synthetic":
        return synthetic.generate(synthetic_config or synthetic.SyntheticConfig()).with_split(
            split_config)
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"dataset folder {spec} not found: pass 'synthetic' or a folder in "
                                f"the canonical, ESCI or WANDS layout")
    if canonical.is_canonical(spec):
        return canonical.load(spec, strict=strict, split_config=split_config)
    if esci.is_esci(spec):
        return esci.load(spec, locale=esci_locale, strict=strict, split_config=split_config)
    if wands.is_wands(spec):
        return wands.load(spec, strict=strict, split_config=split_config)
    raise FileNotFoundError(
        f"{spec} holds no dataset that a loader recognises: expected dataset.json (canonical), "
        f"{esci.EXAMPLES_FILE} (ESCI) or {', '.join(wands.FILES)} (WANDS); found "
        f"{sorted(os.listdir(spec))[:10]}")
