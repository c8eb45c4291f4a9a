"""Autoregressive generation with a preallocated KV cache: greedy, temperature and top-p.

    tokens = generate(model, prompt_ids, max_new_tokens=64)                      # greedy
    tokens = generate(model, prompt_ids, max_new_tokens=64, temperature=0.7, top_p=0.9, seed=0)
    tokens = generate(model, prompt_ids, max_new_tokens=10_000, cache_size=512, streaming=True)

The model is split once (`nnx.split`); prefill (the whole prompt) and the one-token decode
step are pure `jax.jit` functions with the cache donated, so a decode step compiles once and
updates the cache in place. On a CPU the decode step reads `[out, in]` copies of the
projection weights (`decode_layout`; docs/kv_cache.md). StreamingLLM mode
(`streaming=True`, see kv_cache.py) keeps `sinks` + a rolling window of entries and runs for
any number of tokens in constant memory.

Top-p (nucleus) sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens
whose probability mass reaches p, renormalise, sample.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longctx_jax.models import cpu_blas
from longctx_jax.models.decoder import Decoder, decode_layout_bytes, with_decode_layout
from longctx_jax.models.kv_cache import KVCache
from longctx_jax.typing import Array, PRNGKey

DECODE_LAYOUTS = ("auto", "stored", "transposed")
# "auto" holds decode copies of the projection weights up to this size (SmolLM2-135M: 425 MB).
DECODE_COPY_MAX_BYTES = 1 << 30


def sample_token(logits_BV: Array, key: PRNGKey, temperature: float, top_p: float) -> Array:
    """Next token ids `[B]`: argmax when temperature == 0, else temperature + top-p sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # Mass strictly before each sorted token; the token that crosses p is kept.
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept = jnp.sum(before_BV < top_p, axis=-1, keepdims=True)
        threshold_B1 = jnp.take_along_axis(sorted_BV, kept - 1, axis=-1)
        logits_BV = jnp.where(logits_BV >= threshold_B1, logits_BV, -jnp.inf)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def resolve_decode_layout(model: Decoder, rows: int, decode_layout: str = "auto") -> str:
    """How decode steps of `rows` rows per product read the projection weights: "stored" or
    "transposed" (`decoder.with_decode_layout`'s `[out, in]` copies).

    "auto" is "transposed" where those products go to the few-row handler
    (`cpu_blas.use_blas` for `rows` rows, fewer than `cpu_blas.MIN_ROWS`), which reads the
    copies faster (docs/kv_cache.md), and the copies take at most `DECODE_COPY_MAX_BYTES`;
    else "stored".

    Raises:
      ValueError: `decode_layout` is not one of `DECODE_LAYOUTS`.
    """
    if decode_layout not in DECODE_LAYOUTS:
        raise ValueError(f"unknown decode_layout {decode_layout!r}; valid: {DECODE_LAYOUTS}")
    if decode_layout != "auto":
        return decode_layout
    cfg = model.cfg
    few_rows = rows < cpu_blas.MIN_ROWS and cpu_blas.use_blas(cfg.matmul_impl, rows, cfg.dtype)
    small = decode_layout_bytes(model) <= DECODE_COPY_MAX_BYTES
    return "transposed" if few_rows and small else "stored"


def snapshot_split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """`nnx.split(model)` with the state's variables new (holding the same arrays): a later
    change to the model's weights does not reach what was split."""
    graphdef, state = nnx.split(model)
    return graphdef, jax.tree.map(lambda x: x, state)


def split_for_decode(model: Decoder, layout: str, stored: tuple[nnx.GraphDef, nnx.State]
                     ) -> tuple[nnx.GraphDef, nnx.State]:
    """The (graphdef, state) decode steps run: for "transposed" a snapshot of `model` with
    `[out, in]` copies (`decoder.with_decode_layout`), for "stored" `stored` itself (the split
    prefill reads: no second copy of anything)."""
    return snapshot_split(with_decode_layout(model)) if layout == "transposed" else stored


def check_max_new_tokens(max_new_tokens: int) -> int:
    """`max_new_tokens` as an int; raises ValueError unless it is an integer >= 0."""
    integer = isinstance(max_new_tokens, int | np.integer) and not isinstance(max_new_tokens, bool)
    if not integer or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    return int(max_new_tokens)


class Generator:
    """Jitted prefill and decode steps for one model, cache layout and sampling setting.

    Args:
      model: a `Decoder` (e.g. from `llama.load_gguf`). The generator keeps its weights as they
        are when it is built; build a new one after changing them.
      cache_size: KV-cache slots per layer (prompt + new tokens in plain mode).
      batch: sequences generated together (all prompts have the same length).
      streaming, sinks: StreamingLLM rolling cache (see kv_cache.py).
      temperature, top_p: sampling (temperature 0 = greedy).
      cache_dtype: dtype of cached keys and values (default: the model's activation dtype).
      decode_layout: how the decode step reads the projection weights. "stored": as the model
        holds them, `[in, out]`. "transposed": from `[out, in]` copies
        (`decoder.with_decode_layout`; the projection weights are then held twice, 425 MB
        more for SmolLM2-135M in float32), which the few-row handler reads faster
        (docs/kv_cache.md). "auto": `resolve_decode_layout` for `batch` rows. Prefill always
        reads the weights as stored.
    """

    def __init__(self, model: Decoder, *, cache_size: int, batch: int = 1, streaming: bool = False,
                 sinks: int = 4, temperature: float = 0.0, top_p: float = 1.0,
                 cache_dtype: str | None = None, decode_layout: str = "auto"):
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        cfg = model.cfg
        self.cfg = cfg
        self.graphdef, self.state = snapshot_split(model)
        self.decode_layout = resolve_decode_layout(model, batch, decode_layout)
        decode_graphdef, self.decode_state = split_for_decode(model, self.decode_layout,
                                                              (self.graphdef, self.state))
        self.make_cache = functools.partial(
            KVCache.create, num_layers=cfg.num_layers, batch=batch, capacity=cache_size,
            num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=cache_dtype or cfg.dtype,
            streaming=streaming, sinks=sinks,
        )
        graphdef = self.graphdef

        def sampled(logits_BTV, cache, key):
            return sample_token(logits_BTV[:, -1], key, temperature, top_p), logits_BTV[:, -1], cache

        def prefill(state, prompt_BT, cache, key):  # compiled once per prompt length
            return sampled(*nnx.merge(graphdef, state).prefill(prompt_BT, cache, last_only=True), key)

        def decode_step(state, token_B1, cache, key):  # compiled once
            return sampled(*nnx.merge(decode_graphdef, state).decode(token_B1, cache, last_only=True), key)

        self.prefill = jax.jit(prefill, donate_argnums=(2,))
        self.decode_step = jax.jit(decode_step, donate_argnums=(2,))

    def __call__(self, prompt_BT: Array | np.ndarray, max_new_tokens: int, *, seed: int = 0,
                 eos_id: int | None = None, on_token: Callable[[np.ndarray], None] | None = None
                 ) -> np.ndarray:
        """Prompt `[B, T]` -> prompt and generated ids `[B, T + new]` (stops early on EOS).

        Raises:
          ValueError: `max_new_tokens` is negative, or the prompt (or prompt + new tokens,
            outside streaming mode) does not fit the cache.
        """
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        prompt_BT = np.asarray(prompt_BT, np.int32)
        if prompt_BT.ndim != 2 or prompt_BT.shape[1] == 0:
            raise ValueError(f"prompt must be non-empty [batch, seq] token ids, got shape {prompt_BT.shape}")
        cache = self.make_cache()
        if prompt_BT.shape[0] != cache.batch:
            raise ValueError(f"prompt batch {prompt_BT.shape[0]} != generator batch {cache.batch}")
        T = prompt_BT.shape[1]
        if T > cache.capacity:
            raise ValueError(f"prompt of {T} tokens is longer than the cache ({cache.capacity} slots)")
        if not cache.streaming:
            cache.check_room(0, T + max(max_new_tokens - 1, 0))
        key = jax.random.key(seed)
        out = [prompt_BT]
        if max_new_tokens <= 0:
            return prompt_BT
        key, sub = jax.random.split(key)
        token_B, _, cache = self.prefill(self.state, jnp.asarray(prompt_BT), cache, sub)
        length = T
        for i in range(max_new_tokens):
            token = np.asarray(token_B)[:, None]
            out.append(token)
            if on_token is not None:
                on_token(token[:, 0])
            if (eos_id is not None and np.all(token == eos_id)) or i == max_new_tokens - 1:
                break
            cache.check_room(length, 1)
            key, sub = jax.random.split(key)
            token_B, _, cache = self.decode_step(self.decode_state, jnp.asarray(token), cache, sub)
            length += 1
        return np.concatenate(out, axis=1)


def generate(model: Decoder, prompt: Sequence[int] | np.ndarray, *, max_new_tokens: int,
             cache_size: int | None = None, streaming: bool = False, sinks: int = 4,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None
             ) -> np.ndarray:
    """One-shot generation (builds a `Generator`; reuse one to avoid recompiling).

    Args:
      prompt: token ids `[T]` or `[B, T]`.
      cache_size: default prompt length + max_new_tokens.

    Returns:
      int32 ids `[T + new]` (or `[B, T + new]` for a batched prompt).
    """
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    prompt_BT = np.asarray(prompt, np.int32)
    single = prompt_BT.ndim == 1
    prompt_BT = prompt_BT[None] if single else prompt_BT
    size = cache_size or prompt_BT.shape[1] + max_new_tokens
    gen = Generator(model, cache_size=size, batch=prompt_BT.shape[0], streaming=streaming, sinks=sinks,
                    temperature=temperature, top_p=top_p)
    out = gen(prompt_BT, max_new_tokens, seed=seed, eos_id=eos_id)
    return out[0] if single else out
