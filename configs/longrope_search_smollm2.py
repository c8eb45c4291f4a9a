"""LongRoPE evolutionary search on SmolLM2-135M (Ding et al. 2024): per-band factors and n_hat.

GPU (factor 2: 8K -> 16K, 8 held-out stdlib documents of 16K tokens, population 64):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py \
      --config.workdir=runs/longrope_smollm2

CPU preset at the real lengths (run on the 2-core CPU: one 16K document, population 6, four
generations with 2 parents kept, so ~19 forwards of 16K tokens at ~3.4 min each, ~65 min;
measured: 2,285 s + 1,827 s in two invocations, the first on a busy CPU, docs/reproductions.md):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu16k \
      --config.workdir=runs/longrope_smollm2_cpu16k

CPU miniature: all 30 layers, pretending the pretrained length is 256 and
searching factor 2 (target 512 tokens) on 2 documents, population 6, 2 generations (a search
on the first few layers alone is possible with `--config.num_layers=4`, but a truncated
pretrained model's perplexity is meaningless):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu \
      --config.workdir=runs/longrope_cpu

Writes `search_state.json` (population + generation + every score; rerunning resumes),
`rope_scaling.json` (the winner as an HF `longrope` dict for `load_gguf(rope_scaling=...)`
or experiments/extend.py's `--config.longrope`) and `summary.json`, which also holds the
perplexity of `compare_methods` (published methods as HF rope_scaling dicts, YaRN with its own
0.1 ln s + 1 temperature) on the same documents and the winner's ratio to each.
"""

import ml_collections


def get_config(preset: str = "gpu") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/longrope_smollm2"
    config.checkpoint = ""  # "" = the shipped SmolLM2-135M GGUF
    config.seed = 0
    config.factor = 2.0
    config.original_length = 8192  # SmolLM2's pretrained context
    config.max_factor = ml_collections.config_dict.placeholder(float)  # None: 1.25 * factor
    config.n_hat_choices = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
    config.num_docs = 8
    config.doc_offset = 2_000_000  # tokens into the stdlib stream: held out from other evaluations
    config.num_layers = ml_collections.config_dict.placeholder(int)  # None: all layers
    config.attention_impl = "flash"
    config.dtype = "bfloat16"
    config.population_size = 64
    config.num_parents = 16
    config.generations = 40
    config.mutation_prob = 0.3
    config.sigma = 0.1
    config.chunk = 1  # candidates vmapped together (memory: chunk x one 16K forward)
    config.compare_methods = ("linear", "ntk", "yarn")  # scored on the same documents
    if preset == "cpu":
        config.workdir = "runs/longrope_cpu"
        config.original_length = 256
        config.n_hat_choices = (0, 1, 2, 4, 8, 16, 32)
        config.num_docs = 2
        config.doc_offset = 200_000
        config.attention_impl = "dense"
        config.dtype = "float32"
        config.population_size = 6
        config.num_parents = 3
        config.generations = 2
        config.chunk = 3
    elif preset == "cpu16k":
        config.workdir = "runs/longrope_smollm2_cpu16k"
        config.num_docs = 1
        config.attention_impl = "blockwise"
        config.dtype = "float32"
        config.population_size = 6
        config.num_parents = 2
        config.generations = 4
        config.compare_methods = ("yarn",)
    elif preset != "gpu":
        raise ValueError(f"unknown preset {preset!r}; valid: gpu, cpu, cpu16k")
    return config
