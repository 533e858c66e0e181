"""Shared plumbing for the thin scripts in MuJoCo/: config parsing and the user-error contract.

User errors (bad files, fields, options) print one line to stderr and exit with code 2, without a traceback;
pyrallis/argparse already exit with code 2 on malformed command lines.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from typing import Any, Callable, TypeVar

from pyrallis.argparsing import ArgumentParser
from pyrallis.help_formatter import SimpleHelpFormatter
from pyrallis.utils import ParsingError

from synther.errors import UserError

T = TypeVar("T")


class _HelpFormatter(SimpleHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """pyrallis' field help (from the comments beside each dataclass field) + the script docstring kept as written."""


PAPER_ALIASES = {"--config": "--config_path"}  # the paper repo's flag for pyrallis' YAML option, in every script
AGENT_ALIASES = {"--env": "--dataset"}  # the paper repo's (and CORL's) flag for the agents' dataset
OUT_ALIASES = {"--out": "--out_dir"}  # the results folder is --out_dir in every script; --out is kept


def parse(config_class: type[T], description: str, args: list[str] | None = None,
          aliases: dict[str, str] | None = None) -> T:
    """Parse `--field value` options (and an optional `--config_path file.yaml`, alias `--config`) into
    `config_class`; `aliases` maps more alternative flag names to options. Every numeric option is then checked
    against NUMERIC_RANGES, so a bad number stops the script before it writes anything."""
    args = apply_aliases(list(sys.argv[1:] if args is None else args), {**PAPER_ALIASES, **(aliases or {})})
    args = bracket_lists(args, config_class)
    parser = ArgumentParser(config_class=config_class, formatter_class=_HelpFormatter, description=description)
    try:
        cfg = parser.parse_args(args)
    except (ParsingError, ValueError, TypeError, KeyError) as e:  # pyrallis' errors for a bad value or YAML field
        raise UserError(f"invalid option: {str(e).splitlines()[0]}") from None
    check_numbers(cfg)
    return cfg


def apply_aliases(args: list[str], aliases: dict[str, str]) -> list[str]:
    """Rewrite `--alias v` / `--alias=v` to the option it stands for; an alias and its option both given on the
    command line with different values is an error, even when one of them is the option's default value."""
    given: dict[str, tuple[str, bool]] = {}  # option -> (first value, given through an alias)
    out: list[str] = []
    for i, a in enumerate(args):
        name, eq, value = a.partition("=")
        if not name.startswith("--"):
            out.append(a)
            continue
        target = aliases.get(name, name)
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
        if target in given and given[target][0] != value and (given[target][1] or name in aliases):
            spelled = [k for k, v in aliases.items() if v == target] + [target]
            raise UserError(f"{' and '.join(spelled)} disagree ('{given[target][0]}' vs '{value}'); they are one "
                            "option, give one")
        given.setdefault(target, (value, name in aliases))
        out.append(target + eq + value if eq else target)
    return out


def _list_options(config_class: type, prefix: str = "") -> set[str]:
    """--options of `config_class` (nested dataclasses included) whose type is a list."""
    out: set[str] = set()
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint):
            out |= _list_options(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is list:
            out.add(f"--{prefix}{f.name}")
    return out


def bracket_lists(args: list[str], config_class: type) -> list[str]:
    """A list option given as a comma string (`--epsilons 1,10`, as the bash-* drivers take it) becomes the YAML
    list pyrallis reads (`[1,10]`): lists are spelled the same way in every script."""
    lists = _list_options(config_class)
    out = list(args)
    for i, a in enumerate(out):
        name, eq, value = a.partition("=")
        if name not in lists:
            continue
        if eq and not value.lstrip().startswith("["):
            out[i] = f"{name}=[{value}]"
        elif not eq and i + 1 < len(out) and not out[i + 1].startswith("--") and \
                not out[i + 1].lstrip().startswith("["):
            out[i + 1] = f"[{out[i + 1]}]"
    return out


# The range of every numeric option, by its name (the last part of --a.b.name), so one name means one rule in every
# script. (low, high, low_open, high_open); None = unbounded. A numeric option not listed here must be finite and
# ≥ 0 (counts, sizes, budgets, weights; 0 often means "the default"): a new option gets that rule without a line here.
_POSITIVE = (0.0, None, True, False)
_AT_LEAST_ONE = (1.0, None, False, False)
_UNIT_OPEN = (0.0, 1.0, True, True)
_UNIT_CLOSED = (0.0, 1.0, False, False)
_RATE = (0.0, 1.0, True, False)  # (0, 1]
_ANY = (None, None, False, False)
NUMERIC_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(["lr", "actor_lr", "critic_lr", "qf_lr", "vf_lr", "policy_lr", "learning_rate",
                     "actor_learning_rate", "critic_learning_rate", "alpha_learning_rate"], _POSITIVE),
    **dict.fromkeys(["clip_norm", "epsilon", "sigma_data", "sigma_min", "sigma_max", "rho", "p_std", "s_noise",
                     "normalizer_noise_multiplier", "canary_norm", "canary_radius", "aim_max_model_size", "epochs",
                     "pretrain_epochs", "finetune_epochs", "nodp_epochs"], _POSITIVE),
    **dict.fromkeys(["batch_size", "hidden_dim", "n_hidden", "checkpoint_every", "log_every", "ema_every",
                     "sample_batch", "steps", "sampler_steps", "num_critics", "policy_freq", "cql_n_actions",
                     "target_update_period", "members", "draws", "canaries", "net_width",
                     "max_episode_steps", "eval_every", "eval_episodes", "bins", "embedding_dim", "pate_iterations",
                     "pate_rows_per_teacher", "pate_student_iters", "pate_teacher_iters", "cpus", "summary_last_k",
                     "draws_per_record", "train_freq", "gradient_steps", "pool_size", "relabel_steps",
                     "relabel_width"],
                    _AT_LEAST_ONE),
    **dict.fromkeys(["delta", "train_fraction", "confidence", "iql_tau"], _UNIT_OPEN),
    **dict.fromkeys(["ema_decay", "discount", "rate"], _UNIT_CLOSED),
    **dict.fromkeys(["tau", "soft_target_update_rate", "sample_rate"], _RATE),
    "adam_beta2": (0.0, 1.0, False, True),
    # negative values that mean something: -1 = unset/all, a log-normal mean, CQL's optional clips and gap
    **dict.fromkeys(["seed", "sample_seed", "sample_limit", "agent_sample_limit"], (-1.0, None, False, False)),
    "dp_epsilon": (-1.0, None, False, False),
    **dict.fromkeys(["p_mean", "cql_target_action_gap", "cql_clip_diff_min"], _ANY),
}
_INFINITE_OK = {"cql_clip_diff_min", "cql_clip_diff_max", "s_tmax"}  # ±inf = no clip / churn at every σ
_DEFAULT_RANGE = (0.0, None, False, False)


def agent_main(config_class: type, agent_class: type, description: str, args: list[str] | None = None) -> None:
    """The whole body of MuJoCo/<algorithm>.py: parse the options, train, print the scores."""
    from synther.agents.trainer import summary_line, train_seeds

    for summary in train_seeds(parse(config_class, description, args, AGENT_ALIASES), agent_class):
        print(summary_line(summary))


def check_numbers(cfg: Any, prefix: str = "") -> None:
    """UserError naming the option if a numeric option is NaN, infinite (unless allowed) or out of its range."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"--{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_numbers(value, f"{prefix}{f.name}.")
            continue
        if hints.get(f.name) not in (int, float) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isnan(value) or (math.isinf(value) and f.name not in _INFINITE_OK):
            raise UserError(f"invalid option {name} {value}: must be a finite number")
        low, high, low_open, high_open = NUMERIC_RANGES.get(f.name, _DEFAULT_RANGE)
        if f.name == "dp_epsilon" and value != -1 and value <= 0:
            raise UserError(f"invalid option {name} {value:g}: must be > 0 (or -1: not given)")
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise UserError(f"invalid option {name} {value:g}: must be in {_interval(low, high, low_open, high_open)}")


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(-∞" if low is None else ("(" if low_open else "[") + f"{low:g}"
    right = "∞)" if high is None else f"{high:g}" + (")" if high_open else "]")
    return f"{left}, {right}"


def run(main: Callable[[], object]) -> None:
    """Run a script's main(), turning UserError into `error: ...` on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError) as e:
        # an output path the user gave that cannot be created (under a regular file, a file where a folder goes,
        # no permission): the user's to fix, so one line, not a traceback
        print(f"error: {e.filename}: cannot write there ({e.strerror})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished outputs are complete, unfinished ones were not written", file=sys.stderr)
        sys.exit(130)
