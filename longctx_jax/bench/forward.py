"""Prefill and decode tokens/s of the shipped SmolLM2-135M, written to `<workdir>/bench_forward.json`.

  python -m experiments.bench_forward --config configs/bench_forward.py --config.workdir=runs/bench_forward

Prefill: `Decoder.prefill` (what `Generator` runs) of a whole prompt of T tokens into an empty
cache of T slots (last-token logits only), compiled once per length, then timed `repeats` times (median).
Decode: one-token steps of the jitted `Generator.decode_step` with `decode_context` tokens
already in the cache (the cache is filled with random keys/values: the cost of a step does
not depend on their content), timed over `decode_steps` steps, each run followed by its read
floor (torch summing the bytes a step reads; `bench_decode`). Wall and process CPU seconds
are both recorded; the latter is steadier on a shared host.

The peer, measured in the same run when `transformers` and `torch` are installed (the `bench`
extra, `pip install -e ".[bench]"`): Hugging Face `LlamaForCausalLM` (PyTorch CPU, `sdpa`
attention, float32) holding the same dequantized GGUF weights, prefilling with
`use_cache=True, logits_to_keep=1` and decoding one token at a time from an 8K
`DynamicCache`. Its last-token logits on the same prompt are compared with ours (recorded as
`hf_max_abs_logit_diff`), so both sides provably compute the same model.
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from longctx_jax.attention import dispatch
from longctx_jax.bench import bandwidth, machine
from longctx_jax.models import cpu_blas, gguf_file, llama, memory
from longctx_jax.models.decoder import Decoder
from longctx_jax.models.generate import Generator
from longctx_jax.models.kv_cache import KVCache
from longctx_jax.provenance import provenance

FLOOR_READS = 5  # reads per read floor (its median): one read's rate moved 34 -> 60 GB/s between runs


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def prompt_tokens(length: int, vocab_size: int) -> jax.Array:
    """The benchmark prompt `[1, length]`: seeded random ids (speed does not depend on content)."""
    return jax.random.randint(jax.random.key(0), (1, length), 0, vocab_size)


def bench_prefill(model, length: int, repeats: int) -> dict:
    graphdef, state = nnx.split(model)
    cfg = model.cfg

    @jax.jit
    def prefill(state, tokens_BT):
        cache = KVCache.create(num_layers=cfg.num_layers, batch=1, capacity=length,
                               num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
        logits, cache = nnx.merge(graphdef, state).prefill(tokens_BT, cache, last_only=True)
        return logits, cache.k[-1]

    tokens = prompt_tokens(length, cfg.vocab_size)
    start = time.perf_counter()
    compiled = prefill.lower(state, tokens).compile()
    compile_s = time.perf_counter() - start
    runs = [_timed(lambda: jax.block_until_ready(compiled(state, tokens))) for _ in range(repeats)]
    return dict(_prefill_row(length, runs), compile_s=compile_s)


def _prefill_row(length: int, runs: list[tuple[float, float]]) -> dict:
    """Median wall / CPU seconds of timed prefill runs and the tokens/s they give."""
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return dict(length=length, wall_s=wall, cpu_s=cpu, tokens_per_s=length / wall,
                runs=[dict(wall_s=w, cpu_s=c) for w, c in runs])


def _decode_row(context: int, steps: int, runs: list[tuple[float, float]]) -> dict:
    """Median wall / CPU seconds of `steps` decode steps over the timed runs, and every run's."""
    wall = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    return dict(context=context, steps=steps, wall_s=wall, cpu_s=cpu, tokens_per_s=steps / wall,
                ms_per_token=1000 * wall / steps, runs=[dict(wall_s=w, cpu_s=c) for w, c in runs])


def bench_decode(model, context: int, steps: int, repeats: int = 1, decode_layout: str = "auto",
                 floor_bytes: int = 0) -> dict:
    """`repeats` timed runs of `steps` steps each, continuing one cache (run i starts with
    context + i * steps tokens cached); `decode_layout` as in `Generator` (the row records the
    layout it resolved to).

    With `floor_bytes` (what one step reads: `bandwidth.decode_bytes`) and torch installed,
    each run is followed by the read floor, the median of `FLOOR_READS` times torch sums that
    many bytes (`bandwidth.torch_read_timer`), so every run has its own floor from the same
    minutes (this machine's read rate moves within a day). Each timed run and floor starts
    `bandwidth.PAUSE_S` after the last work, when threads left spinning have gone idle.
    """
    gen = Generator(model, cache_size=context + steps * repeats + 1, decode_layout=decode_layout)
    empty = gen.make_cache()
    keys = jax.random.split(jax.random.key(1), 2 * len(empty.k))
    fill = [jax.random.normal(k, empty.k[0].shape, empty.k[0].dtype) for k in keys]
    cache = KVCache(k=tuple(fill[:len(empty.k)]), v=tuple(fill[len(empty.k):]),
                    length=jnp.asarray(context, jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    key = jax.random.key(2)
    out, _, cache = gen.decode_step(gen.decode_state, token, cache, key)  # compile
    jax.block_until_ready(out)
    floor = bandwidth.torch_read_timer(floor_bytes) if floor_bytes > 0 else None

    def run():
        nonlocal cache, out
        for _ in range(steps):
            out, _, cache = gen.decode_step(gen.decode_state, out[:, None], cache, key)
        jax.block_until_ready(out)

    runs, floor_s, samples = [], [], []
    for _ in range(repeats):
        time.sleep(bandwidth.PAUSE_S)
        runs.append(_timed(run))
        if floor is not None:
            time.sleep(bandwidth.PAUSE_S)
            samples.append([floor() for _ in range(FLOOR_READS)])
            floor_s.append(statistics.median(samples[-1]))
    row = dict(_decode_row(context, steps, runs), decode_layout=gen.decode_layout)
    if floor is not None:
        step_s = [wall / steps for wall, _ in runs]
        row["read_floor"] = dict(bytes=floor_bytes, runs_s=floor_s, reads_s=samples,
                                 gbs=floor_bytes / statistics.median(floor_s) / 1e9,
                                 step_over_floor=[s / f for s, f in zip(step_s, floor_s, strict=True)])
    return row


def hf_peer(path: str, cfg):
    """transformers' `LlamaForCausalLM` (sdpa, float32) with the GGUF's weights; None without it."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    metadata, tensors = gguf_file.read(path)
    permuted = llama.GGUF_ARCHITECTURES[metadata["general.architecture"]]
    weights = llama.gguf_weights(tensors, cfg, permuted=permuted)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, max_position_embeddings=1 << 17,
        attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(hf_cfg).to(torch.float32).eval()
    state = {name: torch.tensor(w, dtype=torch.float32) for name, w in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"weights do not fit transformers' Llama: missing {missing}, "
                         f"unexpected {unexpected}")
    if cfg.tie_embeddings:
        model.tie_weights()
    torch.set_num_threads(os.cpu_count() or 1)
    return model


def hf_last_logits(hf_model, tokens) -> np.ndarray:
    import torch

    with torch.inference_mode():
        ids = torch.from_numpy(np.asarray(tokens, np.int64))
        return hf_model(ids, use_cache=True, logits_to_keep=1).logits[0, -1].numpy()


def bench_hf_prefill(hf_model, length: int, vocab_size: int, repeats: int) -> dict:
    tokens = prompt_tokens(length, vocab_size)
    return _prefill_row(length, [_timed(lambda: hf_last_logits(hf_model, tokens)) for _ in range(repeats)])


def bench_hf_decode(hf_model, context: int, steps: int, vocab_size: int, repeats: int = 1) -> dict:
    import torch

    tokens = torch.from_numpy(np.asarray(prompt_tokens(context, vocab_size), np.int64))
    with torch.inference_mode():
        out = hf_model(tokens, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        next_id = out.logits[:, -1:].argmax(-1)

        def run():
            nonlocal cache, next_id
            for _ in range(steps):
                out = hf_model(next_id, past_key_values=cache, use_cache=True)
                cache, next_id = out.past_key_values, out.logits[:, -1:].argmax(-1)

        return _decode_row(context, steps, [_timed(run) for _ in range(repeats)])


def run(cfg: ml_collections.ConfigDict) -> dict:
    """Times prefill at every `cfg.prefill_lengths` and decode at `cfg.decode_context`.

    Args:
      cfg: a `configs/bench_forward.py` config.

    Returns:
      The result written (after every length) to `<cfg.workdir>/bench_forward.json`.
    """
    path = cfg.checkpoint or llama.smollm2_path()
    # "auto" attention: what a decode step resolves to; `matmul_impl` for every projection.
    model, _ = llama.load_gguf(path, dtype=cfg.dtype, matmul_impl=cfg.get("matmul_impl", "auto"))
    # The same weights under the prefill attention implementation.
    abstract = nnx.eval_shape(lambda: Decoder(model.cfg.replace(attention_impl=cfg.attention_impl),
                                              rngs=nnx.Rngs(0)))
    prefill_model = nnx.merge(nnx.graphdef(abstract), nnx.state(model))
    shape = memory.CacheShape(model.cfg.num_layers, model.cfg.num_kv_heads, model.cfg.head_dim)
    result = dict(model=os.path.basename(path), dtype=cfg.dtype, prefill_attention_impl=cfg.attention_impl,
                  decode_attention_impl=model.cfg.attention_impl, matmul_impl=model.cfg.matmul_impl,
                  prefill_matmul_blas=cpu_blas.use_blas(model.cfg.matmul_impl, min(cfg.prefill_lengths),
                                                        jnp.dtype(cfg.dtype)),
                  decode_matmul=("cpu_blas few-row" if cpu_blas.use_blas(model.cfg.matmul_impl, 1,
                                                                         jnp.dtype(cfg.dtype)) else "xla"),
                  decode_attention_resolved=dispatch.choose(
                      1, int(cfg.decode_context) + int(cfg.decode_steps) + 1,
                      {"q_positions": np.zeros((1, 1), np.int32), "k_positions": np.zeros((1, 1), np.int32)}),
                  backend=jax.default_backend(), devices=str(jax.devices()), machine=machine.machine(),
                  **provenance(), config=cfg.to_dict(),
                  prefill=[], decode=None)
    os.makedirs(cfg.workdir, exist_ok=True)
    out_path = os.path.join(cfg.workdir, "bench_forward.json")
    hf_model = hf_peer(path, model.cfg) if cfg.compare_transformers else None
    if hf_model is not None:
        import torch
        import transformers

        check = prompt_tokens(min(cfg.prefill_lengths), model.cfg.vocab_size)
        ours = np.asarray(model(check)[0, -1])
        result["hf"] = dict(transformers=transformers.__version__, torch=torch.__version__,
                            attn_implementation="sdpa", threads=torch.get_num_threads(), prefill=[],
                            hf_max_abs_logit_diff=float(np.abs(ours - hf_last_logits(hf_model, check)).max()),
                            parity_length=int(check.shape[1]))
        print(f"transformers {transformers.__version__} / torch {torch.__version__}: max |logit diff| "
              f"{result['hf']['hf_max_abs_logit_diff']:.2e} at {check.shape[1]} tokens", flush=True)

    def save():
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)

    for length in cfg.prefill_lengths:
        row = bench_prefill(prefill_model, int(length), cfg.repeats)
        row["kv_cache_bytes"] = memory.kv_cache_bytes(shape, length=int(length), dtype=cfg.dtype)
        result["prefill"].append(row)
        line = f"prefill {length:6d}: ours {row['tokens_per_s']:8.1f} tokens/s ({row['wall_s']:.2f}s wall)"
        if hf_model is not None:
            peer = bench_hf_prefill(hf_model, int(length), model.cfg.vocab_size, cfg.repeats)
            result["hf"]["prefill"].append(peer)
            line += f", transformers {peer['tokens_per_s']:8.1f} tokens/s ({peer['wall_s']:.2f}s wall)"
        print(line, flush=True)
        save()
    if cfg.decode_steps:
        floor_bytes = bandwidth.decode_bytes(model.cfg, int(cfg.decode_context), cfg.dtype)["total"]
        result["decode"] = bench_decode(model, int(cfg.decode_context), int(cfg.decode_steps), cfg.repeats,
                                        cfg.get("decode_layout", "auto"), floor_bytes)
        d = result["decode"]
        line = (f"decode at {d['context']}: ours {d['tokens_per_s']:.2f} tokens/s "
                f"({d['ms_per_token']:.1f} ms/token)")
        if hf_model is not None:
            p = bench_hf_decode(hf_model, int(cfg.decode_context), int(cfg.decode_steps),
                                model.cfg.vocab_size, cfg.repeats)
            result["hf"]["decode"] = p
            line += f", transformers {p['tokens_per_s']:.2f} tokens/s ({p['ms_per_token']:.1f} ms/token)"
        print(line)
    save()
    print(f"wrote {out_path}")
    return result
