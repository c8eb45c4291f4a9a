"""Fine-tuning job: LoRA trains only adapters, bit-exact resume, loading for extension, bad input."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import finetune_smollm2
from longctx_jax.models.lora import LoraSpec
from longctx_jax.train.finetune import (
    build_setup,
    check_finetune_config,
    finetune,
    is_run_directory,
    load_finetuned,
)


def tiny_config(steps: int = 3):
    config = finetune_smollm2.get_config("tiny")
    config.base.model.num_layers = 1
    config.data.seq_len = 64
    config.data.batch_size = 2
    config.data.min_doc_tokens = 64
    config.data.eval_sequences = 2
    config.lora.targets = ("attn", "w_down")
    config.lora.alpha = 8.0
    config.train.steps = steps
    config.train.eval_every = 3
    config.train.checkpoint_every = 1
    config.train.keep_checkpoints = 5
    return config


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ft") / "run")
    summary = finetune(tiny_config(), workdir)
    return workdir, summary


def test_lora_trains_only_the_adapters(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["steps"] == 3
    state, frozen = summary["state"], summary["frozen"]
    trained = {p: v for p, v in nnx.to_flat_state(state.params)}
    assert trained and all(p[-1] in ("lora_a", "lora_b") for p in trained)
    # 1 layer x (wq wk wv wo w_down) adapters, each A [in, 8] and B [8, out].
    assert len(trained) == 5 * 2
    assert summary["trainable_params"] < summary["num_params"] / 5
    assert all(np.any(np.asarray(v) != 0) for p, v in trained.items() if p[-1] == "lora_b")  # B moved off 0
    base, _ = build_setup(tiny_config())
    _, _, base_frozen = nnx.split(base.model, base.trainable, ...)
    chex.assert_trees_all_equal(jax.device_get(frozen), jax.device_get(base_frozen))  # bit-equal
    records = _metrics(workdir)
    assert sorted(records) == [1, 2, 3] and np.isfinite(records[3]["val_loss"])


def test_lora_step_on_a_data_x_sequence_mesh_equals_the_single_device_step(uninterrupted, tmp_path):
    config = tiny_config()
    config.mesh = {"data": 2, "sequence": 4, "tensor": 1}  # all 8 test devices: data x ring attention
    finetune(config, str(tmp_path / "run"), stop_at_step=1)
    got, want = _metrics(str(tmp_path / "run"))[1], _metrics(uninterrupted[0])[1]
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)


def test_longlora_trains_adapters_embeddings_and_norms():
    config = tiny_config()
    config.lora.train_embeddings_and_norms = True
    setup, _ = build_setup(config)
    _, params, _ = nnx.split(setup.model, setup.trainable, ...)
    names = {p[-1] if p[-1] != "scale" else p[-2] for p, _ in nnx.to_flat_state(params)}
    assert names == {"lora_a", "lora_b", "embed", "attn_norm", "mlp_norm", "final_norm"}


def test_resume_after_kill_is_bit_exact(uninterrupted, tmp_path):
    ref_dir, ref = uninterrupted
    workdir = str(tmp_path / "run")
    finetune(tiny_config(), workdir, stop_at_step=2)
    # A killed process: the checkpoint of step 2 stays, nothing else of it.
    resumed = finetune(tiny_config(), workdir)
    assert resumed["steps"] == 3
    chex.assert_trees_all_equal(jax.device_get(resumed["state"].params), jax.device_get(ref["state"].params))
    assert _metrics(workdir)[3]["train_loss"] == _metrics(ref_dir)[3]["train_loss"]


def test_load_finetuned_gives_the_trained_model_merged(uninterrupted):
    workdir, summary = uninterrupted
    model, tokenizer, key = load_finetuned(os.path.join(workdir, "checkpoints"))
    assert not hasattr(model.layers[0].attn, "wq_lora") and tokenizer.vocab_size == 259
    setup, _ = build_setup(tiny_config())
    nnx.update(setup.model, summary["state"].params)
    tokens = jnp.asarray(np.arange(48).reshape(2, 24) % 250)
    chex.assert_trees_all_close(model(tokens), setup.model(tokens), atol=1e-4, rtol=1e-4)
    again = load_finetuned(workdir)[2]
    assert key == again and key.startswith("finetuned-step3-")


def test_extension_report_evaluates_the_finetuned_checkpoint(uninterrupted, tmp_path):
    from configs import extend_smollm2
    from longctx_jax.eval.extension import run_extension

    workdir = uninterrupted[0]
    assert is_run_directory(workdir) and not is_run_directory(str(tmp_path))
    config = extend_smollm2.get_config()
    config.workdir, config.checkpoint = str(tmp_path / "extend"), workdir
    config.train_length, config.attention_impl = 64, "dense"
    config.methods, config.passkey_methods = ("none", "linear"), ()
    config.eval.ppl_lengths, config.eval.passkey_lengths, config.eval.batch_tokens = (64, 128), (), 256
    loaded = load_finetuned(workdir)
    run_extension(config, loaded=loaded)
    with open(tmp_path / "extend" / "results.json") as f:
        results = json.load(f)
    assert results["inputs"]["model_sha256"] == loaded[2]
    assert results["rope_scaling"]["none"] == {"rope_type": "linear", "factor": 2.0}  # as fine-tuned


def test_finetuned_runs_join_the_base_report_on_held_out_documents_only(uninterrupted, tmp_path):
    from configs import extend_smollm2
    from longctx_jax.eval.extension import check_held_out, run_extension
    from longctx_jax.train.finetune import training_data

    workdir = uninterrupted[0]
    config = extend_smollm2.get_config("finetuned")
    assert config.eval.ppl_split == "validation" and set(config.finetuned) == {"pi_ft", "yarn_ft"}
    config.workdir, config.checkpoint = str(tmp_path / "extend"), workdir
    config.finetuned = {"ft": workdir}
    config.train_length, config.attention_impl, config.methods = 64, "dense", ("none",)
    config.eval.ppl_lengths, config.eval.batch_tokens = (64, 128), 256
    trained_on = {"ft": training_data(workdir)}
    assert trained_on["ft"] == ("stdlib", 0.05)
    check_held_out(config, trained_on)
    config.eval.ppl_split = ""
    with pytest.raises(ValueError, match="'ft' was fine-tuned on the stdlib corpus's train split"):
        check_held_out(config, trained_on)
    config.eval.ppl_split, config.eval.ppl_val_fraction = "validation", 0.1
    with pytest.raises(ValueError, match="ppl_val_fraction=0.05"):
        check_held_out(config, trained_on)
    config.eval.ppl_val_fraction = 0.05
    config.finetuned = {"linear": workdir}
    with pytest.raises(ValueError, match="labels \\['linear'\\] are extension method names"):
        run_extension(config, loaded=load_finetuned(workdir))
    config.finetuned = {"ft": workdir}
    loaded = load_finetuned(workdir)
    run_extension(config, loaded=loaded, finetuned={"ft": loaded})
    with open(tmp_path / "extend" / "results.json") as f:
        results = json.load(f)
    rows = {(r["method"], r["length"], r["doc"]): r["nll"] for r in results["perplexity"]}
    docs = {d for _, _, d in rows}
    assert len(docs) == 2 and len(rows) == 2 * 2 * 2
    for (method, length, doc), nll in rows.items():  # the same model under two labels: the same numbers
        assert method == "none" or nll == pytest.approx(rows[("none", length, doc)], rel=1e-6)
    assert results["rope_scaling"]["ft"] == {"rope_type": "linear", "factor": 2.0}
    assert "ft@128" in results["perplexity_intervals"]


def test_checkpoint_of_another_architecture_is_refused_before_a_step(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    before = _metrics(workdir)
    config = tiny_config(steps=5)
    config.base.model.d_model = 48
    with pytest.raises(ValueError, match="no checkpoint .* restores"):
        finetune(config, workdir)
    assert _metrics(workdir) == before


@pytest.mark.parametrize("change, match", [
    (lambda c: c.position.update(rope_scaling={"rope_type": "bogus", "factor": 2.0}), "bogus"),
    (lambda c: c.position.update(rope_scaling=None, longrope={"short_factor": [1.0] * 3,
                                                              "long_factor": [2.0] * 3}), "factor"),
    (lambda c: c.lora.update(targets=("wq", "q_proj")), r"\['q_proj'\].*valid: \('wq'"),
    (lambda c: c.update(s2_group_size=24), "seq_len 64 is not a multiple of s2_group_size 24"),
    (lambda c: c.update(mesh={"data": 1, "sequence": 3}), "not divisible by the mesh's sequence axis"),
    (lambda c: c.model.update(dtype="int8"), "int8"),
    (lambda c: c.model.update(remat_policy="save_everything"), "save_everything"),
    (lambda c: c.base.update(kind="pt"), "'pt'"),
])
def test_bad_input_raises_before_any_work(change, match, tmp_path):
    config = tiny_config()
    change(config)
    with pytest.raises(ValueError, match=match):
        finetune(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_s2_attention_trains_and_validates_with_full_attention(tmp_path):
    config = tiny_config(steps=1)
    config.optim.warmup_steps = 0
    config.s2_group_size = 16
    config.lora.train_embeddings_and_norms = True
    setup, _ = build_setup(config)
    assert setup.model.cfg.attention_pattern == "s2" and setup.eval_model.cfg.attention_pattern == "full"
    summary = finetune(config, str(tmp_path / "run"))
    assert np.isfinite(summary["final_val_loss"])


@pytest.mark.parametrize("variant", finetune_smollm2.VARIANTS)
def test_every_variant_validates_and_takes_command_line_overrides(variant):
    from absl import flags
    from ml_collections import config_flags

    from longctx_jax import config_cli

    argv = ["prog", "--config", f"configs/finetune_smollm2.py:{variant}",
            "--config.position.rope_scaling={'rope_type': 'yarn', 'factor': 4.0}", "--config.lora.rank=4"]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", "configs/finetune_smollm2.py", flag_values=fv,
                                             sys_argv=argv)
    config_cli.parse_flags(argv, fv)
    config = holder.value
    assert config.position.rope_scaling == {"rope_type": "yarn", "factor": 4.0} and config.lora.rank == 4
    check_finetune_config(finetune_smollm2.get_config(variant))


def test_lora_spec_names_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(0, 1.0, ("wq",))


@pytest.mark.slow
def test_smollm2_two_steps_at_256_tokens(tmp_path):
    config = finetune_smollm2.get_config("default")
    config.data.seq_len = 256
    config.data.min_doc_tokens = 256
    config.data.eval_sequences = 1
    config.train.steps = 2
    config.optim.warmup_steps = 1
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    summary = finetune(config, str(tmp_path / "run"))
    assert summary["steps"] == 2 and summary["num_params"] > 134_000_000
    assert 0 < summary["final_val_loss"] < 6.0  # a pretrained model: far below ln(49152) = 10.8
