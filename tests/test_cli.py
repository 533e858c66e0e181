"""The scripts as a user runs them: --help, outputs, and the one-line error / exit code 2 contract."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from synther.data.locomotion import LocomotionCollectConfig
from synther.data.pointmaze import MazeCollectConfig
from script_helpers import assert_user_error, run_script

def test_collect_help_explains_every_option():
    proc = run_script("collect_data.py", "--help")
    assert proc.returncode == 0
    options = ["--generator", "--out_dir", "--seed", "--overwrite", "--progress"]
    options += [f"--maze.{f.name}" for f in dataclasses.fields(MazeCollectConfig)]
    options += [f"--locomotion.{f.name}" for f in dataclasses.fields(LocomotionCollectConfig)]
    for option in options:
        # each option is listed with a help text, not just its type and default
        line = next((line for line in proc.stdout.splitlines() if line.strip().startswith(option + " ")), None)
        assert line is not None, option
    assert "SAC" in proc.stdout and "PointMaze" in proc.stdout


@pytest.mark.slow
def test_collect_maze_writes_dataset_and_sidecar_then_skips(tmp_path):
    args = ("--generator", "pointmaze", "--maze.name", "open", "--maze.num_steps", "500", "--out_dir", str(tmp_path),
            "--progress", "false", "--seed", "3")
    proc = run_script("collect_data.py", *args)
    assert proc.returncode == 0, proc.stderr
    npz, side = tmp_path / "ptr-maze2d-open-dense-v0.npz", tmp_path / "ptr-maze2d-open-dense-v0.json"
    with np.load(npz) as f:
        assert set(f.files) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
        assert f["rewards"].shape == (500,) and f["rewards"].dtype == np.float32
    meta = json.loads(side.read_text())
    assert meta["provenance"]["seed"] == 3 and meta["size"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == [side.name, npz.name]  # no temp files left behind
    before = npz.stat().st_mtime_ns
    again = run_script("collect_data.py", *args)
    assert again.returncode == 0 and "keeping it" in again.stdout and npz.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--generator", "atari"), ("unknown --generator 'atari'",)),
        (("--maze.name", "tiny", "--maze.num_steps", "10"), ("unknown maze 'tiny'",)),
        (("--seed", "abc"), ("invalid option", "seed")),
        (("--generator", "locomotion", "--locomotion.env", "Ant-v5"), ("unknown locomotion env",)),
    ],
)
@pytest.mark.slow
def test_collect_bad_options_exit_2_with_one_line(tmp_path, args, fragments):
    assert_user_error(run_script("collect_data.py", "--out_dir", str(tmp_path), *args), *fragments)
    assert not list(tmp_path.glob("*.npz"))


def _write(path: Path, **overrides) -> Path:
    n = 20
    arrays = {"observations": np.zeros((n, 3)), "actions": np.zeros((n, 2)), "rewards": np.zeros(n),
              "next_observations": np.zeros((n, 3)), "terminals": np.zeros(n)}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"actions": None}, "'actions'"),
        ({"rewards": np.zeros(19)}, "'rewards'"),
        ({"rewards": np.r_[np.zeros(19), np.nan]}, "'rewards'"),
        ({"observations": np.full((20, 3), np.inf)}, "'observations'"),
        ({"terminals": np.full(20, 0.5)}, "'terminals'"),
        ({"observations": np.zeros(20)}, "'observations'"),
    ],
)
def test_inspect_reports_bad_files_by_file_and_field(tmp_path, overrides, field):
    path = _write(tmp_path / "bad.npz", **overrides)
    assert_user_error(run_script("inspect_data.py", "--dataset", str(path)), str(path), field)


def test_inspect_checks_public_sensitive_dimensions(tmp_path):
    good = _write(tmp_path / "a.npz")
    same = _write(tmp_path / "b.npz")
    wider = _write(tmp_path / "c.npz", observations=np.zeros((20, 4)), next_observations=np.zeros((20, 4)))
    ok = run_script("inspect_data.py", "--dataset", str(good), "--compare_with", str(same))
    assert ok.returncode == 0 and "20 transitions" in ok.stdout and "compatible with" in ok.stdout
    assert_user_error(run_script("inspect_data.py", "--dataset", str(good), "--compare_with", f"{same},{wider}"),
                      "dimension mismatch", "obs_dim")


def test_inspect_missing_registered_dataset_tells_how_to_make_it(tmp_path):
    proc = run_script("inspect_data.py", "--dataset", "ptr-maze2d-large-dense-v0",
                      env_extra={"PRIVTRANR_DATA_DIR": str(tmp_path)})
    assert_user_error(proc, "ptr-maze2d-large-dense-v0", "collect_data.py --generator pointmaze --maze.name large")


def test_comma_list_reads_empty_and_none_as_no_items():
    from synther.utils.options import comma_list

    assert comma_list("td3_bc, iql,") == ["td3_bc", "iql"]
    assert comma_list("") == comma_list(None) == comma_list("None") == comma_list(" none ") == comma_list("[]") == []


def test_lists_are_spelled_alike_in_every_script():
    """`--epsilons 1,10` and `--epsilons [1,10]` mean the same list in the sweep (YAML lists) and in the bash-*
    drivers (comma strings)."""
    from synther.cli import parse
    from synther.sweep import SweepConfig
    from synther.utils.options import comma_list

    for spelling in (["--epsilons", "1,10", "--seeds=0,2"], ["--epsilons", "[1, 10]", "--seeds=[0,2]"]):
        cfg = parse(SweepConfig, "", spelling + ["--datasets", "a,b"])
        assert cfg.epsilons == [1.0, 10.0] and cfg.seeds == [0, 2] and cfg.datasets == ["a", "b"]
    assert comma_list("[1, 10]") == comma_list("1,10") == ["1", "10"]
    assert comma_list("['td3_bc', \"iql\"]") == ["td3_bc", "iql"]


def test_an_alias_and_its_option_must_agree_even_at_the_default_value():
    from synther.agents.trainer import AgentConfig
    from synther.cli import AGENT_ALIASES, apply_aliases, parse
    from synther.errors import UserError

    aliases = {"--env": "--dataset", "--config": "--config_path"}
    assert apply_aliases(["--env", "a", "--seed", "1"], aliases) == ["--dataset", "a", "--seed", "1"]
    assert apply_aliases(["--config=f.yaml", "--env", "a", "--dataset=a"], aliases) == [
        "--config_path=f.yaml", "--dataset", "a", "--dataset=a"]
    assert apply_aliases(["--dataset", "a", "--dataset", "b"], aliases)  # a plain repeat: argparse's last-wins
    default = AgentConfig.dataset
    for args in (["--env", "x", "--dataset", default], ["--dataset", default, "--env=x"]):
        with pytest.raises(UserError, match="--env and --dataset disagree"):
            parse(AgentConfig, "", args, AGENT_ALIASES)
    assert parse(AgentConfig, "", ["--env", "x"], AGENT_ALIASES).dataset == "x"


def _script_configs() -> dict[str, type]:
    """Every configuration class a MuJoCo/ script parses (the dataclasses named *Config its module holds)."""
    import importlib.util
    import sys

    from script_helpers import ROOT

    found = {}
    for path in sorted((ROOT / "MuJoCo").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_script_{path.stem.replace('-', '_')}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # so inspect (pyrallis' help texts) finds the classes' source
        spec.loader.exec_module(module)
        for name, value in vars(module).items():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and name.endswith("Config"):
                found[f"{path.name}:{name}"] = value
    return found


def _fields_without_help(config_class, prefix=""):
    """Options whose --help line would show only a type and a default: no comment beside, above or below the field
    (pyrallis' source of help texts), or another option's text, in the class or in any nested config."""
    import typing

    from pyrallis.wrappers.docstring import get_attribute_docstring

    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        doc = get_attribute_docstring(config_class, f.name)
        if not (doc.comment_inline or doc.comment_above or doc.docstring_below).strip():
            yield f"{prefix}{f.name}"
        elif doc.comment_inline and doc.comment_above and not doc.docstring_below:
            # pyrallis prefers the comment above to the inline one: that is the previous option's continuation
            yield f"{prefix}{f.name} (its help would be the comment above it: {doc.comment_above[:40]!r}…)"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields_without_help(hints[f.name], f"{prefix}{f.name}.")


@pytest.mark.slow
def test_every_option_of_every_script_has_its_own_help_text():
    missing = {name: list(_fields_without_help(cls)) for name, cls in _script_configs().items()}
    missing = {name: fields for name, fields in missing.items() if fields}
    assert not missing, missing


def _numeric_fields(config_class, prefix=""):
    import typing

    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _numeric_fields(hints[f.name], f"{prefix}{f.name}.")
        elif hints[f.name] in (int, float):
            yield f"{prefix}{f.name}", hints[f.name]


def test_every_numeric_option_of_every_script_is_checked_at_parse_time():
    """Defaults pass, and NaN / a huge negative value is refused for every numeric option of every script: the
    check is generic, so an option added later is covered without anyone remembering to."""
    from synther.cli import check_numbers
    from synther.errors import UserError

    configs = _script_configs()
    assert len({c for c in configs.values()}) >= 10 and any("td3_bc.py" in k for k in configs)
    checked = 0
    for where, config_class in configs.items():
        check_numbers(config_class())  # the defaults are valid
        for dotted, kind in _numeric_fields(config_class):
            for bad in (float("nan"), -1e12):
                cfg = config_class()
                *parents, leaf = dotted.split(".")
                target = cfg
                for p in parents:
                    target = getattr(target, p)
                if kind is int and bad != bad:
                    continue  # an int option cannot hold NaN (pyrallis refuses it already)
                setattr(target, leaf, kind(bad) if kind is int else bad)
                if leaf in ("p_mean", "cql_target_action_gap", "cql_clip_diff_min") and bad == -1e12:
                    continue  # options where any finite value means something
                with pytest.raises(UserError, match=f"--{dotted}"):
                    check_numbers(cfg)
                checked += 1
    assert checked > 200


@pytest.mark.parametrize("script,option,value,fragment", [
    ("train_diffuser.py", "--dp.clip_norm", "nan", "finite"),
    ("train_diffuser.py", "--train.lr", "-1", "(0, ∞)"),
    ("train_diffuser.py", "--train.checkpoint_every", "0", "[1, ∞)"),
    ("train_diffuser.py", "--depth", "-1", "[0, ∞)"),
    ("train_diffuser.py", "--train.ema_decay", "2", "[0, 1]"),
    ("td3_bc.py", "--alpha", "nan", "finite"),
    ("td3_bc.py", "--hidden_dim", "0", "[1, ∞)"),
    ("sweep.py", "--delta", "2", "(0, 1)"),
])
@pytest.mark.slow
def test_a_bad_number_is_one_error_line_before_anything_is_written(tmp_path, script, option, value, fragment):
    proc = run_script(script, option, value, "--run_dir" if script == "train_diffuser.py" else "--runs_dir"
                      if script == "sweep.py" else "--checkpoints_path", str(tmp_path / "out"))
    assert_user_error(proc, f"invalid option {option}", fragment)
    assert not (tmp_path / "out").exists()


def test_every_dp_release_takes_its_target_as_dp_epsilon_with_the_old_names_as_aliases():
    from synther.baselines import TARGET_ALIASES, BaselineConfig
    from synther.cli import parse
    from synther.diffusion.synthesizer import DIFFUSION_ALIASES, DiffusionConfig

    for config, aliases in ((DiffusionConfig, DIFFUSION_ALIASES), (BaselineConfig, TARGET_ALIASES)):
        for flag in ("--dp.epsilon", "--epsilon"):
            cfg = parse(config, "", [flag, "3", "--delta", "1e-7"], aliases)
            assert (cfg.dp.epsilon, cfg.dp.delta) == (3.0, 1e-7)
    paper = parse(DiffusionConfig, "", ["--dp_epsilon", "2", "--dp_max_grad_norm", "0.5", "--save_num_samples", "7",
                                        "--datasets_name", "a,b"], DIFFUSION_ALIASES)
    assert (paper.dp.epsilon, paper.dp.clip_norm, paper.num_samples, paper.public_datasets) == (2.0, 0.5, 7, "a,b")
