"""The RoPE-type table: every entry's fields enforced, its flags true of its functions, the HF
reader and the loaders agreeing with it, the docs quoting it, and positional/ free of cycles."""

import ast
import math
import pathlib
import re

import numpy as np
import pytest

from longctx_jax.models.llama import complete_rope_scaling
from longctx_jax.positional.rope import rope_config_from_hf, rope_frequencies
from longctx_jax.positional.rope_types import (
    ROPE_TYPE_ALIASES,
    ROPE_TYPES,
    canonical_rope_type,
    check_rope_scaling,
    markdown_table,
    resolve_rope_scaling,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
D, BASE, L = 64, 1e4, 2048

# A complete, valid mapping per type, written out here (not derived from the table).
VALID = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": L},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L, "beta_fast": 32,
             "beta_slow": 1, "truncate": True, "attention_factor": 1.2, "mscale": 1.0, "mscale_all_dim": 0.8},
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": L},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L,
                 "attention_factor": 1.1, "short_factor": np.linspace(1.0, 1.2, D // 2).tolist(),
                 "long_factor": np.linspace(1.0, 4.0, D // 2).tolist()},
}
# Bad values per field kind, each with a fragment its error must contain.
BAD = {
    "number": [("x", "finite number"), (float("nan"), "finite number"), (True, "finite number")],
    "factor": [(0.5, "factor must be >= 1"), ("4", "finite number"), (float("inf"), "finite number")],
    "length": [(0, "positive integer"), (1.5, "positive integer"), (-4096, "positive integer")],
    "flag": [("yes", "must be a bool"), (1, "must be a bool")],
    "bands": [([1.0] * 3, "entries"), ("1,2", "list of"), ([-1.0] * (D // 2), "positive and finite")],
}


def test_every_table_entry_has_a_written_case():
    assert set(VALID) == set(ROPE_TYPES)
    for name, cfg in VALID.items():
        assert resolve_rope_scaling(D, BASE, cfg).rope_type is ROPE_TYPES[name]


@pytest.mark.parametrize("name", sorted(ROPE_TYPES))
def test_every_required_field_is_enforced(name):
    rope_type = ROPE_TYPES[name]
    for field in rope_type.required_names:
        for absent in ("drop", None):
            cfg = dict(VALID[name])
            if absent == "drop":
                del cfg[field]
            else:
                cfg[field] = None
            with pytest.raises(ValueError, match=rf"rope_type '{name}' needs fields .*missing \['{field}'\]"):
                rope_frequencies(D, BASE, cfg)


@pytest.mark.parametrize("name", sorted(ROPE_TYPES))
def test_every_field_refuses_bad_values_naming_them(name):
    rope_type = ROPE_TYPES[name]
    for field in rope_type.required + rope_type.optional:
        for bad, fragment in BAD[field.kind]:
            cfg = dict(VALID[name], **{field.name: bad})
            with pytest.raises(ValueError, match=re.escape(fragment)) as err:
                rope_frequencies(D, BASE, cfg)
            message = str(err.value)
            assert field.name in message, message
            assert repr(bad) in message or f"shape {np.shape(bad)}" in message, message


def test_optional_defaults_are_filled_and_unread_fields_ignored():
    cfg = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L, "finetuned": True}
    fields = dict(resolve_rope_scaling(D, BASE, cfg).fields)
    assert fields == {"factor": 4.0, "original_max_position_embeddings": L, "beta_fast": 32.0,
                      "beta_slow": 1.0, "truncate": True}
    # transformers reads the betas as `get(key) or default`: 0 means the default.
    zero = resolve_rope_scaling(D, BASE, dict(cfg, beta_fast=0, beta_slow=0)).fields
    assert (zero["beta_fast"], zero["beta_slow"]) == (32.0, 1.0)
    assert ROPE_TYPES["yarn"].optional_defaults["truncate"] is True


@pytest.mark.parametrize("name", sorted(ROPE_TYPES))
def test_flags_are_true_of_the_functions(name):
    """length_dependent <=> the result moves with T; needs L <=> it moves with L."""
    rope_type = ROPE_TYPES[name]
    cfg = dict(VALID[name], original_max_position_embeddings=L)
    at = {seq_len: rope_frequencies(D, BASE, cfg, seq_len=seq_len) for seq_len in (None, 16 * L)}
    moves_with_t = not np.array_equal(at[None][0], at[16 * L][0])
    assert moves_with_t == rope_type.length_dependent

    def result(length, seq_len):
        inv, att = rope_frequencies(D, BASE, dict(cfg, original_max_position_embeddings=length),
                                    seq_len=seq_len)
        return np.append(inv, att)

    moves_with_l = any(not np.array_equal(result(L, t), result(4 * L, t)) for t in (None, 3 * L))
    assert moves_with_l == rope_type.needs_original_length
    assert rope_type.needs_original_length == ("original_max_position_embeddings" in rope_type.required_names)


@pytest.mark.parametrize("name", sorted(ROPE_TYPES))
def test_hf_reader_and_loader_fill_the_pretrained_length_as_the_table_says(name):
    rope_type = ROPE_TYPES[name]
    scaling = {k: v for k, v in VALID[name].items() if k != "original_max_position_embeddings"}
    hf = {"hidden_size": 512, "num_attention_heads": 8, "max_position_embeddings": 8192, "rope_theta": BASE,
          "rope_scaling": scaling}
    if rope_type.needs_original_length and not rope_type.fills_original_length:
        with pytest.raises(ValueError, match="original_max_position_embeddings"):
            rope_config_from_hf(hf)
    else:
        cfg = rope_config_from_hf(hf)
        if name == "default":
            assert cfg.rope_scaling is None
        else:
            assert canonical_rope_type(cfg.rope_scaling) is rope_type
            filled = cfg.rope_scaling.get("original_max_position_embeddings")
            assert filled == (8192 if rope_type.fills_original_length else None)
            assert resolve_rope_scaling(64, cfg.theta, cfg.rope_scaling).rope_type is rope_type
    loaded = complete_rope_scaling(scaling, 8192)
    assert ("original_max_position_embeddings" in loaded) == rope_type.fills_original_length


def test_reader_factor_rule_follows_the_table():
    """Without a factor and with Phi-3's top-level L, only factor_from_lengths types get
    factor = max_position_embeddings / L (and so their default attention factor)."""
    for name, rope_type in ROPE_TYPES.items():
        scaling = {k: v for k, v in VALID[name].items() if k != "attention_factor"}
        if "factor" not in rope_type.required_names:
            scaling.pop("factor", None)
        hf = {"hidden_size": 512, "num_attention_heads": 8, "max_position_embeddings": 8192,
              "original_max_position_embeddings": 2048, "rope_scaling": scaling}
        cfg = rope_config_from_hf(hf)
        factor = (cfg.rope_scaling or {}).get("factor")
        assert (factor == 4.0 and "factor" not in scaling) == rope_type.factor_from_lengths, name
        if rope_type.factor_from_lengths:
            expected = math.sqrt(1 + math.log(4.0) / math.log(2048))
            assert rope_frequencies(64, cfg.theta, cfg.rope_scaling)[1] == pytest.approx(expected)


def test_aliases_and_unknown_types():
    assert canonical_rope_type({"type": "su"}) is ROPE_TYPES["longrope"]
    assert canonical_rope_type({"rope_type": "mrope"}) is ROPE_TYPES["default"]
    assert canonical_rope_type(None) is ROPE_TYPES["default"]
    assert set(ROPE_TYPE_ALIASES.values()) <= set(ROPE_TYPES)
    for bad in ("xpos", 3, ["yarn"]):
        with pytest.raises(ValueError, match=r"unknown rope_type .*valid: .*'longrope'"):
            canonical_rope_type({"rope_type": bad})


def test_check_without_head_dim_validates_all_but_band_lengths():
    cfg = dict(VALID["longrope"], short_factor=[1.0] * 5, long_factor=[2.0] * 5)
    assert check_rope_scaling(BASE, cfg) is ROPE_TYPES["longrope"]
    with pytest.raises(ValueError, match="entries"):
        check_rope_scaling(BASE, cfg, head_dim=D)
    with pytest.raises(ValueError, match="beta_fast"):
        check_rope_scaling(BASE, dict(VALID["yarn"], beta_fast=0.5, beta_slow=2))
    with pytest.raises(ValueError, match=r"must be > 1"):
        check_rope_scaling(0.5, None)


def test_docs_quote_the_table():
    assert markdown_table() in (ROOT / "docs" / "positional.md").read_text()


def _positional_imports(path: pathlib.Path) -> tuple[set[str], list[str]]:
    """Modules of longctx_jax.positional that `path` imports, and any imports inside functions."""
    tree = ast.parse(path.read_text())
    targets, nested = set(), []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if id(node) not in top_level:
            nested.append(f"{path.name}:{node.lineno}")
        targets |= {n.split(".")[2] for n in names
                    if n.startswith("longctx_jax.positional.") and len(n.split(".")) > 2}
    return targets, nested


def test_positional_imports_are_acyclic_and_at_module_level():
    files = {p.stem: p for p in (ROOT / "longctx_jax" / "positional").glob("*.py") if p.stem != "__init__"}
    graph, nested = {}, []
    for name, path in files.items():
        targets, inner = _positional_imports(path)
        graph[name] = targets & set(files)
        nested += inner
    assert not nested, f"function-level imports: {nested}"
    done: set[str] = set()

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join(stack + [node])}"
        if node not in done:
            for dep in sorted(graph[node]):
                visit(dep, stack + [node])
            done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert "rope" not in graph["rope_config"] and "rope_config" in graph["rope"]
