"""One training step of the real SmolLM2 equals transformers + torch on the same 512-token batch.

The GGUF is exported to a Hugging Face directory (`export_hf`), which transformers loads; both
frameworks then compute the mean next-token loss of one batch of the prose evaluation document
and its gradient. Compared: the loss, and the gradient norm of the embedding, of every decoder
layer (all its weights together) and of the final norm, to 1e-4 relative. Norms are invariant to
the layouts the two keep their weights in (our `[D, N, H]` einsum weights vs torch's `[N*H, D]`
rows, the GGUF's rotary row permutation), so no weight mapping enters the comparison.

transformers' gradient is taken of the mean NLL of its float32 logits computed in float64, not of
its `labels=` loss. Measured on 2026-11-28 against a float64 reference (transformers in float64
with its three float32 islands -- RoPE angles, RMSNorm, softmax -- patched to float64, loss in
float64): transformers' `labels=` path, which runs torch's float32 cross-entropy, is off by 4.4e-4
in layer 28's gradient norm, in a float32 and a float64 model alike (loss 6.1e-6 and 6.4e-6). With the loss in
float64, transformers float32 is within 6.4e-6 of the reference and this project's float32 step
within 7.0e-5 (layer 28; its loss within 8e-8); this project in float64 (x64, every float32 cast
lifted, torch's float32 inv_freq) is within 4.5e-15 of the reference: the same function.
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
    tokens = torch.as_tensor(ids, dtype=torch.long)
    out = hf(input_ids=tokens, labels=tokens)
    # transformers' own `labels=` loss upcasts the logits to float32 only, and torch's float32
    # cross-entropy over a 49,152-token vocabulary is the least accurate step of its training step
    # (measured below); the reference loss is the same mean NLL of its logits, in float64.
    hf_loss = torch.nn.functional.cross_entropy(out.logits[0, :-1].double(), tokens[0, 1:])
    hf_loss.backward()
    theirs = _norms((name, p.grad.numpy()) for name, p in hf.named_parameters() if p.grad is not None)

    assert float(loss) == pytest.approx(float(hf_loss), rel=1e-4)
    assert float(loss) == pytest.approx(float(out.loss), rel=1e-4)  # transformers' own loss, too
    assert set(ours) == set(theirs) and len(ours) == model.cfg.num_layers + 2
    for group, norm in theirs.items():
        assert ours[group] == pytest.approx(norm, rel=1e-4), group
