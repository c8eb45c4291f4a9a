"""Attention patterns as config data: `config.model.attention.pattern` and its options.

    pattern = "full"        the spec's own causal / window / sinks mask (default)
              "longformer"  Longformer local window + global tokens (longformer.py)
              "bigbird"     BigBird-ITC sliding + global + random blocks (bigbird.py)
              "dilated"     LongNet multi-branch dilated attention (dilated.py)
              "s2"          LongLoRA shifted sparse attention, training only (shifted_sparse.py)

Mask patterns become the spec's `mask` callable (evaluated per tile by blockwise, on full
position arrays by dense), so they run with every implementation that takes a `mask` and a
KV cache. Dilated attention changes the softmax itself, so it replaces the attention call
(its branches run through `dispatch.attend_with_lse`); it segments the sequence by array index
(positions only feed RoPE), has no KV-cache form and takes no packed segment ids, window,
sinks, ALiBi or soft-cap. Landmark attention needs landmark
tokens in the data, so it is a model (`longctx_jax.models.landmark.LandmarkDecoder`,
configs/repro_landmark.py), not a pattern of the plain decoder.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from longctx_jax.attention.patterns.bigbird import BigBird
from longctx_jax.attention.patterns.dilated import dilated_attention
from longctx_jax.attention.patterns.longformer import Longformer
from longctx_jax.attention.patterns.shifted_sparse import shifted_sparse_attention
from longctx_jax.attention.spec import AttentionSpec, MaskFn
from longctx_jax.typing import Array

# (q_BTNH, k_BSKH, v_BSKH, spec, impl) -> out_BTNH, for patterns that replace the softmax.
PatternAttention = Callable[[Array, Array, Array, AttentionSpec, str], Array]

PATTERNS = ("full", "longformer", "bigbird", "dilated", "s2")
_OPTIONS = {
    "full": {},
    "longformer": {"window": None, "global_positions": ()},
    "bigbird": {"seq_len": None, "block": 64, "num_window_blocks": 3, "num_global_blocks": 2,
                "num_random_blocks": 3, "seed": 0, "per_head": False},
    "dilated": {"segment_lengths": None, "dilation_rates": None},
    "s2": {"group_size": None},
}


@dataclasses.dataclass(frozen=True)
class Pattern:
    """What a configured pattern contributes to a decoder's attention call.

    Attributes:
      name: one of `PATTERNS`.
      mask: a mask callable to put in the `AttentionSpec`, or None.
      attention: a function replacing the attention call, or None.
      training_only: evaluation and generation refuse it (S2-Attn: train sparse, test full).
    """

    name: str = "full"
    mask: MaskFn | None = None
    attention: PatternAttention | None = None
    training_only: bool = False

    @property
    def cacheable(self) -> bool:
        """Whether the pattern runs against a KV cache (a mask does; a replaced softmax does not)."""
        return self.attention is None


def _dilated(q, k, v, spec: AttentionSpec, impl: str, *, segment_lengths, dilation_rates) -> Array:
    if spec.segment_ids is not None:
        raise ValueError(
            "the 'dilated' pattern takes no packed segment_ids; train it with data.use_segment_ids=False"
        )
    return dilated_attention(q, k, v, segment_lengths=segment_lengths, dilation_rates=dilation_rates,
                             causal=spec.causal, scale=spec.scale, impl=impl)


def build_pattern(name: str, options: Mapping[str, Any] | None, *, num_heads: int) -> Pattern:
    """The `Pattern` for `config.model.attention.pattern` and `.pattern_options`.

    Args:
      name: one of `PATTERNS`.
      options: the pattern's fields (see `_OPTIONS`; None = defaults). Required: longformer
        `window`; bigbird `seq_len`; dilated `segment_lengths` and `dilation_rates`.
      num_heads: query heads (BigBird draws per-head random blocks with `per_head`).

    Raises:
      ValueError: unknown pattern or option, or a missing required option.
    """
    if name not in PATTERNS:
        raise ValueError(f"unknown attention pattern {name!r}; valid: {list(PATTERNS)} "
                         "(landmark attention is the LandmarkDecoder model)")
    given = dict(options or {})
    unknown = sorted(set(given) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(
            f"unknown options {unknown} for attention pattern {name!r}; valid: {sorted(_OPTIONS[name])}"
        )
    values = {**_OPTIONS[name], **given}
    missing = sorted(key for key, value in values.items() if value is None)
    if missing:
        raise ValueError(f"attention pattern {name!r} needs options {missing}")
    if name == "longformer":
        return Pattern(name, mask=Longformer(window=int(values["window"]),
                                             global_positions=tuple(values["global_positions"])))
    if name == "bigbird":
        per_head = bool(values.pop("per_head"))
        return Pattern(name, mask=BigBird(**values, num_heads=num_heads if per_head else 1))
    if name == "dilated":
        lengths, rates = tuple(values["segment_lengths"]), tuple(values["dilation_rates"])
        if len(lengths) != len(rates) or not lengths or min(lengths) < 1 or min(rates) < 1:
            raise ValueError(f"dilated needs equally many segment_lengths and dilation_rates, all >= 1; "
                             f"got {lengths} and {rates}")
        attention = functools.partial(_dilated, segment_lengths=lengths, dilation_rates=rates)
        return Pattern(name, attention=attention)
    if name == "s2":
        group = values["group_size"]
        if isinstance(group, bool) or not isinstance(group, int) or group < 2 or group % 2:
            raise ValueError(f"s2 group_size must be an even integer >= 2, got {group!r}")
        if num_heads < 2:
            raise ValueError(f"s2 shifts half the heads; it needs num_heads >= 2, got {num_heads}")
        return Pattern(name, attention=functools.partial(shifted_sparse_attention, group_size=group),
                       training_only=True)
    return Pattern()
