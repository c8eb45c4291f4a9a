"""The RoPE-type table: one entry per Hugging Face `rope_type`, the only home of its facts.

Each `RopeType` says which fields of a `rope_scaling` / `rope_parameters` mapping it needs,
which it accepts with which default, whether it needs the pretrained length L
(`original_max_position_embeddings`) and whether a config reader may fill L from a
config.json, whether its frequencies depend on the current sequence length T, and the two
functions that give its inverse frequencies and its attention factor (the math itself is in
`rope_scaling.py`). Everything that needs a fact about a type reads it here: `rope_frequencies`
dispatches through `ROPE_TYPES`, the HF reader (`rope_config.py`) and the loaders fill L where
`fills_original_length`, evaluation asks `length_dependent`.

`resolve_rope_scaling` is the one validation of a scaling mapping: it names the type (legacy
`type` keys and aliases such as Phi-3's "su" accepted), checks every field the type reads
(required present, numbers finite, factor >= 1, lengths positive integers, per-band lists of
rotary_dim / 2 positive entries, the type's own cross-field rule) and returns a `RopeScaling`
with defaults filled in. Bad input raises ValueError naming the value and what is valid.
Fields a type does not read (e.g. DeepSeek's "finetuned", Qwen's "mrope_section") are ignored,
as in transformers.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from longctx_jax.positional import rope_scaling as scaling

__all__ = [
    "COMMON_FIELDS", "EXTENSION_TYPES", "LENGTH_DEPENDENT_TYPES", "ROPE_TYPES", "ROPE_TYPE_ALIASES", "Field",
    "RopeScaling", "RopeType", "canonical_rope_type", "check_rope_scaling", "resolve_rope_scaling",
    "rotary_dim_of",
]

_LENGTH_NAME = "original_max_position_embeddings"
# Field kinds: finite number; factor (finite, >= 1); length (positive integer); fraction (in
# (0, 1]); flag (bool); bands (rotary_dim // 2 positive finite numbers). See `_convert`.
_KINDS = ("number", "factor", "length", "fraction", "flag", "bands")


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a scaling mapping.

    Attributes:
      name: the HF key.
      kind: one of `_KINDS`: "number", "factor", "length", "fraction", "flag", "bands".
      default: value when the field is absent or None (None: stays absent).
      zero_is_default: a value of 0 also means the default (transformers reads YaRN's betas
        as `cfg.get(key) or default`).
    """

    name: str
    kind: str
    default: Any = None
    zero_is_default: bool = False

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"field {self.name!r}: unknown kind {self.kind!r}; valid: {_KINDS}")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A validated scaling mapping: the type, its fields with defaults, and the rotary dim.

    Attributes:
      rope_type: the table entry.
      base: the RoPE base theta (> 1).
      rotary_dim: d = int(head_dim * partial_rotary_factor), positive and even.
      fields: every field the type reads, validated and converted (float, int, bool or a
        float64 `[d // 2]` array); optional fields without a default are absent.
    """

    rope_type: "RopeType"
    base: float
    rotary_dim: int
    fields: Mapping[str, Any]

    def get(self, name: str) -> Any:
        """The field's value, or None when absent."""
        return self.fields.get(name)

    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """float64 inverse frequencies `[rotary_dim // 2]` at sequence length `seq_len` (None: T <= L)."""
        return self.rope_type.inv_freq(self, seq_len)

    def attention_factor(self) -> float:
        """The factor `apply_rope` multiplies cos and sin by."""
        return float(self.rope_type.attention_factor(self))


InvFreqFn = Callable[[RopeScaling, "int | None"], np.ndarray]
AttentionFactorFn = Callable[[RopeScaling], float]


def _one(_: RopeScaling) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class RopeType:
    """One row of the RoPE-type table.

    Attributes:
      name: the canonical HF `rope_type`.
      required: fields that must be present (not None).
      optional: fields read when present, with their defaults.
      fills_original_length: a reader may take L from the config (`max_position_embeddings`,
        Phi-3's top-level `original_max_position_embeddings`) or the checkpoint's trained
        context when the mapping lacks it. False for llama3, whose configs give the extended
        length as `max_position_embeddings` (131072 for Llama 3.1, L = 8192), so L must be explicit.
      length_dependent: the frequencies depend on the sequence length T (a forward at T
        differs from the first T positions of a longer forward).
      factor_from_lengths: a reader sets `factor` = max_position_embeddings / L when the
        config gives a top-level L or no factor (transformers' Phi-3 rule for longrope; the
        factor then only sets the default attention factor).
      inv_freq: (scaling, seq_len) -> float64 inverse frequencies `[d // 2]`.
      attention_factor: scaling -> factor on cos and sin.
      check: the type's cross-field rule (raises ValueError), or None.
      summary: the bands it changes, for docs and error messages.
    """

    name: str
    required: tuple[Field, ...]
    optional: tuple[Field, ...]
    fills_original_length: bool
    length_dependent: bool
    inv_freq: InvFreqFn
    factor_from_lengths: bool = False
    attention_factor: AttentionFactorFn = _one
    check: Callable[[RopeScaling], None] | None = None
    summary: str = ""

    def __post_init__(self):
        if self.fills_original_length and not self.needs_original_length:
            raise ValueError(f"rope_type {self.name!r}: fills_original_length without the length field")
        if self.factor_from_lengths and "factor" not in self.optional_defaults:
            raise ValueError(f"rope_type {self.name!r}: factor_from_lengths needs an optional factor field")

    @property
    def needs_original_length(self) -> bool:
        """Reads the pretrained length L (`original_max_position_embeddings` is required)."""
        return _LENGTH_NAME in self.required_names

    @property
    def required_names(self) -> tuple[str, ...]:
        """Names of the required fields, in table order."""
        return tuple(f.name for f in self.required)

    @property
    def optional_defaults(self) -> dict[str, Any]:
        """Optional field name -> default (None: absent unless given)."""
        return {f.name: f.default for f in self.optional}


# Fields every type accepts. rope_theta is read by the config reader (the base is passed to
# `rope_frequencies` separately); partial_rotary_factor sets the rotary dim.
_PARTIAL = Field("partial_rotary_factor", "fraction", 1.0)
COMMON_FIELDS = (_PARTIAL, Field("rope_theta", "number"))

_FACTOR = Field("factor", "factor")
_LENGTH = Field(_LENGTH_NAME, "length")


def _yarn_check(s: RopeScaling) -> None:
    if s.get("beta_fast") < s.get("beta_slow"):
        raise ValueError(
            f"rope_type 'yarn': beta_fast ({s.get('beta_fast')}) must be >= beta_slow ({s.get('beta_slow')})"
        )


def _llama3_check(s: RopeScaling) -> None:
    low, high = s.get("low_freq_factor"), s.get("high_freq_factor")
    if not 0.0 < low < high:
        raise ValueError(
            f"rope_type 'llama3': need 0 < low_freq_factor < high_freq_factor, got {low} and {high}"
        )


def _default_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.default_inv_freq(s.rotary_dim, s.base)


def _linear_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.linear_inv_freq(s.rotary_dim, s.base, factor=s.get("factor"))


def _ntk_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.ntk_inv_freq(s.rotary_dim, s.base, factor=s.get("factor"))


def _dynamic_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.dynamic_inv_freq(s.rotary_dim, s.base, factor=s.get("factor"),
                                    original_max_position_embeddings=s.get(_LENGTH.name), seq_len=seq_len)


def _yarn_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.yarn_inv_freq(
        s.rotary_dim, s.base, factor=s.get("factor"), original_max_position_embeddings=s.get(_LENGTH.name),
        beta_fast=s.get("beta_fast"), beta_slow=s.get("beta_slow"), truncate=s.get("truncate"),
    )


def _yarn_attention(s: RopeScaling) -> float:
    return scaling.yarn_attention_factor(s.get("factor"), attention_factor=s.get("attention_factor"),
                                         mscale=s.get("mscale"), mscale_all_dim=s.get("mscale_all_dim"))


def _longrope_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.longrope_inv_freq(s.rotary_dim, s.base, short_factor=s.get("short_factor"),
                                     long_factor=s.get("long_factor"),
                                     original_max_position_embeddings=s.get(_LENGTH.name), seq_len=seq_len)


def _longrope_attention(s: RopeScaling) -> float:
    factor = s.get("factor")
    return scaling.longrope_attention_factor(1.0 if factor is None else factor, s.get(_LENGTH.name),
                                             attention_factor=s.get("attention_factor"))


def _llama3_inv(s: RopeScaling, seq_len: int | None) -> np.ndarray:
    return scaling.llama3_inv_freq(
        s.rotary_dim, s.base, factor=s.get("factor"), low_freq_factor=s.get("low_freq_factor"),
        high_freq_factor=s.get("high_freq_factor"), original_max_position_embeddings=s.get(_LENGTH.name),
    )


_TABLE = (
    RopeType("default", required=(), optional=(), fills_original_length=False, length_dependent=False,
             inv_freq=_default_inv, summary="none (plain RoPE, any base)"),
    RopeType("linear", required=(_FACTOR,), optional=(), fills_original_length=False, length_dependent=False,
             inv_freq=_linear_inv, summary="all bands divided by s (Position Interpolation)"),
    RopeType("ntk", required=(_FACTOR,), optional=(), fills_original_length=False, length_dependent=False,
             inv_freq=_ntk_inv, summary="base * s^(d/(d-2)): low bands most, band 0 untouched"),
    RopeType("dynamic", required=(_FACTOR, _LENGTH), optional=(), fills_original_length=True,
             length_dependent=True, inv_freq=_dynamic_inv,
             summary="as ntk, with s from the running length T; plain RoPE up to L"),
    RopeType(
        "yarn", required=(_FACTOR, _LENGTH),
        optional=(Field("beta_fast", "number", 32.0, zero_is_default=True),
                  Field("beta_slow", "number", 1.0, zero_is_default=True),
                  Field("truncate", "flag", True), Field("attention_factor", "number"),
                  Field("mscale", "number"), Field("mscale_all_dim", "number")),
        fills_original_length=True, length_dependent=False,
        inv_freq=_yarn_inv, attention_factor=_yarn_attention, check=_yarn_check,
        summary="wavelength < L/beta_fast kept, > L/beta_slow divided by s, linear ramp between; "
                "cos/sin x (0.1 ln s + 1)",
    ),
    RopeType(
        "llama3",
        required=(_FACTOR, Field("low_freq_factor", "number"), Field("high_freq_factor", "number"), _LENGTH),
        optional=(), fills_original_length=False, length_dependent=False, inv_freq=_llama3_inv,
        check=_llama3_check, summary="wavelength < L/high kept, > L/low divided by s, smooth between",
    ),
    RopeType(
        "longrope",
        required=(Field("short_factor", "bands"), Field("long_factor", "bands"), _LENGTH),
        optional=(_FACTOR, Field("attention_factor", "number")),
        fills_original_length=True, length_dependent=True, factor_from_lengths=True,
        inv_freq=_longrope_inv, attention_factor=_longrope_attention,
        summary="band i / lambda_i; long list when T > L; cos/sin x sqrt(1 + ln s / ln L)",
    ),
)

ROPE_TYPES: Mapping[str, RopeType] = MappingProxyType({t.name: t for t in _TABLE})
# Legacy spellings found in released config.json files: Phi-3's first LongRoPE configs used
# "su"; Qwen2-VL's "mrope" is plain RoPE when the three position streams coincide (text).
ROPE_TYPE_ALIASES: Mapping[str, str] = MappingProxyType({"su": "longrope", "mrope": "default"})
# Types that extend a context (all but plain RoPE), and those whose frequencies follow T.
EXTENSION_TYPES = tuple(name for name in ROPE_TYPES if name != "default")
LENGTH_DEPENDENT_TYPES = tuple(name for name, t in ROPE_TYPES.items() if t.length_dependent)


def canonical_rope_type(rope_scaling: Mapping[str, Any] | None) -> RopeType:
    """The table entry of a scaling mapping (`rope_type`, else legacy `type`; None is default).

    Raises:
      ValueError: an unknown type, naming the valid ones.
    """
    if rope_scaling is None:
        return ROPE_TYPES["default"]
    if not isinstance(rope_scaling, Mapping):
        raise ValueError(f"rope_scaling must be a mapping or None, got {rope_scaling!r}")
    name = rope_scaling.get("rope_type", rope_scaling.get("type")) or "default"
    if isinstance(name, str):
        name = ROPE_TYPE_ALIASES.get(name, name)
    if not isinstance(name, str) or name not in ROPE_TYPES:
        raise ValueError(
            f"unknown rope_type {name!r}; valid: {tuple(ROPE_TYPES)} (aliases {dict(ROPE_TYPE_ALIASES)})"
        )
    return ROPE_TYPES[name]


def _is_zero(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _finite(value: Any, type_name: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"rope_type {type_name!r}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _convert(field: Field, value: Any, type_name: str, rotary_dim: int | None) -> Any:
    """`value` of `field` validated and converted, or ValueError naming it and what is valid."""
    if field.kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"rope_type {type_name!r}: {field.name} must be a bool, got {value!r}")
        return value
    if field.kind == "bands":
        size = "rotary_dim // 2" if rotary_dim is None else rotary_dim // 2
        if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
            raise ValueError(
                f"rope_type {type_name!r}: {field.name} must be a list of {size} numbers, got {value!r}"
            )
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"rope_type {type_name!r}: {field.name} must be a list of {size} numbers, got {value!r}"
            ) from None
        if arr.ndim != 1 or (rotary_dim is not None and arr.shape != (rotary_dim // 2,)):
            raise ValueError(
                f"rope_type {type_name!r}: {field.name} must have rotary_dim // 2 = {size} entries, "
                f"got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(
                f"rope_type {type_name!r}: {field.name} entries must be positive and finite, got {value!r}"
            )
        return arr
    number = _finite(value, type_name, field.name)
    if field.kind == "factor" and number < 1.0:
        raise ValueError(f"rope_type {type_name!r}: factor must be >= 1 (a context extension), got {number}")
    if field.kind == "length":
        if number <= 0 or number != int(number):
            raise ValueError(
                f"rope_type {type_name!r}: {field.name} must be a positive integer, got {number}"
            )
        return int(number)
    if field.kind == "fraction" and not 0.0 < number <= 1.0:
        raise ValueError(f"{field.name} must be in (0, 1], got {number}")
    return number


def rotary_dim_of(head_dim: int, rope_scaling: Mapping[str, Any] | None = None) -> int:
    """Rotary dimension int(head_dim * partial_rotary_factor), validated to be positive and even.

    Args:
      head_dim: attention head dim H (a positive integer).
      rope_scaling: a scaling mapping whose `partial_rotary_factor` (default 1) is read.

    Raises:
      ValueError: a non-positive head dim, a factor outside (0, 1] or an odd / zero rotary dim.
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, numbers.Integral) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive even integer, got {head_dim!r}")
    value = (rope_scaling or {}).get(_PARTIAL.name)
    partial = _PARTIAL.default if value is None else _convert(_PARTIAL, value, "partial", 0)
    rotary_dim = int(head_dim * partial)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(
            f"rotary dim int(head_dim * partial_rotary_factor) = int({head_dim} * {partial}) = {rotary_dim} "
            "must be a positive even integer"
        )
    return rotary_dim


def _check_base(base: Any, type_name: str) -> float:
    base = _finite(base, type_name, "base")
    if base <= 1.0:
        raise ValueError(f"RoPE base (rope_theta) must be > 1, got {base}")
    return base


def _fields(rope_type: RopeType, cfg: Mapping[str, Any], rotary_dim: int | None) -> dict[str, Any]:
    """Every field `rope_type` reads from `cfg`, validated, with defaults (band lengths unchecked
    when `rotary_dim` is None)."""
    missing = [f.name for f in rope_type.required if cfg.get(f.name) is None]
    if missing:
        raise ValueError(
            f"rope_type {rope_type.name!r} needs fields {list(rope_type.required_names)}; missing {missing} "
            f"in {dict(cfg)!r} (rope_config_from_hf fills original_max_position_embeddings from config.json)"
        )
    fields: dict[str, Any] = {}
    for field in rope_type.required + rope_type.optional:
        value = cfg.get(field.name)
        if value is None or (field.zero_is_default and _is_zero(value)):
            if field.default is not None:
                fields[field.name] = field.default
            continue
        fields[field.name] = _convert(field, value, rope_type.name, rotary_dim)
    return fields


def resolve_rope_scaling(head_dim: int, base: float, rope_scaling: Mapping[str, Any] | None) -> RopeScaling:
    """Validates a HF scaling mapping against the table and fills its defaults.

    Args:
      head_dim: attention head dim H (the rotary dim is int(H * partial_rotary_factor)).
      base: the RoPE base theta (`rope_theta`), > 1.
      rope_scaling: a `rope_scaling` / `rope_parameters` mapping, or None for plain RoPE.

    Returns:
      The `RopeScaling` whose `inv_freq(seq_len)` and `attention_factor()` give the type's
      frequencies `[rotary_dim // 2]` and its factor on cos and sin.

    Raises:
      ValueError: unknown type (valid ones listed), a non-positive base, missing required
        fields (named, with the type's required list), a malformed value (named, with what is
        valid), factor < 1, an odd rotary dim, or a broken cross-field rule (yarn's betas,
        llama3's band factors).
    """
    rope_type = canonical_rope_type(rope_scaling)
    cfg = rope_scaling or {}
    rotary_dim = rotary_dim_of(head_dim, cfg)
    base = _check_base(base, rope_type.name)
    fields = _fields(rope_type, cfg, rotary_dim)
    resolved = RopeScaling(rope_type, base, rotary_dim, MappingProxyType(fields))
    if rope_type.check is not None:
        rope_type.check(resolved)
    return resolved


def check_rope_scaling(
    base: float, rope_scaling: Mapping[str, Any] | None, *, head_dim: int | None = None
) -> RopeType:
    """Validates a scaling mapping when the head dim may be unknown (a config reader's case).

    With `head_dim` this is `resolve_rope_scaling`; without it every check runs except the
    ones that need the rotary dim (per-band list lengths, an even rotary dim).

    Returns:
      The type's table entry.

    Raises:
      ValueError: as `resolve_rope_scaling`.
    """
    if head_dim is not None:
        return resolve_rope_scaling(head_dim, base, rope_scaling).rope_type
    rope_type = canonical_rope_type(rope_scaling)
    cfg = rope_scaling or {}
    if cfg.get(_PARTIAL.name) is not None:
        _convert(_PARTIAL, cfg[_PARTIAL.name], rope_type.name, None)
    _check_base(base, rope_type.name)
    fields = _fields(rope_type, cfg, None)
    if rope_type.check is not None:
        # The cross-field rules read fields only; the rotary dim is unknown here.
        rope_type.check(RopeScaling(rope_type, float(base), 0, MappingProxyType(fields)))
    return rope_type


def markdown_table() -> str:
    """The table as Markdown, one row per type (docs/positional.md quotes it; a test compares)."""

    def optional(t: RopeType) -> str:
        return ", ".join(f"`{f.name}`" + ("" if f.default is None else f"={f.default}") for f in t.optional)

    rows = [
        "| rope_type | required fields | optional fields (=default) | L: needed / filled by readers "
        "| depends on T | bands changed |",
        "|---|---|---|---|---|---|",
    ]
    for t in ROPE_TYPES.values():
        required = ", ".join(f"`{name}`" for name in t.required_names) or "—"
        length = "no"
        if t.needs_original_length:
            length = "yes / " + ("yes" if t.fills_original_length else "no, explicit")
        rows.append(f"| `{t.name}` | {required} | {optional(t) or '—'} | {length} | "
                    f"{'yes' if t.length_dependent else 'no'} | {t.summary} |")
    return "\n".join(rows)
