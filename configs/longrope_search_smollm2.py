"""LongRoPE on SmolLM2-135M (Ding et al. 2024): search per-band factors on some documents, judge on others.

The claim, the controls and the verdict rule are fixed here, before any run
(`longctx_jax.search.longrope_claim`): without fine-tuning, the searched factors give a lower
perplexity at 2x the pretrained length (8K -> 16K) than PI, NTK, YaRN and YaRN with LongRoPE's
temperature, all at the same factor, on test documents the search never scored.

GPU (the paper's search size: population 64, 40 generations; 8 search documents, 8 other test
documents of 16K tokens):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py \
      --config.workdir=runs/longrope_smollm2

CPU preset at the real lengths (one search document, population 6, 4 generations with 2
parents kept: ~19 forwards of 16K tokens for the search, then 2 test documents x 6 scorings
(winner + 5 compared methods) = 12 more; at ~130-200 s per 16K forward on a 2-core CPU, about
1.5-2 h in all; resumable at every generation and after every test method):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu16k \
      --config.workdir=runs/longrope_smollm2_cpu16k

CPU miniature (all 30 layers, pretending the pretrained length is 256: factor 2 -> 512 tokens,
2 search + 2 test documents, population 6, 2 generations; a pipeline check, not the claim):

  python -m experiments.longrope_search --config configs/longrope_search_smollm2.py:cpu \
      --config.workdir=runs/longrope_cpu

Documents are whole stdlib files (`longctx_jax.eval.corpus.long_documents`) of at least
target + 1 tokens, in corpus order: search = `num_search_docs` after `search_doc_skip`, test =
`num_test_docs` after `test_doc_skip`. For SmolLM2 at 16K (54 qualifying documents with Python
3.11) the defaults skip the extension job's evaluation documents (0-2), the codec tables
(encodings/*), and `pydoc_data/topics.py` as code (the prose document's source): search =
documents 30-37 (http/cookiejar.py .. logging/__init__.py), test = 43-50 (subprocess.py ..
urllib/request.py). summary.json lists both sets by name.

Writes `search_state.json` and `test_blocks.json` (both resumable), `rope_scaling.json` (the
winner as an HF `longrope` dict for `load_gguf(rope_scaling=...)` or experiments/extend.py's
`--config.longrope`) and `summary.json` (search fitness, held-out perplexities with 95 %
intervals, the paired comparisons, the rule and the verdict).
"""

import ml_collections

CLAIM = ("LongRoPE's searched per-band RoPE factors give a lower perplexity at the extended length than "
         "PI, NTK, YaRN and YaRN with LongRoPE's attention factor at the same factor, without fine-tuning "
         "(Ding et al. 2024, arXiv:2402.13753)")


def get_config(preset: str = "gpu") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/longrope_smollm2"
    config.checkpoint = ""  # "" = the shipped SmolLM2-135M GGUF
    config.seed = 0
    config.factor = 2.0
    config.original_length = 8192  # SmolLM2's pretrained context
    config.max_factor = ml_collections.config_dict.placeholder(float)  # None: 1.25 * factor
    config.n_hat_choices = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
    config.search_doc_skip = 30
    config.num_search_docs = 8
    config.test_doc_skip = 43
    config.num_test_docs = 8
    config.num_layers = ml_collections.config_dict.placeholder(int)  # None: all layers
    config.attention_impl = "flash"
    config.dtype = "bfloat16"
    config.population_size = 64
    config.num_parents = 16
    config.generations = 40
    config.mutation_prob = 0.3
    config.sigma = 0.1
    config.chunk = 1  # candidates vmapped together (memory: chunk x one 16K forward)
    # Scored with the winner on the test documents (`longctx_jax.eval.methods` names).
    config.compare_methods = ("linear", "ntk", "yarn", "yarn_longrope_temperature", "longrope_phi3", "none")
    # The verdict rule, fixed before the run (`longctx_jax.search.longrope_claim.verdict`).
    config.verdict_rule = {
        "claim": CLAIM,
        "controls": ("linear", "ntk", "yarn", "yarn_longrope_temperature"),
        "confidence": 0.95,  # paired block-bootstrap interval of NLL(search) - NLL(control)
        "margin": 0.0,  # nats per token the winner must be below each control by
        "block": 256,  # targets per bootstrap block
        "resamples": 2000,
        "seed": 0,
    }
    if preset == "cpu":
        config.workdir = "runs/longrope_cpu"
        config.original_length = 256
        config.n_hat_choices = (0, 1, 2, 4, 8, 16, 32)
        config.search_doc_skip = 1
        config.num_search_docs = 2
        config.test_doc_skip = 3
        config.num_test_docs = 2
        config.attention_impl = "dense"
        config.dtype = "float32"
        config.population_size = 6
        config.num_parents = 3
        config.generations = 2
        config.chunk = 3
        config.verdict_rule.block = 64
    elif preset == "cpu16k":
        config.workdir = "runs/longrope_smollm2_cpu16k"
        config.num_search_docs = 1
        config.num_test_docs = 2
        config.attention_impl = "blockwise"
        config.dtype = "float32"
        config.population_size = 6
        config.num_parents = 2
        config.generations = 4
        config.compare_methods = ("linear", "ntk", "yarn", "yarn_longrope_temperature", "longrope_phi3")
    elif preset != "gpu":
        raise ValueError(f"unknown preset {preset!r}; valid: gpu, cpu, cpu16k")
    return config
