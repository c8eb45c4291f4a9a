"""Results keyed by every input: run, method and row inputs; corrupt files and bad paths."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from longctx_jax.data.tokenizers import ByteTokenizer
from longctx_jax.eval.corpus import documents
from longctx_jax.eval.methods import config_changes, scaling_factor
from longctx_jax.eval.passkey import passkey_sweep
from longctx_jax.eval.perplexity import perplexity_sweep
from longctx_jax.eval.results import (
    PROTOCOL_VERSION,
    InputsChanged,
    ResultStore,
    file_digest,
    fingerprint,
)
from longctx_jax.eval.suite import (
    SuiteSpec,
    evaluate_checkpoint,
    evaluate_method,
    parameters_digest,
    run_inputs,
)
from longctx_jax.models.config import ModelConfig
from longctx_jax.models.decoder import Decoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = ByteTokenizer()
INPUTS = {"model_sha256": "ab" * 32, "train_length": 64, "target_length": 256, "factor": 4.0}


def scaled_model(factor: float):
    """A causal stand-in whose NLL depends on the factor: logit `factor` on token 0."""
    return lambda tokens_BT, positions_BT: jax.nn.one_hot(jnp.zeros_like(tokens_BT), TOK.vocab_size) * factor


def expected_nll(factor: float, docs_NL1: np.ndarray) -> float:
    """NLL of the stand-in, written out: lse = log(e^f + V - 1); target 0 scores f, others 0."""
    lse = np.log(np.exp(factor) + TOK.vocab_size - 1)
    return float(np.mean(lse - factor * (docs_NL1[:, 1:] == 0)))


@pytest.fixture(scope="module")
def base():
    """A cheap causal stand-in model (see `scaled_model`)."""
    return scaled_model(1.5)


def must_not_run(tokens_BT, positions_BT):
    raise AssertionError("a finished cell was recomputed")


def test_fingerprint_is_order_free_and_sees_array_bytes():
    assert fingerprint({"a": 1, "b": (2, 3)}) == fingerprint({"b": [2, 3], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    x = np.arange(6, dtype=np.int32)
    assert fingerprint(x) == fingerprint(x.copy())
    assert fingerprint(x) != fingerprint(x.reshape(2, 3)) != fingerprint(x.astype(np.int64))


def test_changed_run_inputs_refuse_then_recompute(tmp_path, base):
    path = tmp_path / "results.json"
    store = ResultStore(path, inputs=INPUTS)
    perplexity_sweep(base, TOK, store, method="none", lengths=[64], progress=False)
    assert ResultStore(path, inputs=INPUTS).has("perplexity", method="none", length=64)
    changed = {**INPUTS, "target_length": 512, "factor": 8.0}
    with pytest.raises(InputsChanged, match=r"target_length: 256 -> 512.*another workdir"):
        ResultStore(path, inputs=changed)
    assert json.loads(path.read_text())["inputs"]["target_length"] == 256  # refused: untouched
    fresh = ResultStore(path, inputs=changed, on_change="recompute")
    assert fresh.records("perplexity") == []
    saved = json.loads(path.read_text())
    assert saved["inputs"] == {**changed, "protocol_version": PROTOCOL_VERSION}
    assert "perplexity" not in saved


def test_rows_without_recorded_inputs_are_not_adopted(tmp_path, base):
    path = tmp_path / "results.json"
    perplexity_sweep(base, TOK, ResultStore(path), method="none", lengths=[64], progress=False)
    with pytest.raises(InputsChanged, match="records no inputs"):
        ResultStore(path, inputs=INPUTS)


def test_model_file_identity_is_by_content(tmp_path):
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"weights-v1")
    first = run_inputs(weights, TOK, train_length=64, target_length=256, factor=4.0, dtype="float32")
    ResultStore(tmp_path / "r.json", inputs=first).add("perplexity", {"method": "none", "length": 64})
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(b"weights-v1")
    same = run_inputs(copy, TOK, train_length=64, target_length=256, factor=4.0, dtype="float32")
    assert ResultStore(tmp_path / "r.json", inputs=same).has("perplexity", length=64)
    weights.write_bytes(b"weights-v2")
    other = run_inputs(weights, TOK, train_length=64, target_length=256, factor=4.0, dtype="float32")
    with pytest.raises(InputsChanged, match="model_sha256"):
        ResultStore(tmp_path / "r.json", inputs=other)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a").write_bytes(b"1")
    digest = file_digest(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "a").write_bytes(b"2")
    assert file_digest(tmp_path / "ckpt") != digest
    with pytest.raises(ValueError, match="no such file"):
        file_digest(tmp_path / "missing.gguf")


def test_changed_method_inputs_recompute_only_that_method(tmp_path, base):
    """A rerun with another factor recomputes the scaled method and keeps the unscaled one."""
    spec = SuiteSpec(ppl_lengths=(128,))
    docs = documents(TOK, 129, 1)

    def run(factor, store, model_none):
        for method in ("none", "yarn"):
            changes = config_changes(method, factor=factor, train_length=64, rotary_dim=8)
            model = model_none if method == "none" else scaled_model(factor)
            evaluate_method(model, TOK, store, method=method, spec=spec, inputs=changes, progress=False)
        rows = store.records("perplexity")
        return {m: [r["nll"] for r in rows if r["method"] == m] for m in ("none", "yarn")}

    first = run(2.0, ResultStore(tmp_path / "results.json", inputs=INPUTS), base)
    chex.assert_trees_all_close(first["yarn"][0], expected_nll(2.0, docs), rtol=1e-5)
    second = run(4.0, ResultStore(tmp_path / "results.json", inputs=INPUTS), must_not_run)
    assert second["none"] == first["none"]  # same inputs: kept, not rerun
    assert len(second["yarn"]) == 1
    chex.assert_trees_all_close(second["yarn"][0], expected_nll(4.0, docs), rtol=1e-5)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["method_inputs"]["yarn"]["rope_scaling"]["factor"] == 4.0
    assert saved["method_inputs"]["none"]["rope_scaling"] is None


def test_changed_documents_replace_the_row(tmp_path, base):
    path = tmp_path / "results.json"
    one = perplexity_sweep(base, TOK, ResultStore(path), method="none", lengths=[64], num_docs=1,
                           progress=False)
    two = perplexity_sweep(base, TOK, ResultStore(path), method="none", lengths=[64], num_docs=2,
                           progress=False)
    rows = ResultStore(path).records("perplexity")
    assert len(two) == 1 and rows == [one[0], two[0]]  # the first document's row is kept, not rerun
    assert two[0]["doc"] != one[0]["doc"] and two[0]["data_key"] != one[0]["data_key"]
    docs = documents(TOK, 65, 2)
    chex.assert_trees_all_close(rows[1]["nll"], expected_nll(1.5, docs[1:]), rtol=1e-5)
    # the same document with other token ids (an edited file, another tokenizer): recomputed, replaced
    store = ResultStore(path)
    store.put("perplexity", {**rows[0], "data_key": "stale", "nll": -1.0}, cell=("method", "length", "doc"))
    again = perplexity_sweep(base, TOK, ResultStore(path), method="none", lengths=[64], num_docs=2,
                             progress=False)
    assert [r["doc"] for r in again] == [one[0]["doc"]]
    assert {r["data_key"] for r in ResultStore(path).records("perplexity")} == {one[0]["data_key"],
                                                                               two[0]["data_key"]}


def test_changed_trials_replace_the_retrieval_cell(tmp_path, base):
    path = tmp_path / "results.json"
    kw = dict(lengths=[512], depths=[0.5], progress=False, batch_tokens=1024)
    passkey_sweep(base, TOK, ResultStore(path), method="none", trials=1, **kw)
    assert passkey_sweep(must_not_run, TOK, ResultStore(path), method="none", trials=1, **kw) == []
    passkey_sweep(base, TOK, ResultStore(path), method="none", trials=2, **kw)
    rows = ResultStore(path).records("passkey")
    assert [(r["length"], r["depth"], r["trials"]) for r in rows] == [(512, 0.5, 2)]


@pytest.mark.parametrize("text", ['{"perplexity": [{"method": "none", "len', "", "[1, 2]"])
def test_corrupt_results_file_is_a_clear_error(tmp_path, text):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"results file .*results.json .*(not valid JSON|not a JSON object)"):
        ResultStore(path)


def test_bad_paths_are_clear_errors(tmp_path):
    workdir = tmp_path / "workdir"
    workdir.write_text("I am a file")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        ResultStore(workdir / "results.json")
    with pytest.raises(ValueError, match="is a directory"):
        ResultStore(tmp_path)
    with pytest.raises(ValueError, match="on_change"):
        ResultStore(tmp_path / "r.json", on_change="merge")


def test_writes_leave_no_temporary_files(tmp_path):
    store = ResultStore(tmp_path / "r.json", meta={"model": "m"})
    store.add("passkey", {"method": "none", "length": 1, "depth": 0.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_scaling_factor_refuses_instead_of_clamping():
    assert scaling_factor(8192, None, [4096, 16384]) == (16384, 2.0)
    assert scaling_factor(8192, None, [2048, 4096]) == (4096, 1.0)  # every length fits
    assert scaling_factor(8192, 32768, [4096]) == (32768, 4.0)
    with pytest.raises(ValueError, match="target_length -4096 is below train_length 8192"):
        scaling_factor(8192, -4096, [4096])
    with pytest.raises(ValueError, match="target_length 4096 is below"):
        scaling_factor(8192, 4096, [4096])
    with pytest.raises(ValueError, match="lengths must be positive"):
        scaling_factor(8192, None, [4096, -1])


def run_extend(*flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.extend", "--config", "configs/extend_smollm2.py", *flags]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_extend_refuses_a_negative_target_length_before_work(tmp_path):
    result = run_extend("--config.target_length=-4096", f"--config.workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "target_length" in result.stderr and "-4096" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # loads SmolLM2 before opening the results file
def test_extend_refuses_a_file_as_workdir(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_extend(f"--config.workdir={not_a_dir}", "--config.methods=('none',)")
    assert result.returncode != 0
    assert f"workdir {not_a_dir} cannot be created: {not_a_dir} is a file" in result.stderr


def test_evaluate_checkpoint_refuses_another_checkpoints_rows(tmp_path):
    cfg = ModelConfig(vocab_size=TOK.vocab_size, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1,
                      mlp_dim=32)
    spec = SuiteSpec(ppl_lengths=(64,))
    first = Decoder(cfg, rngs=nnx.Rngs(0))
    evaluate_checkpoint(first, TOK, tmp_path, spec, name="tiny", train_length=64, progress=False)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["inputs"]["parameters"] == parameters_digest(Decoder(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(InputsChanged, match="parameters"):
        evaluate_checkpoint(Decoder(cfg, rngs=nnx.Rngs(1)), TOK, tmp_path, spec, name="tiny", train_length=64)
