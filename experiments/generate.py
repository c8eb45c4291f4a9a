"""Loads a pretrained GGUF model, prints its KV-cache estimate and generates (see configs/smollm2.py).

  python -m experiments.generate --config configs/smollm2.py [--config.prompt=...]
"""

import sys
import time

import numpy as np

from longctx_jax import config_cli
from longctx_jax.data.tokenizers import prompt_prefix
from longctx_jax.models import llama, memory
from longctx_jax.models.generate import Generator, check_max_new_tokens

_CONFIG = config_cli.define_config("configs/smollm2.py")


def main(cfg) -> None:
    check_max_new_tokens(cfg.max_new_tokens)  # before loading anything
    try:
        path = cfg.checkpoint or llama.smollm2_path()
    except ValueError as e:
        sys.exit(f"error: {e}")
    start = time.perf_counter()
    model, tok = llama.load_gguf(path, rope_scaling=cfg.rope_scaling, dtype=cfg.dtype)
    print(f"loaded {path} in {time.perf_counter() - start:.1f}s: {model.cfg.num_layers} layers, "
          f"d_model {model.cfg.d_model}, {model.cfg.num_heads} heads / {model.cfg.num_kv_heads} KV heads")
    text = cfg.prompt
    if cfg.chat:
        text = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    prompt = prompt_prefix(tok) + tok.encode(text)
    size = cfg.cache_size or (256 if cfg.streaming else len(prompt) + cfg.max_new_tokens)
    shape = memory.CacheShape(model.cfg.num_layers, model.cfg.num_kv_heads, model.cfg.head_dim)
    cache_bytes = memory.kv_cache_bytes(shape, length=size, dtype=cfg.dtype)
    print(f"KV cache: {size} slots x {shape.num_layers} layers x {shape.num_kv_heads} KV heads x "
          f"{shape.head_dim} ({cfg.dtype}) = {memory.format_bytes(cache_bytes)}"
          + (f" (StreamingLLM: {cfg.sinks} sinks + {size - cfg.sinks} window)" if cfg.streaming else ""))
    gen = Generator(model, cache_size=size, streaming=cfg.streaming, sinks=cfg.sinks,
                    temperature=cfg.temperature, top_p=cfg.top_p)
    print(f"prompt ({len(prompt)} tokens): {text}", end="", flush=True)
    generated = []
    printed = ""

    def on_token(token_B: np.ndarray) -> None:
        nonlocal printed
        generated.append(int(token_B[0]))
        text_so_far = tok.decode(generated)
        if not text_so_far.endswith("\ufffd"):  # wait for multi-byte characters to complete
            print(text_so_far[len(printed):], end="", flush=True)
            printed = text_so_far

    start = time.perf_counter()
    gen(np.asarray([prompt]), cfg.max_new_tokens, seed=cfg.seed, eos_id=tok.eos_id, on_token=on_token)
    elapsed = time.perf_counter() - start
    print(f"\n\n{len(generated)} tokens in {elapsed:.1f}s ({len(generated) / elapsed:.1f} tokens/s, "
          "compilation included)")


if __name__ == "__main__":
    config_cli.run(main, _CONFIG)
