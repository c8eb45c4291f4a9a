"""Where documents come from: `config.data` -> a random-access source of document strings.

  config.data.source = "stdlib"                     the StdlibCorpus builder (no download)
  config.data.source = "text_dir"; .text_dir=PATH   StdlibCorpus over your own tree of text files
  config.data.source = "tfds"; .tfds_name="pg19"    any TFDS dataset with a Text feature
                                                    (`.text_feature`, default "text")

Prepared datasets live in `config.data.data_dir`; "" means `$LONGCTX_JAX_DATA_DIR` if set, else
`~/.cache/longctx_jax` (outside the repo so every checkout and worktree shares one copy).
TFDS datasets are prepared as array_record and read with `as_data_source`, so TensorFlow is not
needed; one already prepared as tfrecord must be re-prepared into another data_dir.
"""

import os
import re

import ml_collections
import tensorflow_datasets as tfds

from longctx_jax.data import stdlib_corpus

SOURCES = ("stdlib", "text_dir", "tfds")


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data`; experiment configs override single fields."""
    return ml_collections.ConfigDict(
        {
            "source": "stdlib",
            "tfds_name": "",
            "text_feature": "text",
            "text_dir": "",
            "text_suffixes": (".txt",),
            "val_fraction": 0.05,
            "data_dir": "",
            "train_split": "train",
            "val_split": "validation",
        }
    )


def resolve_data_dir(data_dir: str = "") -> str:
    """`data_dir`, else $LONGCTX_JAX_DATA_DIR, else ~/.cache/longctx_jax (expanded, absolute)."""
    data_dir = data_dir or os.environ.get("LONGCTX_JAX_DATA_DIR", "") or "~/.cache/longctx_jax"
    return os.path.abspath(os.path.expanduser(data_dir))


class DocumentSource:
    """Random access to one split's documents as `str`.

    Attributes:
      cache_id: stable id of dataset, config, version and split (for on-disk caches).
    """

    def __init__(self, records, text_feature: str, cache_id: str):
        self._records = records
        self._text_feature = text_feature
        self.cache_id = cache_id

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document index {i} out of range for {len(self)} documents")
        return _as_str(self._records[i % len(self)][self._text_feature])

    def read_all(self, chunk: int = 256) -> list[str]:
        """Every document, in source order."""
        texts = []
        for lo in range(0, len(self), chunk):
            ids = list(range(lo, min(lo + chunk, len(self))))
            texts += [_as_str(r[self._text_feature]) for r in self._records.__getitems__(ids)]
        return texts


def _as_str(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def load_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared (built on first use) TFDS builder named by `data_config`."""
    data_dir = resolve_data_dir(data_config.data_dir)
    source = data_config.source
    if source not in SOURCES:
        raise ValueError(f"config.data.source must be one of {SOURCES}; got {source!r}")
    if data_config.tfds_name and source != "tfds":
        raise ValueError(f"config.data.tfds_name={data_config.tfds_name!r} needs config.data.source='tfds'")
    if source == "stdlib":
        config = stdlib_corpus.stdlib_config(data_config.val_fraction)
        if config.name in stdlib_corpus.StdlibCorpus.builder_configs:
            config = config.name  # TFDS refuses an equal but distinct object under a registered name.
        builder = stdlib_corpus.StdlibCorpus(config=config, data_dir=data_dir)
    elif source == "text_dir":
        config = stdlib_corpus.text_dir_config(
            data_config.text_dir, tuple(data_config.text_suffixes), val_fraction=data_config.val_fraction
        )
        builder = stdlib_corpus.StdlibCorpus(config=config, data_dir=data_dir)
    else:
        if not data_config.tfds_name:
            raise ValueError("config.data.source='tfds' needs config.data.tfds_name, e.g. 'pg19'")
        builder = tfds.builder(data_config.tfds_name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def load_documents(data_config: ml_collections.ConfigDict, split: str) -> DocumentSource:
    """Documents of one split of the dataset `data_config` names, building it if needed.

    Args:
      data_config: `config.data` (see `default_data_config`).
      split: a TFDS split name, e.g. "train" or "validation".

    Returns:
      A `DocumentSource` (len, [i] -> str).
    """
    builder = load_builder(data_config)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {builder.info.full_name}; have {list(builder.info.splits)}")
    feature = data_config.text_feature
    if feature not in builder.info.features:
        raise ValueError(
            f"text_feature {feature!r} not in {builder.info.full_name}; have {list(builder.info.features)}"
        )
    records = builder.as_data_source(split=split)  # TFDS refuses formats other than array_record.
    cache_id = _safe(f"{builder.info.full_name}-{split}-{feature}")
    return DocumentSource(records, feature, cache_id)
