"""XLA:CPU vs torch on SmolLM2's prefill GEMMs under several XLA flag settings.

  python -m experiments.bench_gemm --config configs/bench_gemm.py --config.workdir=runs/bench_gemm

Shapes (M x K x N, float32): 8K tokens through each of the decoder's projections: the MLP up /
gate (576 -> 1536), the down projection (1536 -> 576), q and the output projection (576 -> 576),
and k / v (576 -> 192). Each setting of
`settings` (name -> XLA_FLAGS) runs in its own process. What is measured: longctx_jax/bench/gemm.py.
"""

import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in ("default", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; valid: ('default', 'smoke')")
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_gemm"
    smoke = variant == "smoke"
    config.shapes = ((64, 32, 48),) if smoke else ((8192, 576, 1536), (8192, 1536, 576), (8192, 576, 576),
                                                       (8192, 576, 192))
    config.repeats = 2 if smoke else 20
    config.threads = 2
    config.settle_s = 0.0 if smoke else 0.25  # pause before each timed call (idle worker threads spin)
    config.settings = ml_collections.ConfigDict({"default": ""} if smoke else {
        "default": "",
        "xnnpack": "--xla_cpu_use_xnnpack=true",
        "onednn_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
        "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
        "no_thunks": "--xla_cpu_use_thunk_runtime=false",
    })
    return config
