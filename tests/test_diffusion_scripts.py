"""train_diffuser.py and bash-train-diffusion.py as a user runs them."""
import json

import numpy as np
import pytest

from maze_data import write_mazes
from script_helpers import assert_user_error, run_script

pytestmark = pytest.mark.slow  # subprocess pipelines of train_diffuser.py and its sweep

def test_help_maps_the_paper_flags():
    out = run_script("train_diffuser.py", "--help").stdout
    for option in ("--mode", "--dataset", "--public_datasets", "--dp.epsilon", "--dp.delta", "--dp.clip_norm",
                   "--dp.accountant", "--curiosity.rate", "--num_samples", "--checkpoint", "--sampler.name",
                   "--profile", "--device", "--train.epochs", "--dp.clipping", "--dp.normalizer"):
        assert option in out, option
    assert "--dp_epsilon" in out and "--curiosity_driven_rate" in out  # the paper's names appear in the help


@pytest.mark.parametrize("args, fragment", [
    (("--mode", "train"), "unknown --mode"),
    (("--mode", "finetune", "--dataset", "x.npz", "--checkpoint", "nope.pt"), "checkpoint not found"),
    (("--mode", "finetune", "--dp.epsilon", "-1", "--dataset", "x", "--checkpoint", "y"), "invalid option --dp.epsilon"),
    (("--mode", "pretrain"), "--public_datasets"),
    (("--mode", "sample", "--checkpoint", "README.md"), "not a readable checkpoint"),
])
def test_bad_input_exits_2_with_one_line(args, fragment):
    assert_user_error(run_script("train_diffuser.py", *args), fragment)


def test_sweep_runs_pretrain_finetune_sample_and_skips_finished_work(tmp_path):
    data = write_mazes(tmp_path / "data", {"open": 0, "umaze": 1, "medium": 2, "large": 3}, 1500)
    base = tmp_path / "tiny.yaml"
    base.write_text("profile: cpu-small\nwidth: 32\ndepth: 2\nprogress: false\nnum_samples: 300\n"
                    "train: {batch_size: 64, max_steps: 20, log_every: 10, checkpoint_every: 10}\n"
                    "sampler: {name: dpm2m, steps: 6}\n")
    args = ("--datasets", "ptr-maze2d-medium-dense-v0", "--epsilons", "2,8", "--seeds", "0",
            "--base_config", str(base), "--runs_dir", str(tmp_path / "runs"))
    env = {"PRIVTRANR_DATA_DIR": str(data)}
    first = run_script("bash-train-diffusion.py", *args, env_extra=env)
    assert first.returncode == 0, first.stderr
    for eps in (2, 8):
        folder = tmp_path / "runs" / f"finetune-ptr-maze2d-medium-dense-v0-eps{eps}-seed0"
        ledger = json.loads((folder / "ledger.json").read_text())
        assert ledger["target_epsilon"] == eps and ledger["epsilon_spent"] <= eps
        with np.load(folder / "samples.npz") as f:
            assert f["observations"].shape == (300, 4)
        side = json.loads((folder / "samples.json").read_text())
        assert side["privacy_ledger"]["epsilon_spent"] == ledger["epsilon_spent"]
    assert len(list((tmp_path / "runs").glob("pretrain-*"))) == 1  # one pre-training shared by both ε
    again = run_script("bash-train-diffusion.py", *args, env_extra=env)
    # every finished step is skipped: the pre-training, both fine-tunings and both sample files
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 5
