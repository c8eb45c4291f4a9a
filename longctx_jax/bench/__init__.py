"""Benchmarks: each module measures one thing and writes one JSON file into `config.workdir`.

  attention.py  time and compiled memory of the attention implementations (CPU; GPU TFLOP/s)
  forward.py    prefill and decode tokens/s of SmolLM2-135M, beside transformers when installed
  gpu.py        the Pallas flash kernels on a GPU: checked against dense, timed against cuDNN / XLA
  ring.py       per-device compiled memory and causal balance of ring attention
  train.py      tokens/s and memory of a config's jitted train step

Each has one `run(config) -> dict` that the launcher `experiments/bench_<name>.py` calls; the
dict it returns is the one it writes. The layer above everything else in the package: it may
import any other package, and nothing in the package imports it.
"""
