"""Opt-in Weights & Biases logging: the same rows as the JSONL files, nothing without --wandb.project, offline
writes a local W&B run, and non-private diagnostics of a DP run never go online."""
import sys
import types
from pathlib import Path

import pytest
import torch

from synther.agents import get_algorithm
from synther.agents.trainer import train, train_seeds
from synther.data.pointmaze import dataset_name
from synther.diffusion.denoiser import DenoiserConfig
from synther.diffusion.edm import EDM
from synther.diffusion.normalizer import Normalizer
from synther.diffusion.trainer import DiffusionTrainer, TrainConfig
from synther.errors import UserError
from synther.privacy.engine import DPSettings
from synther.privacy.ledger import PrivacyLedger
from synther.utils.tracking import WandbConfig
from maze_data import shared_maze

UMAZE = dataset_name("umaze")


class _FakeRun:
    def __init__(self, **kwargs):
        self.init, self.rows, self.finished = kwargs, [], False

    def log(self, row, step):
        self.rows.append((step, row))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.SimpleNamespace(Settings=lambda **kw: kw,
                                   init=lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1])
    monkeypatch.setitem(sys.modules, "wandb", module)
    return runs


def _agent(tmp_path, data_roots, **overrides):
    shared_maze("umaze", 3000).save(data_roots["PRIVTRANR_DATA_DIR"] / f"{UMAZE}.npz")
    agent_class, config_class = get_algorithm("td3_bc")
    cfg = config_class(dataset=UMAZE, max_timesteps=40, eval_freq=20, n_episodes=1, eval_max_episode_steps=20,
                       batch_size=32, log_every=10, hidden_dim=16, checkpoints_path=str(tmp_path / "runs"),
                       progress=False, **overrides)
    return agent_class, cfg


def test_agent_rows_go_to_wandb_only_when_a_project_is_given(tmp_path, data_roots, fake_wandb):
    agent_class, cfg = _agent(tmp_path, data_roots)
    train(cfg, agent_class)
    assert fake_wandb == []  # no project: wandb is never called
    agent_class, cfg = _agent(tmp_path, data_roots, name="logged", wandb=WandbConfig(project="p"))
    summary = train(cfg, agent_class)
    (run,) = fake_wandb
    assert run.init["project"] == "p" and run.init["mode"] == "offline" and run.finished
    assert Path(run.init["dir"]) == Path(summary["run_dir"])
    assert [s for s, r in run.rows if "train/critic_loss" in r] == [10, 20, 30, 40]  # as metrics.jsonl
    evals = [(s, r) for s, r in run.rows if "eval/normalized_score" in r]
    assert [s for s, _ in evals] == [20, 40]
    assert evals[-1][1]["eval/normalized_score"] == summary["final_normalized_score"]


def test_stacked_seeds_log_to_a_wandb_run_each(tmp_path, data_roots, fake_wandb):
    agent_class, cfg = _agent(tmp_path, data_roots, stack_seeds=2, wandb=WandbConfig(project="p"))
    summaries = train_seeds(cfg, agent_class)
    assert [Path(run.init["dir"]) for run in fake_wandb] == [Path(s["run_dir"]) for s in summaries]
    assert all(run.init["reinit"] == "create_new" and run.finished for run in fake_wandb)  # open side by side
    for run, summary in zip(fake_wandb, summaries):
        evals = [r["eval/normalized_score"] for s, r in run.rows if "eval/normalized_score" in r]
        assert evals[-1] == summary["final_normalized_score"]


def _tiny_diffusion():
    torch.manual_seed(0)
    return EDM(5, Normalizer.identity(5), DenoiserConfig(width=16, depth=1)), torch.randn(64, 5)


def test_dp_diagnostics_never_go_to_wandb_online_and_plain_metrics_do(tmp_path, fake_wandb):
    model, data = _tiny_diffusion()
    dp = DPSettings(noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.25)
    with pytest.raises(UserError, match="may not be sent to W&B online"):
        DiffusionTrainer(model, data, TrainConfig(max_steps=4, log_private_diagnostics=True), tmp_path / "a",
                         PrivacyLedger(delta=1e-5), {}, dp=dp, progress=False,
                         wandb=WandbConfig(project="p", mode="online"))
    DiffusionTrainer(model, data, TrainConfig(max_steps=4, log_every=2), tmp_path / "b", PrivacyLedger(delta=1e-5),
                     {}, dp=dp, progress=False, wandb=WandbConfig(project="p", mode="online")).run()
    (run,) = fake_wandb
    assert [s for s, _ in run.rows] == [2, 4] and all(set(r) == {"time_s", "epsilon"} for _, r in run.rows)


def test_offline_mode_writes_a_local_wandb_run_and_needs_no_network(tmp_path, data_roots, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    agent_class, cfg = _agent(tmp_path, data_roots, wandb=WandbConfig(project="privtranr-test"))
    summary = train(cfg, agent_class)
    files = list((Path(summary["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0
