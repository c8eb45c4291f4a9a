"""XLA:CPU vs torch on SmolLM2's prefill GEMMs under several XLA flag settings.

  python -m experiments.bench_gemm --config configs/bench_gemm.py --config.workdir=runs/bench_gemm

Shapes (M x K x N, float32): 8K tokens through the MLP up / gate projection (576 -> 1536), the
down projection (1536 -> 576) and the fused q/k/v width (576 -> 960). Each setting of
`settings` (name -> XLA_FLAGS) runs in its own process. What is measured: longctx_jax/bench/gemm.py.
"""

import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in ("default", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; valid: ('default', 'smoke')")
    config = ml_collections.ConfigDict()
    config.workdir = "runs/bench_gemm"
    smoke = variant == "smoke"
    config.shapes = ((64, 32, 48),) if smoke else ((8192, 576, 1536), (8192, 1536, 576), (8192, 576, 960))
    config.repeats = 2 if smoke else 20
    config.threads = 2
    config.settings = ml_collections.ConfigDict({"default": ""} if smoke else {
        "default": "",
        "xnnpack": "--xla_cpu_use_xnnpack=true",
        "onednn_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
        "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
        "no_thunks": "--xla_cpu_use_thunk_runtime=false",
    })
    return config
