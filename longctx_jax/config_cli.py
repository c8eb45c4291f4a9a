"""The command line every launcher shares: a big_vision-style config file plus field overrides.

    python -m experiments.NAME --config configs/FILE.py[:variant] --config.field=value ...

`define_config(default)` declares the `--config` flag; `run(main)` parses the command line and
calls `main(config)`. Before any work starts it refuses, with a one-line error:
- an override of a field the config does not have (`--config.model.d_modle=3`), naming the
  field and the closest existing names (instead of ml_collections' chained `AttributeError`);
- positional arguments (`python -m experiments.train tiny`: a forgotten `--config`);
and it parses dict-valued fields (`--config.longrope="{'short_factor': [...], ...}"`,
`--config.model.rope_scaling="{'rope_type': 'yarn', 'factor': 4.0}"`) as Python literals,
which `config_flags` on its own rejects ("Type <class 'dict'> ... is not supported").

`load_config("configs/FILE.py:variant")` loads a config by the same spelling from library code
(the reproduction runner uses it).
"""

import ast
import difflib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

CONFIG_FLAG = "config"


class _DictParser(flags.ArgumentParser):
    """Parses a dict-valued config field from a Python literal, e.g. `"{'factor': 4.0}"`."""

    def parse(self, argument: Any) -> dict | None:
        if argument is None or isinstance(argument, dict):
            return argument
        if argument in ("None", "none", ""):
            return None
        try:
            value = ast.literal_eval(argument)
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"cannot parse {argument!r} as a dict literal ({e}); write e.g. "
                             "\"{'rope_type': 'yarn', 'factor': 4.0}\"") from None
        if not isinstance(value, dict):
            raise ValueError(f"{argument!r} is a {type(value).__name__}, not a dict literal")
        return value

    def flag_type(self) -> str:
        return "dict literal"


config_flags.register_flag_parser_for_type(dict, _DictParser())


def define_config(default: str, help_string: str = "Experiment config file (path[:variant]).") -> Any:
    """Declares `--config` (a config file, optionally `file.py:variant`) with `default`.

    Unknown override fields are refused here already: when `--config` itself is not on the
    command line, `config_flags` loads the default and applies the overrides at definition.

    Returns:
      the flag holder; `run` passes its value to `main`.
    """
    try:
        check_argv(sys.argv, default)
    except app.UsageError as e:
        _fatal(e)
    return config_flags.DEFINE_config_file(CONFIG_FLAG, default, help_string)


def _fatal(error: Exception) -> None:
    """Exits as absl's `parse_flags_with_usage` does on a flag error."""
    sys.stderr.write(f"FATAL Flags parsing error: {error}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of `spec` ("path/to/file.py" or "path/to/file.py:variant"), unlocked."""
    return ConfigFileFlagParser(name=CONFIG_FLAG, lock_config=False).parse(spec)


def override_paths(argv: Sequence[str], name: str = CONFIG_FLAG) -> list[str]:
    """The dotted field paths overridden on the command line (`--config.a.b=1` -> "a.b")."""
    out = []
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
        if match:
            out.append(match.group(1))
    return out


def check_override_paths(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
    """Raises ValueError naming the first override path the config has no field for.

    Args:
      config: the loaded config.
      paths: dotted field paths such as "model.d_model" (see `override_paths`).
    """
    for path in paths:
        node, walked = config, []
        for part in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"--{CONFIG_FLAG}.{path}: `{'.'.join(walked)}` is a "
                                 f"{type(node).__name__}, not a group of fields")
            keys = list(node.keys())
            if part not in keys:
                where = f"config.{'.'.join(walked)}" if walked else "the config"
                close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"unknown config field --{CONFIG_FLAG}.{path}: {where} has no field "
                                 f"{part!r}.{hint} Fields there: {', '.join(sorted(keys))}")
            node = node[part]
            walked.append(part)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                    ) -> ml_collections.ConfigDict:
    """A copy of `config` with nested `overrides` set, as `--config.a.b=value` would set them.

    `{"data": {"seq_len": 2048}}` sets `config.data.seq_len`; a mapping descends only into a group
    of fields (a ConfigDict) and replaces any other field whole (`{"position": {"rope_scaling":
    {...}}}` replaces the scaling dict).

    Raises:
      ValueError: a path the config has no field for (see `check_override_paths`).
    """
    config = config.copy_and_resolve_references()

    def paths(node: ml_collections.ConfigDict, changes: Mapping[str, Any], prefix: str
              ) -> list[tuple[str, Any]]:
        out = []
        for key, value in changes.items():
            check_override_paths(config, [prefix + key])
            if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
                out += paths(node[key], value, f"{prefix}{key}.")
            else:
                out.append((prefix + key, value))
        return out

    for path, value in paths(config, overrides, ""):
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def _config_spec(argv: Sequence[str], default: str) -> str:
    for i, arg in enumerate(argv):
        match = re.match(rf"^--?{CONFIG_FLAG}(=(.*))?$", arg)
        if match:
            if match.group(1):
                return match.group(2)
            if i + 1 < len(argv):
                return argv[i + 1]
    return default


def check_argv(argv: Sequence[str], default: str) -> None:
    """Raises app.UsageError if an override in `argv` names a field the config lacks.

    Args:
      argv: the command line, program name first.
      default: the config spec used when `--config` is not in `argv`.
    """
    paths = override_paths(argv[1:])
    if not paths:
        return
    try:
        config = load_config(_config_spec(argv[1:], default))
    except Exception:  # a config file that does not load: the flag parser reports it, as usual
        return
    if isinstance(config, ml_collections.ConfigDict):  # else the flag parser reports the file
        try:
            check_override_paths(config, paths)
        except ValueError as e:
            raise app.UsageError(str(e)) from None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Checks the overrides against the config, parses the flags, refuses positional arguments.

    Raises:
      app.UsageError: an unknown `--config.field` (with suggestions) or positional arguments.
    """
    if CONFIG_FLAG in flag_values:
        check_argv(argv, flag_values[CONFIG_FLAG].default_as_str.strip("'"))
    rest = flag_values(argv)
    if len(rest) > 1:
        raise app.UsageError(f"unexpected positional arguments {rest[1:]}: every setting is a flag, "
                             f"e.g. --{CONFIG_FLAG}=configs/tiny.py:alibi or --{CONFIG_FLAG}.workdir=runs/x")
    return rest


def run(main: Callable[..., Any], flag: Any = None) -> None:
    """`absl.app.run` with `parse_flags`: calls `main(config)`, or `main()` without a config flag.

    Args:
      main: the launcher's body, given the config after overrides when `flag` is set.
      flag: the holder `define_config` returned; None for launchers with plain flags only.
    """

    def _main(argv: list[str]) -> None:
        del argv  # parse_flags refused anything beyond the program name
        if flag is None:
            main()
        else:
            main(flag.value)

    def _parse(argv: list[str]) -> list[str]:
        try:
            return parse_flags(argv)
        except (flags.Error, app.UsageError) as e:
            _fatal(e)
            raise

    app.run(_main, flags_parser=_parse)
