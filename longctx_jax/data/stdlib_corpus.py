"""TFDS builder for a local long-document corpus: the Python standard library, or any text tree.

One example per file: `{"text": file contents, "name": module or relative path}`. The split is a
stable hash of the name (sha256, so it never depends on file order, PYTHONHASHSEED or the
machine): about `val_fraction` of documents go to "validation", the rest to "train". Files
are written as array_record and read back with `tfds.data_source` / `builder.as_data_source`,
which needs no TensorFlow.

The stdlib config is named after the interpreter (`stdlib_corpus/py311`), because the files
differ between Python versions. It reads `sysconfig.get_paths()["stdlib"]`, keeps `.py` files,
and skips site-packages, test directories and `__pycache__`; empty files are dropped.

  builder = StdlibCorpus(data_dir=...)                       # the stdlib
  builder = StdlibCorpus(config=text_dir_config("/my/books", suffixes=(".txt",)), data_dir=...)
  builder.download_and_prepare()
  source = builder.as_data_source(split="train")             # source[i]["text"] is bytes
"""

import dataclasses
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
# Directory names never descended into.
DEFAULT_EXCLUDE_DIRS = (
    "site-packages",
    "dist-packages",
    "__pycache__",
    "test",
    "tests",
    "idle_test",
)


@dataclasses.dataclass(eq=False)
class TextDirConfig(tfds.core.BuilderConfig):
    """Which files to read.

    Attributes:
      root: directory to walk; "" means the running interpreter's standard library.
      suffixes: file name endings to keep.
      exclude_dirs: directory names skipped anywhere in the tree.
      module_names: name documents as dotted modules (`email.mime.text`) rather than paths.
      val_fraction: share of documents, chosen by name hash, in the validation split.
    """

    root: str = ""
    suffixes: tuple[str, ...] = (".py",)
    exclude_dirs: tuple[str, ...] = DEFAULT_EXCLUDE_DIRS
    module_names: bool = True
    val_fraction: float = 0.05


def stdlib_config(val_fraction: float = 0.05) -> TextDirConfig:
    """Config for this interpreter's standard library, named `py311` (or `py311_val1000` for 10%)."""
    name = f"py{sys.version_info.major}{sys.version_info.minor}"
    if val_fraction != 0.05:
        name += f"_val{round(val_fraction * 10000)}"  # In 1/10000: a different split is a different dataset.
    return TextDirConfig(
        name=name,
        version="1.0.0",
        description=f"Python {sys.version_info.major}.{sys.version_info.minor} standard library .py files.",
        val_fraction=val_fraction,
    )


def text_dir_config(
    root: str | os.PathLike,
    suffixes: tuple[str, ...] = (".txt",),
    exclude_dirs: tuple[str, ...] = ("__pycache__",),
    val_fraction: float = 0.05,
) -> TextDirConfig:
    """Config for any directory of text files; its name is a hash of the absolute root and options.

    Args:
      root: directory to walk (recursively).
      suffixes: file name endings to keep, e.g. (".txt", ".md").
      exclude_dirs: directory names to skip.
      val_fraction: share of documents in the validation split.

    Returns:
      A config to pass as `StdlibCorpus(config=...)`.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"root must be an existing directory; got {root!r}")
    key = repr((root, tuple(suffixes), tuple(exclude_dirs), float(val_fraction)))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return TextDirConfig(
        name=f"dir_{digest}",
        version="1.0.0",
        description=f"Text files under {root} ending in {', '.join(suffixes)}.",
        root=root,
        suffixes=tuple(suffixes),
        exclude_dirs=tuple(exclude_dirs),
        module_names=False,
        val_fraction=val_fraction,
    )


def split_of(name: str, val_fraction: float) -> str:
    """ "validation" for about `val_fraction` of names (stable sha256 bucket), else "train"."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return VALIDATION if bucket < val_fraction else TRAIN


def doc_name(rel_path: str, module_names: bool = True) -> str:
    """The corpus's name of a file at `rel_path` under its root: the module name
    (`logging/__init__.py` -> `logging`) or, without `module_names`, the relative path."""
    rel_path = rel_path.replace(os.sep, "/")
    if not module_names:
        return rel_path
    stem = rel_path.rsplit(".", 1)[0]
    parts = stem.split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def list_documents(config: TextDirConfig) -> list[tuple[str, str]]:
    """Sorted (name, absolute path) of every kept file under the config's root."""
    root = config.root or sysconfig.get_paths()["stdlib"]
    excluded = set(config.exclude_dirs)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded)
        for filename in sorted(filenames):
            if filename.endswith(tuple(config.suffixes)):
                path = os.path.join(dirpath, filename)
                found.append((doc_name(os.path.relpath(path, root), config.module_names), path))
    found.sort()
    return found


class _ThisFile:
    """Class-level `code_path`: TFDS 4.9.10's own lookup imports `importlib_resources`, which is
    only installed on Python < 3.9, and fails for any builder defined in a package."""

    def __get__(self, obj, objtype=None) -> epath.Path:
        return epath.Path(__file__)


class StdlibCorpus(tfds.core.GeneratorBasedBuilder):
    """Long documents from local files: the Python stdlib by default, any text tree by config."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [stdlib_config()]
    DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name
    code_path = _ThisFile()

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "name": tfds.features.Text()}),
            description=self.builder_config.description,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        docs = list_documents(self.builder_config)
        if not docs:
            raise ValueError(f"no files ending in {self.builder_config.suffixes} under the config's root")
        by_split = {TRAIN: [], VALIDATION: []}
        for name, path in docs:
            by_split[split_of(name, self.builder_config.val_fraction)].append((name, path))
        return {split: self._generate_examples(files) for split, files in by_split.items()}

    def _generate_examples(self, files: list[tuple[str, str]]) -> Iterator[tuple[str, dict[str, str]]]:
        for name, path in files:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            if text.strip():
                yield name, {"text": text, "name": name}
