"""The export job: HF directory, training-run and GGUF sources -> a HF directory transformers runs."""

import json

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tokenizers import Tokenizer, models, pre_tokenizers

from longctx_jax import config_cli
from longctx_jax.models import llama
from longctx_jax.models.export import export_hf
from longctx_jax.train import export_run
from longctx_jax.train.step import init_train_state, make_train_step
from tests.models_hf_architectures_test import forward, hf_logits, save_tiny, tokens
from tests.train_init_from_test import saved_run
from tests.train_trainer_test import small_config

transformers = pytest.importorskip("transformers")

YARN2 = {"rope_type": "yarn", "factor": 2.0}


def export_config(**values):
    config = config_cli.load_config("configs/export.py")
    config.update(values)
    return config


def save_word_tokenizer(directory) -> None:
    """A word-level tokenizer over the tiny vocabulary, with a chat template and a generation config."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "model_max_length": 32, "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    (directory / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 7}))


def test_hf_source_with_new_rope_scaling(tmp_path):
    """HF dir -> job with YaRN x2 -> the written directory reads back as load_hf(source, yarn); the
    source's tokenizer (chat template included) and generation config come along."""
    save_tiny(tmp_path / "src", "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0)
    save_word_tokenizer(tmp_path / "src")
    out = export_run.run(export_config(source=str(tmp_path / "src"), out=str(tmp_path / "out"),
                                       architecture="qwen2", rope_scaling=YARN2))
    expected, _ = llama.load_hf(tmp_path / "src", rope_scaling=YARN2)
    written, written_tok = llama.load_hf(out)
    assert written.cfg == expected.cfg and written.cfg.window == 8
    assert written.cfg.rope_scaling_dict["original_max_position_embeddings"] == 32
    assert json.loads((tmp_path / "out" / "config.json").read_text())["max_position_embeddings"] == 64
    chex.assert_trees_all_equal(nnx.state(written, nnx.Param), nnx.state(expected, nnx.Param))
    tok_config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == 64 and "messages" in tok_config["chat_template"]
    assert (tmp_path / "out" / "generation_config.json").read_text() == (
        tmp_path / "src" / "generation_config.json").read_text()
    # (transformers 5's AutoTokenizer maps model_type qwen2 to its own BPE class whatever the
    # files say, so the written tokenizer is read back with the project's reader.)
    assert written_tok.encode("w3 w77 w5") == [3, 77, 5] and written_tok.eos_id == 2


def test_fine_tuned_two_steps_then_exported_runs_in_transformers(tmp_path):
    """HF dir -> load_hf (YaRN x2) -> 2 Adam steps at 64 tokens -> export_hf -> transformers: same logits."""
    save_tiny(tmp_path / "src", "llama")
    model, _ = llama.load_hf(tmp_path / "src", rope_scaling=YARN2)
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-2)
    step = make_train_step(graphdef, tx, use_segment_ids=False)
    ids = tokens(65, batch=2, seed=1)
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, 1:]),
             "positions": jnp.broadcast_to(jnp.arange(64), (2, 64)), "loss_mask": jnp.ones((2, 64))}
    before = np.asarray(forward(model, batch["inputs"]))
    state = init_train_state(params, tx)
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch)
        losses.append(float(metrics["train_loss"]))
    tuned = nnx.merge(graphdef, state.params)
    ours = np.asarray(forward(tuned, batch["inputs"]))
    assert np.abs(ours - before).max() > 1e-2 and np.isfinite(losses).all()
    export_hf(tuned, None, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    chex.assert_trees_all_close(ours, hf_logits(hf.float().eval(), ids[:, :-1]), atol=1e-4, rtol=0)


def test_training_run_source_runs_in_transformers(tmp_path):
    """A run's checkpoint + config.json -> job (new RoPE base) -> transformers: same logits."""
    config = small_config()
    saved_run(tmp_path, config)
    (tmp_path / "run" / "config.json").write_text(config.to_json_best_effort())
    out = export_run.run(export_config(source=str(tmp_path / "run" / "checkpoints" / "5"),
                                       out=str(tmp_path / "out"), rope_theta=40000.0,
                                       max_position_embeddings=config.data.seq_len))
    model = export_run.load_checkpoint_model(str(tmp_path / "run"), {"rope_theta": 40000.0})
    assert model.cfg.rope_theta == 40000.0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    ids = tokens(24) % model.cfg.vocab_size
    chex.assert_trees_all_close(np.asarray(forward(model, jnp.asarray(ids))), hf_logits(hf, ids),
                                atol=1e-4, rtol=0)


def test_refusals_before_loading(tmp_path):
    with pytest.raises(ValueError, match="config.out is empty"):
        export_run.run(export_config(source=str(tmp_path)))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gptj'; valid: \('llama'"):
        export_run.run(export_config(source=str(tmp_path), out=str(tmp_path / "o"), architecture="gptj"))
    with pytest.raises(ValueError, match="is not a .gguf file, a Hugging Face directory"):
        export_run.run(export_config(source=str(tmp_path / "nothing"), out=str(tmp_path / "o")))
    with pytest.raises(ValueError, match="max_position_embeddings must be >= 0"):
        export_run.run(export_config(source=str(tmp_path), out=str(tmp_path / "o"),
                                     max_position_embeddings=-1))
    saved_run(tmp_path, small_config())  # a checkpoint without the run's config.json
    with pytest.raises(ValueError, match="no run config .*config.json"):
        export_run.run(export_config(source=str(tmp_path / "run"), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # SmolLM2-135M in float32 through transformers: ~1 min on the shared CPU
def test_smollm2_gguf_export_loads_in_transformers(tmp_path):
    """Packaged SmolLM2 GGUF -> job (YaRN x2) -> transformers: same logits; the BPE tokenizes alike."""
    out = export_run.run(export_config(out=str(tmp_path), rope_scaling=YARN2))
    model, tok = llama.load_gguf(llama.smollm2_path(), rope_scaling=YARN2)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["max_position_embeddings"] == 16384 and config["rope_scaling"]["factor"] == 2.0
    text = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    return n if n < 2 else 0\n'
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids and len(ids) > 16
    assert hf_tok.decode(ids) == text
    chat = hf_tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert chat.startswith("<|im_start|>system\n") and "<|im_start|>user\nHi<|im_end|>" in chat
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    theirs = hf_logits(hf_model.float().eval(), np.asarray([ids]))
    chex.assert_trees_all_close(np.asarray(forward(model, jnp.asarray([ids]))), theirs, atol=1e-4, rtol=0)


def test_finetune_run_exports_with_lora_merged(tmp_path):
    """A LoRA fine-tuning run (adapters + frozen base) -> the export job -> transformers runs the merged
    model to the same logits; position overrides on such a source are refused."""
    from longctx_jax.train.finetune import finetune, load_finetuned
    from tests.train_finetune_test import tiny_config

    workdir = str(tmp_path / "ft")
    config = tiny_config(steps=1)
    config.optim.warmup_steps = 0
    finetune(config, workdir)
    out = export_run.run(export_config(source=workdir, out=str(tmp_path / "out"),
                                       max_position_embeddings=128))
    merged, _, _ = load_finetuned(workdir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids = tokens(24) % merged.cfg.vocab_size
    chex.assert_trees_all_close(hf_logits(hf, ids), np.asarray(forward(merged, jnp.asarray(ids))),
                                atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="fine-tuning run.*rope_scaling"):
        export_run.run(export_config(source=workdir, out=str(tmp_path / "out2"), rope_scaling=YARN2))
