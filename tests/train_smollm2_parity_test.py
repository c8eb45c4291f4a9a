"""One training step of the real SmolLM2 equals transformers + torch on the same 512-token batch.

The GGUF is exported to a Hugging Face directory (`export_hf`), which transformers loads; both
frameworks then compute the mean next-token loss of one batch of the prose evaluation document
and its gradient. Compared: the loss, and the gradient norm of the embedding, of every decoder
layer (all its weights together) and of the final norm, to 1e-4 relative. Norms are invariant to
the layouts the two keep their weights in (our `[D, N, H]` einsum weights vs torch's `[N*H, D]`
rows, the GGUF's rotary row permutation), so no weight mapping enters the comparison.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.eval.corpus import documents
from longctx_jax.losses import masked_mean
from longctx_jax.models import llama
from longctx_jax.models.export import export_hf
from longctx_jax.train.step import batch_nll

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LENGTH = 512


def _group(name: str) -> str:
    """"layer.<i>", "embed" or "final_norm" for a parameter path of either framework."""
    layer = re.search(r"layers\W+(\d+)", name)
    if layer:
        return f"layer.{int(layer.group(1))}"
    if "embed" in name:
        return "embed"
    if "norm" in name:
        return "final_norm"
    raise AssertionError(f"unexpected parameter {name}")


def _norms(named_grads) -> dict[str, float]:
    sums: dict[str, float] = {}
    for name, g in named_grads:
        sums[_group(name)] = sums.get(_group(name), 0.0) + float(np.sum(np.square(np.asarray(g, np.float64))))
    return {k: float(np.sqrt(v)) for k, v in sums.items()}


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-11-28: the loss agrees to 6.2e-6 relative, but per-layer gradient norms differ by up to "
    "5.1e-4 (layer 28; then layer 29 1.4e-4, layer 27 1.1e-4), while transformers in float32 is within "
    "6.4e-6 of transformers in float64 (loss 2.5e-7). Ruled out: RoPE (our model with transformers' float32 "
    "inv_freq, float32 angles and cos/sin moves by at most 2.1e-6 and keeps the 5.1e-4 gap; transformers in "
    "float64 with float64 angles moves by at most 1.3e-6), the weights (all 272 exported safetensors tensors "
    "hold exactly the values of the GGUF-loaded parameters), SiLU (x / (1 + exp(-x)) in place of "
    "jax.nn.silu moves ours by at most 4e-6), dense vs default attention, matmul precision, XLA fast "
    "math. Cause not found. Strict: this test errors when the gap closes, so the marker must go then."))
def test_smollm2_training_step_matches_transformers(tmp_path):
    model, tokenizer = llama.load_gguf(llama.smollm2_path())
    export_hf(model, tokenizer, tmp_path, max_position_embeddings=8192)  # SmolLM2's training length
    ids = documents(tokenizer, LENGTH + 1, 1)[:1]  # [1, 513] of the prose document
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
             "positions": jnp.arange(LENGTH)[None], "segment_ids": jnp.zeros((1, LENGTH), jnp.int32),
             "loss_mask": jnp.ones((1, LENGTH), jnp.float32)}
    graphdef, params = nnx.split(model)

    def loss_fn(p):
        return masked_mean(batch_nll(graphdef, p, batch, use_segment_ids=False), batch["loss_mask"])

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    ours = _norms((jax.tree_util.keystr(path), g) for path, g in jax.tree_util.tree_leaves_with_path(grads))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32,
                                                           attn_implementation="eager")
    hf.train()  # no dropout in this architecture; train mode only enables gradients' bookkeeping
    out = hf(input_ids=torch.as_tensor(ids, dtype=torch.long), labels=torch.as_tensor(ids, dtype=torch.long))
    out.loss.backward()
    theirs = _norms((name, p.grad.numpy()) for name, p in hf.named_parameters() if p.grad is not None)

    assert float(loss) == pytest.approx(float(out.loss), rel=1e-4)
    assert set(ours) == set(theirs) and len(ours) == model.cfg.num_layers + 2
    for group, norm in theirs.items():
        assert ours[group] == pytest.approx(norm, rel=1e-4), group
