"""The shared launcher command line: unknown fields, dict overrides, positional arguments."""

import glob
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import app, flags
from ml_collections import config_flags

from longctx_jax import config_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv, default="configs/tiny.py"):
    """Parses `argv` with a fresh flag set, as a launcher's `config_cli.run` does."""
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", default, flag_values=fv, sys_argv=argv)
    config_cli.parse_flags(argv, fv)
    return holder.value


def test_overrides_and_variants_parse():
    config = parse(["prog", "--config", "configs/tiny.py:alibi", "--config.train.steps=7"])
    assert config.model.position == "alibi" and config.train.steps == 7


@pytest.mark.parametrize("argv, field, suggestion", [
    (["prog", "--config.model.d_modle=3"], "model.d_modle", "'d_model'"),
    (["prog", "--config", "configs/tiny.py", "--config.trian.steps=3"], "trian.steps", "'train'"),
    (["prog", "--config=configs/extend_smollm2.py", "--config.eval.ppl_lenghts=(1,)"], "eval.ppl_lenghts",
     "'ppl_lengths'"),
])
def test_unknown_field_names_the_field_and_a_close_match(argv, field, suggestion):
    want = rf"unknown config field --config\.{field}.*Did you mean {suggestion}"
    with pytest.raises(app.UsageError, match=want):
        config_cli.check_argv(argv, "configs/tiny.py")


def test_unknown_field_in_a_launcher_is_one_line_not_a_traceback():
    out = subprocess.run([sys.executable, "-m", "experiments.train", "--config.model.d_modle=3"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "unknown config field --config.model.d_modle" in out.stderr and "'d_model'" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("argv, path, want", [
    (["prog", "--config", "configs/tiny.py",
      "--config.model.rope_scaling={'rope_type': 'linear', 'factor': 2.0}"],
     ("model", "rope_scaling"), {"rope_type": "linear", "factor": 2.0}),
    (["prog", "--config", "configs/extend_smollm2.py",
      "--config.longrope={'short_factor': [1.0, 1.0], 'long_factor': [1.5, 2.0]}"],
     ("longrope",), {"short_factor": [1.0, 1.0], "long_factor": [1.5, 2.0]}),
])
def test_documented_dict_overrides_work(argv, path, want):
    value = parse(argv)
    for key in path:
        value = value[key]
    assert dict(value) == want


def test_dict_override_that_is_not_a_dict_is_refused():
    with pytest.raises(flags.IllegalFlagValueError, match="not a dict literal"):
        parse(["prog", "--config", "configs/tiny.py", "--config.model.rope_scaling=[1, 2]"])


def test_stray_positional_arguments_are_refused():
    with pytest.raises(app.UsageError, match=r"unexpected positional arguments \['configs/tiny.py'\]"):
        parse(["prog", "configs/tiny.py", "--config.train.steps=3"])


def test_load_config_reads_a_variant():
    assert config_cli.load_config("configs/tiny.py:nope").model.position == "none"



CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "[a-z]*.py")))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_documents_its_launch_and_spells_checkpoint_one_way(name):
    module = importlib.import_module(f"configs.{name}")
    config = config_cli.load_config(os.path.join(REPO, "configs", f"{name}.py"))
    assert "python -m experiments." in module.__doc__ and f"configs/{name}.py" in module.__doc__
    assert "gguf_path" not in config and "presets" not in config
    if "checkpoint" in config:
        assert isinstance(config.checkpoint, str)  # "" = the shipped GGUF


@pytest.mark.parametrize("name", [n for n in CONFIGS
                                  if importlib.import_module(f"configs.{n}").get_config.__code__.co_argcount])
def test_every_config_variant_is_checked(name):
    with pytest.raises(ValueError, match="unknown (variant|preset) 'no_such_variant'"):
        importlib.import_module(f"configs.{name}").get_config("no_such_variant")


def test_apply_overrides_sets_nested_fields_on_a_copy():
    config = ml_collections.ConfigDict({"data": {"seq_len": 8, "val_fraction": 0.05},
                                        "position": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}})
    yarn = {"rope_type": "yarn", "factor": 4.0}
    changes = {"data": {"seq_len": 16}, "position": {"rope_scaling": yarn}}
    changed = config_cli.apply_overrides(config, changes)
    assert changed.data.seq_len == 16 and changed.data.val_fraction == 0.05
    assert dict(changed.position.rope_scaling) == {"rope_type": "yarn", "factor": 4.0}  # replaced whole
    assert config.data.seq_len == 8 and config.position.rope_scaling.rope_type == "linear"
    with pytest.raises(ValueError, match="unknown config field --config.data.seq"):
        config_cli.apply_overrides(config, {"data": {"seq": 1}})
