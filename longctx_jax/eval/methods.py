"""Context-extension methods as `ModelConfig` changes of a pretrained decoder.

RoPE-side methods set an HF `rope_scaling` mapping (see `longctx_jax.positional.rope`) with
factor s = target_length / train_length:

  "none"      no scaling
  "linear"    Position Interpolation (Chen et al. 2023): positions divided by s
  "ntk"       NTK-aware base change (bloc97 2023): base * s^(d / (d - 2))
  "dynamic"   dynamic NTK (emozilla 2023): the NTK base from the current length
  "yarn"      YaRN (Peng et al. 2023): NTK-by-parts ramp (beta_fast 32, beta_slow 1) +
              attention temperature 0.1 ln s + 1
  "llama3"    Llama 3.1 frequency bands (low_freq_factor 1, high_freq_factor 4)
  "longrope"  LongRoPE (Ding et al. 2024) with SEARCHED per-band factors only: the
              `longrope` argument (config.longrope, as experiments/longrope_search.py writes
              it); refused without them
  "longrope_phi3"  LongRoPE with the factors Phi-3.5-mini-instruct publishes, carried to this
              model's rotary dim and factor by `positional.published_longrope.transfer_factors`
              (interpolated over the normalised frequency index, exponent ln s / ln 32), with
              Phi-3's attention factor sqrt(1 + ln s / ln L)
  "linear_ramp"  not a published method: HF `longrope` lists from the ramp
              lambda_i = 1 + (s - 1) * i / (d/2 - 1) (no interpolation for the fastest band, full
              interpolation for the slowest), short factors all 1, attention factor
              sqrt(1 + ln s / ln L); a simple per-band baseline
  "yarn_longrope_temperature"  YaRN's frequencies with LongRoPE's attention factor
              sqrt(1 + ln s / ln L) instead of YaRN's 0.1 ln s + 1 (the control that separates
              LongRoPE's temperature from its frequencies)

Attention-side methods keep plain RoPE and restrict attention on the dense/blockwise path:

  "sliding_window"  each query sees its `window` most recent keys
  "streaming"       StreamingLLM (Xiao et al. 2023): the window plus the first `sinks` tokens.
                    Without a KV cache the keys keep their true positions, so the sink tokens
                    sit at their real (long) distance rather than being re-indexed next to the
                    window as in the cached implementation (`longctx_jax.models.kv_cache`).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from flax import nnx

from longctx_jax.models.decoder import Decoder
from longctx_jax.positional.published_longrope import published_rope_scaling
from longctx_jax.positional.rope_scaling import longrope_attention_factor
from longctx_jax.positional.rope_types import EXTENSION_TYPES, ROPE_TYPES

# Methods built from a rope_type of the table with fixed extra fields: method -> rope_type.
DERIVED_ROPE_METHODS = {
    "longrope_phi3": "longrope", "linear_ramp": "longrope", "yarn_longrope_temperature": "yarn",
}
# "none", every extending rope_type of the RoPE-type table (table order), then the derived ones.
ROPE_METHODS = ("none",) + EXTENSION_TYPES + tuple(DERIVED_ROPE_METHODS)
ATTENTION_METHODS = ("sliding_window", "streaming")
METHODS = ROPE_METHODS + ATTENTION_METHODS
# Methods that need no searched input (everything but "longrope"): what a full sweep runs.
STANDALONE_METHODS = tuple(m for m in METHODS if m != "longrope")
LONGROPE_NEEDS_FACTORS = (
    "method 'longrope' needs searched LongRoPE factors (config.longrope = {'short_factor': [...], "
    "'long_factor': [...]}, as experiments/longrope_search.py writes them to rope_scaling.json); the "
    "linear ramp it used to run without them is now the method 'linear_ramp', and Phi-3.5-mini's "
    "published factors are 'longrope_phi3'"
)


def check_longrope_input(methods: Sequence[str], longrope: Mapping[str, Any] | None) -> None:
    """Raises ValueError when "longrope" is asked for without searched factors (before any work)."""
    if "longrope" in methods and longrope is None:
        raise ValueError(LONGROPE_NEEDS_FACTORS)


def scaling_factor(train_length: int, target_length: int | None, lengths: list[int]) -> tuple[int, float]:
    """The target length and RoPE scaling factor s = target / train of an extension run.

    Args:
      train_length: the model's pretraining context (> 0).
      target_length: the length to extend to; None: the longest of `lengths`, and s = 1 when
        every evaluated length fits the training context.
      lengths: the evaluated lengths (each > 0).

    Raises:
      ValueError: a non-positive length, or an explicit `target_length` below `train_length`
        (a factor < 1 would shrink the context; it is refused rather than clamped).
    """
    if train_length <= 0:
        raise ValueError(f"train_length must be positive, got {train_length}")
    bad = [n for n in lengths if n <= 0]
    if bad:
        raise ValueError(f"evaluation lengths must be positive, got {bad}")
    if target_length is None:
        if not lengths:
            raise ValueError("no target_length and no evaluation lengths to take it from")
        target = max(lengths)
        return target, max(1.0, target / train_length)
    if target_length < train_length:
        raise ValueError(f"target_length {target_length} is below train_length {train_length} (factor "
                         f"{target_length / train_length:g} < 1); give a target_length >= {train_length}")
    return int(target_length), target_length / train_length


def linear_ramp_factors(factor: float, rotary_dim: int) -> dict[str, list[float]]:
    """HF `longrope` lists of the "linear_ramp" method (module doc): short all 1, long
    lambda_i = 1 + (s - 1) * i / (d/2 - 1), i = 0 .. d/2 - 1 (`[rotary_dim // 2]` each)."""
    half = rotary_dim // 2
    long = [1.0 + (factor - 1.0) * i / max(half - 1, 1) for i in range(half)]
    return {"short_factor": [1.0] * half, "long_factor": long}


def rope_scaling_for(method: str, *, factor: float, train_length: int, rotary_dim: int,
                     longrope: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The HF `rope_scaling` mapping of a RoPE-side method (None for "none" and attention methods).

    Args:
      method: one of `METHODS`.
      factor: target length / training length (>= 1).
      train_length: the model's pretraining context (original_max_position_embeddings).
      rotary_dim: rotary dimension (head_dim for full RoPE), for per-band factor lists.
      longrope: searched LongRoPE fields ({"short_factor", "long_factor"}, optionally more);
        required by "longrope", ignored by the other methods.

    Raises:
      ValueError: an unknown method, factor < 1, or "longrope" without `longrope`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown extension method {method!r}; valid: {METHODS}")
    if factor < 1.0:
        raise ValueError(f"scaling factor must be >= 1, got {factor}")
    if method in ("none",) + ATTENTION_METHODS:
        return None
    check_longrope_input((method,), longrope)
    if method == "longrope_phi3":
        return published_rope_scaling("phi3.5-mini", rotary_dim=rotary_dim, factor=float(factor),
                                      original_length=int(train_length))
    rope_type = DERIVED_ROPE_METHODS.get(method, method)
    base = {"rope_type": rope_type, "factor": float(factor)}
    if ROPE_TYPES[rope_type].needs_original_length:
        base["original_max_position_embeddings"] = int(train_length)
    if method == "llama3":
        base.update(low_freq_factor=1.0, high_freq_factor=4.0)
    if method == "linear_ramp":
        base.update(linear_ramp_factors(factor, rotary_dim))
    if method == "yarn_longrope_temperature":
        base["attention_factor"] = longrope_attention_factor(float(factor), int(train_length))
    if method == "longrope":
        base.update(dict(longrope))
    return base


def config_changes(method: str, *, factor: float, train_length: int, rotary_dim: int,
                   window: int | None = None, sinks: int = 4,
                   longrope: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`ModelConfig` fields that turn the pretrained model into `method`.

    Args:
      window: attention window of "sliding_window" and "streaming" (default train_length).
      sinks: StreamingLLM sink tokens.
      other args: see `rope_scaling_for`.
    """
    changes: dict[str, Any] = {
        "rope_scaling": rope_scaling_for(method, factor=factor, train_length=train_length,
                                         rotary_dim=rotary_dim, longrope=longrope),
        "window": None, "sinks": 0,
    }
    if method in ATTENTION_METHODS:
        changes["window"] = int(window or train_length)
        changes["sinks"] = int(sinks) if method == "streaming" else 0
    return changes


def with_config(model: Decoder, **changes: Any) -> Decoder:
    """The same weights under a changed `ModelConfig` (no copy of the parameters)."""
    cfg = model.cfg.replace(**changes)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))
