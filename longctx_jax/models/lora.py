"""Low-rank adapters (LoRA) on the decoder's projections, with Flax's own `nnx.LoRA`.

LoRA (Hu et al. 2021): a frozen weight W `[in, out]` is used as W + (alpha / r) A B with
A `[in, r]`, B `[r, out]` trained and B initialised to zero, so the adapted model starts
equal to the pretrained one. The decoder's projections are einsum weights with split head
axes (`wq [D, N, H]`, `wo [N, H, D]`, ...), so each adapter is one `nnx.LoRA` on the
flattened projection (`[D, N*H]` for wq) attached as `<module>.<name>_lora`; the decoder
adds its output through `decoder.adapter_delta`. Adapter parameters are `nnx.LoRAParam`,
so `nnx.LoRAParam` (or `trainable_filter`) selects them for gradients and optimizer state.

LongLoRA (Chen et al. 2023) also trains the embeddings and normalisation layers
(`train_embeddings_and_norms`), which matters for long contexts; its S2-Attn is the "s2"
attention pattern (`attention/patterns/shifted_sparse.py`).

    spec = LoraSpec(rank=8, alpha=16.0, targets=("wq", "wk", "wv", "wo"))
    model = add_lora(model, spec, rngs=nnx.Rngs(0))     # same logits as before (B = 0)
    ...train the nnx.LoRAParam leaves...
    plain = merge_lora(model)                            # a Decoder with W + (alpha/r) A B
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from longctx_jax.models.decoder import INPUT_AXES, Decoder

ATTENTION_TARGETS = ("wq", "wk", "wv", "wo")
MLP_TARGETS = ("w_gate", "w_up", "w_down")
TARGET_GROUPS = {"attn": ATTENTION_TARGETS, "mlp": MLP_TARGETS}
VALID_TARGETS = ATTENTION_TARGETS + MLP_TARGETS + tuple(TARGET_GROUPS)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which projections get rank-`rank` adapters scaled by `alpha / rank`.

    Attributes:
      rank: r >= 1.
      alpha: the scale numerator (> 0).
      targets: projection names (`VALID_TARGETS`; "attn" and "mlp" name groups).
    """

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not float(self.alpha) > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if isinstance(self.targets, str) or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty tuple of names, got {self.targets!r}; "
                             f"valid: {VALID_TARGETS}")
        unknown = [t for t in self.targets if t not in VALID_TARGETS]
        if unknown:
            raise ValueError(f"lora.targets {unknown} do not exist in the decoder; valid: {VALID_TARGETS}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def projections(self) -> tuple[str, ...]:
        """The targets with groups expanded, in decoder order."""
        wanted = {p for t in self.targets for p in TARGET_GROUPS.get(t, (t,))}
        return tuple(p for p in ATTENTION_TARGETS + MLP_TARGETS if p in wanted)


class Adapter(nnx.Module):
    """`scale * nnx.LoRA(x)`: the low-rank update of one flattened projection `[.., in] -> [.., out]`."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, *, dtype: str,
                 rngs: nnx.Rngs):
        self.lora = nnx.LoRA(in_features, rank, out_features, dtype=jnp.dtype(dtype),
                             param_dtype=jnp.float32, rngs=rngs)
        self.scale = scale

    def __call__(self, x_BTI):
        return self.lora(x_BTI) * self.scale

    def delta(self) -> Any:
        """The dense update `scale * A @ B` `[in, out]` (float32)."""
        a_IR = self.lora.lora_a[...].astype(jnp.float32)
        return self.scale * (a_IR @ self.lora.lora_b[...].astype(jnp.float32))


def _owners(model: Decoder, name: str) -> list[nnx.Module]:
    return [block.attn if name in ATTENTION_TARGETS else block.mlp for block in model.layers]


def add_lora(model: Decoder, spec: LoraSpec, *, rngs: nnx.Rngs) -> Decoder:
    """Attaches adapters to `model` in place (and returns it); logits are unchanged (B = 0).

    Raises:
      ValueError: the model already has adapters.
    """
    if getattr(model, "lora_spec", None) is not None:
        raise ValueError(f"the model already has LoRA adapters ({model.lora_spec})")
    for name in spec.projections:
        for owner in _owners(model, name):
            weight = getattr(owner, name)
            split = INPUT_AXES[name]
            in_features, out_features = math.prod(weight.shape[:split]), math.prod(weight.shape[split:])
            setattr(owner, f"{name}_lora", Adapter(in_features, out_features, spec.rank, spec.scale,
                                                   dtype=model.cfg.dtype, rngs=rngs))
    model.lora_spec = spec
    return model


def trainable_filter(*, lora: bool, train_embeddings_and_norms: bool = False) -> nnx.filterlib.Filter:
    """What gets gradients: every parameter (full fine-tuning), or the adapters, plus with
    `train_embeddings_and_norms` LongLoRA's extras: the `embed` table and every RMSNorm scale
    (an untied `lm_head` stays frozen, as in LongLoRA)."""
    if not lora:
        if train_embeddings_and_norms:
            raise ValueError("lora.train_embeddings_and_norms needs LoRA (full fine-tuning trains them)")
        return nnx.Param
    if not train_embeddings_and_norms:
        return nnx.LoRAParam
    embeddings_and_norms = nnx.Any(nnx.PathContains("embed"), nnx.PathContains("scale"))
    return nnx.Any(nnx.LoRAParam, nnx.All(nnx.Param, embeddings_and_norms))


def rebuild(model: Decoder, **changes: Any) -> Decoder:
    """The same parameters (adapters included) under a changed `ModelConfig`, without copying."""
    cfg = model.cfg.replace(**changes)
    spec = getattr(model, "lora_spec", None)

    def build():
        fresh = Decoder(cfg, rngs=nnx.Rngs(0))
        return add_lora(fresh, spec, rngs=nnx.Rngs(0)) if spec is not None else fresh

    graphdef, _ = nnx.split(nnx.eval_shape(build))
    return nnx.merge(graphdef, nnx.state(model))


def _at(root: Any, path: Sequence[Any]) -> Any:
    return functools.reduce(lambda node, key: node[key] if isinstance(key, int) else getattr(node, key),
                            path, root)


def merge_lora(model: Decoder) -> Decoder:
    """A plain `Decoder` (no adapters) whose every adapted weight is W + (alpha / r) A B.

    Args:
      model: a decoder, with or without adapters (without, the result equals it).

    Returns:
      a new `Decoder` of `model.cfg` with the merged float32 (param dtype) weights.
    """
    plain = nnx.eval_shape(lambda: Decoder(model.cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(plain)
    flat = dict(nnx.to_flat_state(state))
    pdt = jnp.dtype(model.cfg.param_dtype)
    for path, variable in flat.items():
        value = _at(model, path)[...]
        adapter = getattr(_at(model, path[:-1]), f"{path[-1]}_lora", None) if len(path) > 1 else None
        if adapter is not None:
            value = value.astype(jnp.float32) + adapter.delta().reshape(value.shape)
        variable.set_value(jnp.asarray(value, pdt))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
