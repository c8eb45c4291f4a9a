"""StdlibCorpus TFDS builder: deterministic, disjoint splits, array_record read without TF."""

import os
import pathlib
import sysconfig

import pytest
import tensorflow_datasets as tfds

from longctx_jax.data import sources, stdlib_corpus


def _names_and_texts(builder, split):
    records = builder.as_data_source(split=split)
    return [(r["name"].decode(), r["text"].decode()) for r in records.__getitems__(list(range(len(records))))]


@pytest.fixture(scope="module")
def stdlib_builds(tmp_path_factory):
    """The stdlib corpus built twice, into two data_dirs."""
    builders = []
    for i in range(2):
        builder = stdlib_corpus.StdlibCorpus(data_dir=str(tmp_path_factory.mktemp(f"tfds{i}")))
        builder.download_and_prepare()
        builders.append(builder)
    return builders


def test_split_of_is_stable_and_near_fraction():
    names = [f"pkg.module_{i}" for i in range(20000)]
    splits = [stdlib_corpus.split_of(n, 0.05) for n in names]
    assert splits == [stdlib_corpus.split_of(n, 0.05) for n in names]
    assert 0.04 < splits.count("validation") / len(names) < 0.06
    assert stdlib_corpus.split_of("anything", 0.0) == "train"
    with pytest.raises(ValueError, match="val_fraction"):
        stdlib_corpus.split_of("x", 1.0)


def test_list_documents_stdlib():
    docs = dict(stdlib_corpus.list_documents(stdlib_corpus.stdlib_config()))
    stdlib = sysconfig.get_paths()["stdlib"]
    assert docs["json"] == os.path.join(stdlib, "json", "__init__.py")
    assert docs["email.mime.text"] == os.path.join(stdlib, "email", "mime", "text.py")
    assert docs["os"] == os.path.join(stdlib, "os.py")
    for path in docs.values():
        assert path.endswith(".py"), path
        parts = pathlib.Path(path).relative_to(stdlib).parts
        assert not {"site-packages", "test", "tests", "idle_test", "__pycache__"} & set(parts), path
    assert "test.support" not in docs and "unittest.test.test_case" not in docs


def test_stdlib_build_is_deterministic_and_disjoint(stdlib_builds):
    a, b = stdlib_builds
    train, val = _names_and_texts(a, "train"), _names_and_texts(a, "validation")
    assert _names_and_texts(b, "train") == train
    assert _names_and_texts(b, "validation") == val
    train_names, val_names = {n for n, _ in train}, {n for n, _ in val}
    assert len(train_names) == len(train) and len(val_names) == len(val)
    assert not train_names & val_names
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.1
    assert all(stdlib_corpus.split_of(n, 0.05) == "validation" for n in val_names)
    all_docs = dict(stdlib_corpus.list_documents(stdlib_corpus.stdlib_config()))
    nonempty = {n for n, p in all_docs.items() if pathlib.Path(p).read_bytes().strip()}
    assert train_names | val_names == nonempty
    texts = dict(train + val)
    assert texts["os"] == pathlib.Path(all_docs["os"]).read_text(encoding="utf-8")


def test_tfds_data_source_by_name(stdlib_builds):
    name = f"stdlib_corpus/{stdlib_corpus.stdlib_config().name}"
    source = tfds.data_source(name, data_dir=stdlib_builds[0].data_dir_root, split="validation")
    assert len(source) == stdlib_builds[0].info.splits["validation"].num_examples
    assert isinstance(source[0]["text"], bytes) and isinstance(source[0]["name"], bytes)


def test_text_dir_builder(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    texts = {f"book_{i}.txt": f"Chapter {i}: Ünïcödé text. " * (i + 1) for i in range(40)}
    texts["sub/nested.txt"] = "nested document"
    for rel, text in texts.items():
        (root / rel).write_text(text, encoding="utf-8")
    (root / "empty.txt").write_text("  \n")
    (root / "notes.md").write_text("not a .txt file")
    (root / "__pycache__" / "cached.txt").write_text("excluded dir")

    config = stdlib_corpus.text_dir_config(root, suffixes=(".txt",), val_fraction=0.2)
    assert config.name == stdlib_corpus.text_dir_config(str(root), val_fraction=0.2).name
    assert config.name != stdlib_corpus.text_dir_config(root, val_fraction=0.1).name
    runs = []
    for i in range(2):
        builder = stdlib_corpus.StdlibCorpus(config=config, data_dir=str(tmp_path / f"tfds{i}"))
        builder.download_and_prepare()
        runs.append({split: _names_and_texts(builder, split) for split in ("train", "validation")})
    assert runs[0] == runs[1]
    train, val = dict(runs[0]["train"]), dict(runs[0]["validation"])
    assert val and train and not set(train) & set(val)
    assert {**train, **val} == texts


def test_text_dir_config_rejects_missing_root(tmp_path):
    with pytest.raises(ValueError, match="existing directory"):
        stdlib_corpus.text_dir_config(tmp_path / "missing")


def test_load_documents_sources_agree(stdlib_builds, tmp_path):
    data_dir = os.fspath(stdlib_builds[0].data_dir_root)
    stdlib = sources.default_data_config()
    stdlib.data_dir = data_dir
    by_tfds = sources.default_data_config()
    tfds_name = f"stdlib_corpus/{stdlib_corpus.stdlib_config().name}"
    by_tfds.update(source="tfds", tfds_name=tfds_name, data_dir=data_dir)
    for split in ("train", "validation"):
        a, b = sources.load_documents(stdlib, split), sources.load_documents(by_tfds, split)
        assert len(a) == len(b) > 0
        assert a.read_all() == b.read_all() == [a[i] for i in range(len(a))]
        assert isinstance(a[0], str) and a[-1] == a[len(a) - 1]
    bad = sources.default_data_config()
    bad.update(data_dir=data_dir, text_feature="missing")
    with pytest.raises(ValueError, match="text_feature"):
        sources.load_documents(bad, "train")
    with pytest.raises(ValueError, match="split"):
        sources.load_documents(stdlib, "test")
    bad = sources.default_data_config()
    bad.update(data_dir=data_dir, source="web")
    with pytest.raises(ValueError, match="source"):
        sources.load_documents(bad, "train")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LONGCTX_JAX_DATA_DIR", raising=False)
    assert sources.resolve_data_dir("") == os.path.expanduser("~/.cache/longctx_jax")
    monkeypatch.setenv("LONGCTX_JAX_DATA_DIR", str(tmp_path))
    assert sources.resolve_data_dir("") == str(tmp_path)
    assert sources.resolve_data_dir(str(tmp_path / "x")) == str(tmp_path / "x")
