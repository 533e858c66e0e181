"""Offline RL agents: networks, buffer statistics, each update rule, the shared trainer (run folders, skip, resume),
training on synthetic samples only, and TD3+BC / IQL clearly beating a random policy on a generated maze."""
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import pyrallis
import pytest
import torch

from synther.agents import ALGORITHMS, get_algorithm
from synther.agents.buffer import Batch, ReplayBuffer, reward_scale_from_returns
from synther.agents.data import load_training_data
from synther.agents.evaluation import episode_seed, eval_target, random_policy, run_episodes, run_seed_episodes
from synther.agents.graphs import GraphedUpdates, capturable_optimizers
from synther.agents.networks import EnsembleMLP, return_bounds, soft_update
from synther.agents.trainer import (EVAL_PROTOCOL, DiffusionSource, AgentConfig, run_dir, seed_config, train,
                                    train_seeds)
from synther.data import TransitionDataset
from synther.data.pointmaze import MAZES, dataset_name
from synther.errors import DatasetError, UserError
from synther.utils.threads import follow_lent_threads
from devices import DEVICES
from maze_data import shared_maze

ROOT = Path(__file__).resolve().parents[1]
UMAZE = dataset_name("umaze")


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks on a shared 2-core machine: one torch thread avoids OpenMP spin-waiting against other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def umaze_data():
    """A small generated maze2d-umaze dataset (30k transitions, ~1 s)."""
    return shared_maze("umaze", 30_000)


@pytest.fixture
def umaze_registered(umaze_data, data_roots):
    """The dataset saved under its registry name in this test's data folder."""
    umaze_data.save(data_roots["PRIVTRANR_DATA_DIR"] / f"{UMAZE}.npz")
    return umaze_data


def tiny(algorithm: str, tmp_path: Path, **overrides):
    """(agent class, config) with small networks and a tiny budget."""
    agent_class, config_class = get_algorithm(algorithm)
    sizes = {"hidden_dim": 32}
    if algorithm == "edac":
        sizes["num_critics"] = 3
    if algorithm == "cql":
        sizes["cql_n_actions"] = 4
    base = dict(dataset=UMAZE, max_timesteps=40, eval_freq=20, n_episodes=1, eval_max_episode_steps=20,
                batch_size=32, log_every=10, checkpoints_path=str(tmp_path / "runs"), progress=False, **sizes)
    return agent_class, config_class(**{**base, **overrides})


# --- networks ----------------------------------------------------------------------------------------------
def test_ensemble_matches_separate_members_and_detach_blocks_parameter_grads():
    torch.manual_seed(0)
    ens = EnsembleMLP(5, 1, 16, 2, members=3)
    x = torch.randn(7, 5)
    out = ens(x)
    assert out.shape == (3, 7)
    for m in range(3):
        h = x
        for i, layer in enumerate(ens.layers):
            h = h @ layer.weight[m] + layer.bias[m]
            h = torch.relu(h) if i < len(ens.layers) - 1 else h
        torch.testing.assert_close(out[m], h.squeeze(-1))
        torch.testing.assert_close(ens(x, member=m), h.squeeze(-1))
    # members are initialised independently, like separate nn.Linear critics
    assert not torch.allclose(ens.layers[0].weight[0], ens.layers[0].weight[1])
    a = torch.randn(7, 5, requires_grad=True)
    ens(a, detach_params=True).sum().backward()
    assert a.grad is not None and all(p.grad is None for p in ens.parameters())


def test_layer_norm_ensemble_matches_torch_layernorm_and_bounds_extrapolation():
    torch.manual_seed(0)
    ens = EnsembleMLP(5, 1, 16, 2, members=2, layer_norm=True)
    with torch.no_grad():  # non-trivial scales and shifts, different per member
        for norm in ens.norms:
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(7, 5)
    for m in range(2):
        h = x
        for i, layer in enumerate(ens.layers):
            h = h @ layer.weight[m] + layer.bias[m]
            if i < len(ens.layers) - 1:
                reference = torch.nn.LayerNorm(16)
                reference.load_state_dict({"weight": ens.norms[i].weight[m, 0], "bias": ens.norms[i].bias[m, 0]})
                h = reference(torch.relu(h))
        torch.testing.assert_close(ens(x)[m], h.squeeze(-1))
        torch.testing.assert_close(ens(x, member=m), h.squeeze(-1))
    a = torch.randn(7, 5, requires_grad=True)
    ens(a, detach_params=True).sum().backward()
    assert a.grad is not None and all(p.grad is None for p in ens.parameters())
    # the last hidden layer's output has norm ≤ √d·max|γ| + ‖β‖ whatever the input, so |Q| cannot grow with it;
    # without the norm, Q of inputs 10⁴ times farther out grows by orders of magnitude
    last, norm = ens.layers[-1], ens.norms[-1]
    bound = (last.weight.squeeze(-1).norm(dim=1) * (16 ** 0.5 * norm.weight.abs().amax((1, 2))
                                                     + norm.bias.norm(dim=(1, 2))) + last.bias.abs().view(-1))
    far = 1e4 * torch.randn(1000, 5)
    assert (ens(far).abs().amax(1) <= bound + 1e-4).all()
    plain = EnsembleMLP(5, 1, 16, 2, members=2)
    assert plain(far).abs().amax() > 100 * plain(x).abs().amax()


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-2.0, -0.5), (-1.0, 3.0), (0.2, 0.9)])
def test_return_bounds_hold_every_discounted_return(low, high):
    gamma = 0.9
    rng = np.random.default_rng(0)
    lo, hi = return_bounds(low, high, gamma)
    returns = []
    for length in [1, 2, 5, 400]:  # episodes ending after `length` steps (400 ≈ never, 0.9**400 ≈ 5e-19)
        for rewards in [np.full(length, low), np.full(length, high), rng.uniform(low, high, (50, length))]:
            returns.append(np.atleast_2d(rewards) @ gamma ** np.arange(length))
    returns = np.concatenate([np.ravel(r) for r in returns])
    assert lo <= returns.min() + 1e-9 and returns.max() <= hi + 1e-9
    assert min(abs(returns.min() - lo), abs(returns.max() - hi)) < 1e-6  # attained: the bounds are tight


def test_bounded_td3_bc_targets_stay_within_the_returns_the_rewards_allow(tmp_path):
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(64, 4, generator=g)
    batch = Batch(obs, torch.rand(64, 2, generator=g) * 2 - 1, torch.rand(64, generator=g), obs, torch.zeros(64))
    losses = {}
    for bound in (False, True):
        torch.manual_seed(0)
        agent_class, cfg = tiny("td3_bc", tmp_path, bound_targets=bound)
        agent = agent_class(cfg, 4, 2, 1.0)
        agent.fit_to_data(0.0, 1.0)
        with torch.no_grad():  # a target critic that extrapolates wildly: every next-state value 10⁶
            agent.critic_target.layers[-1].bias.fill_(1e6)
            q = agent.critic(torch.cat([batch.observations, batch.actions], 1))
        losses[bound] = float(agent.update(batch)["critic_loss"])
    assert float(agent.target_high) == pytest.approx(1.0 / (1.0 - cfg.discount)) and float(agent.target_low) == 0.0
    high = 1.0 / (1.0 - cfg.discount)
    assert losses[True] <= 2 * float(((q.abs() + high) ** 2).mean(1).max()) < 1e6 < losses[False]


def test_soft_update_is_polyak_averaging():
    src, tgt = EnsembleMLP(3, 1, 4, 1, 2), EnsembleMLP(3, 1, 4, 1, 2)
    expected = [0.9 * t.detach().clone() + 0.1 * s.detach() for t, s in zip(tgt.parameters(), src.parameters())]
    soft_update(tgt, src, 0.1)
    for p, e in zip(tgt.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


# --- buffer ------------------------------------------------------------------------------------------------
def test_buffer_normalizes_with_statistics_of_the_data_given(make_dataset):
    ds = make_dataset(n=500, obs_dim=3, action_dim=2, seed=1)
    buf = ReplayBuffer(ds, seed=0)
    np.testing.assert_allclose(buf.state_mean, ds.observations.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(buf.state_std, ds.observations.std(0) + 1e-3, rtol=1e-5)
    b = buf.sample(64)
    assert b.observations.shape == (64, 3) and b.actions.shape == (64, 2)
    assert b.rewards.shape == (64,) and b.dones.shape == (64,)
    # every sampled row is a normalized dataset row, and whole rows travel together
    norm_obs = (ds.observations - buf.state_mean) / buf.state_std
    for i in range(5):
        row = int(np.argmin(np.abs(norm_obs - b.observations[i].numpy()).sum(1)))
        np.testing.assert_allclose(b.actions[i].numpy(), ds.actions[row], rtol=1e-6)
        assert b.rewards[i].item() == pytest.approx(ds.rewards[row])
        np.testing.assert_allclose(b.next_observations[i].numpy(),
                                   (ds.next_observations[row] - buf.state_mean) / buf.state_std, rtol=1e-4, atol=1e-5)
    # indices are drawn in bulk from a seeded generator: same seed, same batches
    again = ReplayBuffer(ds, seed=0)
    torch.testing.assert_close(again.sample(64).observations, b.observations)
    off = ReplayBuffer(ds, normalize_states=False)
    assert np.all(off.state_mean == 0) and np.all(off.state_std == 1)
    scaled = ReplayBuffer(ds, reward_scale=2.0, reward_bias=-1.0)
    np.testing.assert_allclose(scaled.reward_range(), (2 * ds.rewards.min() - 1, 2 * ds.rewards.max() - 1), rtol=1e-6)


def test_reward_scale_uses_episode_returns_and_refuses_unordered_samples(make_arrays):
    arrays = make_arrays(n=100, n_terminals=0)
    arrays["timeouts"][:] = False
    arrays["timeouts"][[49, 99]] = True
    ds = TransitionDataset(**arrays)
    returns = [ds.rewards[:50].sum(), ds.rewards[50:].sum()]
    assert reward_scale_from_returns(ds, 1000) == pytest.approx(1000 / (max(returns) - min(returns)), rel=1e-5)
    samples = dataclasses.replace(ds, timeouts=None, terminals=np.zeros(100, np.float32))
    with pytest.raises(UserError, match="episode boundaries"):
        reward_scale_from_returns(samples, 1000)


# --- each update rule --------------------------------------------------------------------------------------
# (config overrides, losses that must fall). Critic losses under CORL's settings; actor losses where the actor's
# objective is stationary on a fixed batch: AWAC and EDAC as configured, TD3+BC / IQL / CQL in their
# behaviour-cloning limits (α = 0, β = 0, BC warm-up), whose actor loss is a pure imitation loss.
LOSS_CHECKS = {
    "td3_bc": [({}, ["critic_loss"]), ({"alpha": 0.0}, ["actor_loss"]),
               ({"critic_layer_norm": True}, ["critic_loss"])],
    "iql": [({}, ["q_loss", "value_loss"]), ({"beta": 0.0}, ["actor_loss"])],
    "cql": [({}, ["critic_loss", "cql_diff"]), ({"bc_steps": 10**6}, ["policy_loss"])],
    "awac": [({}, ["critic_loss", "actor_loss"])],
    "edac": [({}, ["critic_loss", "td_loss", "actor_loss"])],
}
LEARNING_RATES = {
    "td3_bc": ["actor_lr", "critic_lr"],
    "iql": ["actor_lr", "qf_lr", "vf_lr"],
    "cql": ["policy_lr", "qf_lr"],
    "awac": ["learning_rate"],
    "edac": ["actor_learning_rate", "critic_learning_rate", "alpha_learning_rate"],
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_update_reduces_losses_on_a_fixed_batch(algorithm, tmp_path):
    assert set(LOSS_CHECKS) == set(ALGORITHMS)
    g = torch.Generator().manual_seed(0)
    n, obs_dim, act_dim = 128, 4, 2
    obs = torch.randn(n, obs_dim, generator=g)
    batch = Batch(obs, torch.rand(n, act_dim, generator=g) * 2 - 1, torch.tanh(obs[:, 0] - obs[:, 1]),
                  obs + 0.1 * torch.randn(n, obs_dim, generator=g), (torch.rand(n, generator=g) < 0.05).float())
    fast = {f: 1e-3 for f in LEARNING_RATES[algorithm]}  # 200 updates of small networks: a larger step size
    for overrides, keys in LOSS_CHECKS[algorithm]:
        torch.manual_seed(0)
        agent_class, cfg = tiny(algorithm, tmp_path, max_timesteps=200, **fast, **overrides)
        agent = agent_class(cfg, obs_dim, act_dim, 1.0)
        history = [{k: float(v) for k, v in agent.update(batch).items()} for _ in range(200)]
        assert all(np.isfinite(list(h.values())).all() for h in history)
        for key in keys:
            first = np.mean([h[key] for h in history[2:12]])
            last = np.mean([h[key] for h in history[-10:]])
            assert last < first - 0.05 * abs(first), (algorithm, overrides, key, first, last)
        actions = agent.act(obs[:5])
        assert actions.shape == (5, act_dim) and actions.abs().max() <= 1.0


# --- CUDA-graph cycles --------------------------------------------------------------------------------------
def test_graph_sampling_gives_the_batches_of_the_plain_sampler_in_order(make_dataset):
    ds = make_dataset(50)
    plain, graphed = ReplayBuffer(ds, seed=3, chunk=4), ReplayBuffer(ds, seed=3, chunk=4)
    for i in range(11):  # across two chunk boundaries
        if i % 4 == 0:
            graphed.draw_graph_chunk(8)
        for a, b in zip(plain.sample(8), graphed.graph_sample()):
            assert torch.equal(a, b)


GRAPHED = {"td3_bc": dict(policy_noise=0.0, noise_clip=0.0), "iql": {}, "awac": {}, "edac": {}}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", list(GRAPHED))
def test_graphed_cycles_train_as_the_plain_loop(make_dataset, tmp_path, device, algorithm):
    """On the CPU the cycle runs eagerly and must equal the plain loop exactly (IQL: its lr schedule stepped on the
    host between updates as in update()); on CUDA it is captured after the warm-up and replayed, and must stay within
    float tolerance of it, AWAC and EDAC included: they draw actions inside the update, and a replayed graph
    advances the CUDA generator's offset as the eager kernels do, so the draws are the same (seen on an H200)."""
    ds = make_dataset(300)
    agent_class, cfg = tiny(algorithm, tmp_path, **GRAPHED[algorithm])
    runs = []
    for mode in ("plain", "graphed"):
        torch.manual_seed(0)
        agent = agent_class(cfg, ds.obs_dim, ds.action_dim, 1.0, device)
        period = agent.graph_period
        buffer = ReplayBuffer(ds, device, seed=1, chunk=3 * period)
        cycles = GraphedUpdates(agent, buffer, 16, capture=device == "cuda") if mode == "graphed" else None
        for _ in range(10):  # 3 warm-up cycles, then (CUDA) one capture and 7 replays; chunks of 3 cycles
            losses = cycles.run() if cycles else [agent.update(buffer.sample(16)) for _ in range(period)][-1]
        runs.append(([p.detach().cpu().clone() for m in agent.modules() for p in m.parameters()],
                     {k: float(v) for k, v in losses.items()}, agent))
        if cycles and device == "cuda":
            assert cycles.graph is not None
    (plain, plain_losses, _), (graphed, graphed_losses, agent) = runs
    if algorithm == "td3_bc":
        assert agent.total_it == 20
    if algorithm == "iql":  # ten updates of the cosine schedule, on the tensor the graph reads
        assert float(agent.optimizer.param_groups[2]["lr"]) == pytest.approx(float(agent.scheduler.get_last_lr()[2]))
        assert agent.scheduler.last_epoch == 10
    tol = {} if device == "cuda" else {"rtol": 0, "atol": 0}
    for a, b in zip(plain, graphed):
        torch.testing.assert_close(a, b, **tol)
    assert plain_losses == pytest.approx(graphed_losses, rel=1e-4 if device == "cuda" else 0)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")  # the schedule steps with no update here
def test_a_graphed_runs_schedule_fills_the_lr_tensor_the_graph_reads(tmp_path):
    """A replayed graph reads each learning rate from the tensor it saw at capture: the schedule must write into
    that tensor, never replace it; and an eager resumption gets float learning rates back."""
    agent_class, cfg = tiny("iql", tmp_path, max_timesteps=8)
    agent = agent_class(cfg, 4, 2, 1.0)
    capturable_optimizers(agent)
    groups = agent.optimizer.param_groups
    captured = [g["lr"] for g in groups]
    assert all(isinstance(lr, torch.Tensor) for lr in captured)
    for _ in range(4):
        agent.host_update()
    assert all(g["lr"] is lr for g, lr in zip(groups, captured))
    assert float(captured[2]) == pytest.approx(cfg.actor_lr * 0.5, rel=1e-6)  # cosine at half of max_timesteps
    assert float(captured[0]) == pytest.approx(cfg.vf_lr, rel=1e-6)
    capturable_optimizers(agent, False)
    assert [type(g["lr"]) for g in groups] == [float] * 3 and not any(g["capturable"] for g in groups)


def test_an_eager_run_can_resume_a_graphed_runs_optimizers(make_dataset, tmp_path):
    """A graphed run's checkpoint carries capturable=True optimizer groups; an eager CPU resumption switches them
    off, else Adam's unfused update (used where torch has no fused kernel) refuses to step there."""
    ds = make_dataset(64)
    agent_class, cfg = tiny("td3_bc", tmp_path)

    def unfused(agent):
        agent.actor_optimizer = torch.optim.Adam(agent.actor.parameters(), lr=cfg.actor_lr, foreach=False)
        agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, foreach=False)
        return agent

    agent = unfused(agent_class(cfg, ds.obs_dim, ds.action_dim, 1.0))
    buffer = ReplayBuffer(ds, seed=0)
    agent.update(buffer.sample(16))
    state = agent.state_dict()
    for key in ("actor_optimizer", "critic_optimizer"):
        for group in state[key]["param_groups"]:
            group["capturable"] = True
    resumed = unfused(agent_class(cfg, ds.obs_dim, ds.action_dim, 1.0))
    resumed.load_state_dict(state)
    capturable_optimizers(resumed, False)
    for _ in range(2):
        resumed.update(buffer.sample(16))
    assert resumed.total_it == 3


def test_cuda_graph_option_is_refused_where_it_cannot_run(umaze_registered, tmp_path):
    agent_class, cfg = tiny("td3_bc", tmp_path, device="cpu", cuda_graph=True)
    with pytest.raises(UserError, match="needs a CUDA device"):
        train(cfg, agent_class)
    cql_class, cql_cfg = tiny("cql", tmp_path)
    cql = cql_class(cql_cfg, 4, 2, 1.0)  # its branches follow the update count past bc_steps: no cycle declared
    with pytest.raises(ValueError, match="no CUDA-graph cycle"):
        GraphedUpdates(cql, ReplayBuffer(umaze_registered), 16, capture=False)


# --- evaluation targets ------------------------------------------------------------------------------------
def test_eval_target_comes_from_the_registry_without_data():
    target = eval_target(UMAZE)  # the dataset file does not exist in this test's data folder
    assert target.horizon == 300 and target.entry.score.min == pytest.approx(52.56)
    with pytest.raises(UserError, match="cannot tell which environment"):
        eval_target("no-such-dataset")
    with pytest.raises(UserError, match="missing.npz: file not found"):  # a path, not a registry name
        eval_target("/nowhere/missing.npz")
    with pytest.raises(UserError, match="no evaluation environment"):
        eval_target("maze2d-umaze-dense-v1")  # D4RL's mujoco-py maze2d: registered without an env


class _CountingEnv(gym.Env):
    """A 1-D env whose episode length and rewards follow from its reset seed; counts the steps it is given."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self) -> None:
        self.steps_after_end = 0
        self.calls = 0

    def reset(self, *, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.length, self.t, self.done = int(rng.integers(1, 30)), 0, False
        self.x = float(rng.normal())
        return np.array([self.x]), {}

    def step(self, action):
        self.calls += 1
        self.steps_after_end += self.done
        self.t += 1
        self.x += 0.1 * float(action[0])
        self.done = self.t >= self.length
        return np.array([self.x]), self.x ** 2, self.done and self.t % 2 == 0, self.done and self.t % 2 == 1, {}


def test_episodes_side_by_side_give_the_same_returns_as_one_at_a_time():
    policy_calls = []

    def policy(obs):  # deterministic, row by row: batching cannot change an action
        policy_calls.append(len(obs))
        return np.clip(-obs, -1, 1)

    one = _CountingEnv()
    sequential = run_episodes(one, policy, 9, seed=3)
    lengths = [np.random.default_rng(episode_seed(3, i)).integers(1, 30) for i in range(9)]
    assert one.calls == sum(lengths) == sum(policy_calls) and set(policy_calls) == {1}
    for width in (2, 4, 9, 20):
        envs = [_CountingEnv() for _ in range(width)]
        policy_calls.clear()
        np.testing.assert_array_equal(run_episodes(envs, policy, 9, seed=3), sequential)
        assert sum(e.calls for e in envs) == sum(lengths) == sum(policy_calls)
        assert all(e.steps_after_end == 0 for e in envs)  # a finished episode's env is never stepped again
        assert max(policy_calls) == min(width, 9)  # one policy call per time step for all running episodes
    assert not np.array_equal(run_episodes(one, policy, 9, seed=4), sequential)  # the seed picks the start states


def test_several_policies_run_their_episodes_side_by_side_as_each_alone():
    """run_seed_episodes (a stacked agent's evaluation): policy k's episode i starts where it would alone, from
    episode_seed(seeds[k], i), whatever runs beside it; every time step is one policy call for all policies."""
    gains = (0.5, 1.0, -2.0)  # three different deterministic row-wise policies
    seeds = [3, 4, 3]  # two policies may share an evaluation seed
    alone = [run_episodes(_CountingEnv(), lambda obs, g=g: np.clip(-g * obs, -1, 1), 7, seed=s)
             for g, s in zip(gains, seeds)]
    calls = []

    def policies(obs: list) -> list:
        calls.append([len(o) for o in obs])
        return [np.clip(-g * o, -1, 1) for g, o in zip(gains, obs)]

    for width in (1, 4, 21, 30):
        envs = [_CountingEnv() for _ in range(width)]
        calls.clear()
        together = run_seed_episodes(envs, policies, 7, seeds)
        assert together.shape == (3, 7)
        for k in range(3):
            np.testing.assert_array_equal(together[k], alone[k])
        assert sum(e.calls for e in envs) == sum(map(sum, calls))  # one row per running episode per call
        assert all(e.steps_after_end == 0 for e in envs)
        assert max(map(sum, calls)) == min(width, 21) and all(len(c) == 3 for c in calls)
    assert any(0 in c for c in calls)  # a policy whose episodes are all done is passed no rows, and nothing breaks


def test_maze_returns_do_not_depend_on_how_many_episodes_run_side_by_side():
    target = eval_target(UMAZE)
    goal_seeking = lambda obs: np.clip(-obs[:, :2] - obs[:, 2:], -1, 1)  # noqa: E731 (a deterministic row-wise policy)
    sequential = run_episodes(target.make_env(40), goal_seeking, 6, seed=0)
    side_by_side = run_episodes([target.make_env(40) for _ in range(6)], goal_seeking, 6, seed=0)
    np.testing.assert_array_equal(side_by_side, sequential)
    assert len(set(sequential.tolist())) == 6  # every episode has its own start state
    env = target.make_env(40)
    random_returns = run_episodes([env, target.make_env(40)], random_policy(env, 0), 4, seed=0)
    assert random_returns.shape == (4,) and np.isfinite(random_returns).all()


# --- training on real data: run folder, summary, skip, resume --------------------------------------------
@pytest.mark.slow
def test_training_writes_run_folder_and_summary_then_skips(umaze_registered, tmp_path):
    agent_class, cfg = tiny("td3_bc", tmp_path, summary_last_k=2, max_timesteps=60)
    summary = train(cfg, agent_class)
    out = tmp_path / "runs" / f"td3_bc-{UMAZE}-real-seed0"
    assert Path(summary["run_dir"]) == out == run_dir(cfg, "td3_bc")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt", "config.yaml", "eval.jsonl",
                                                     "metrics.jsonl", "summary.json"]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [20, 40, 60]
    scores = [e["normalized_score"] for e in evals]
    score = eval_target(UMAZE).normalize(np.array([e["return_mean"] for e in evals]))
    np.testing.assert_allclose(scores, score)
    assert summary["final_normalized_score"] == scores[-1]
    assert summary["last_k"] == 2 and summary["last_k_mean_normalized_score"] == pytest.approx(np.mean(scores[-2:]))
    assert summary["best_normalized_score"] == max(scores)
    assert summary["data"]["kind"] == "real"
    assert "computed from: the real dataset" in summary["normalization_statistics"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(10, 61, 10))
    assert json.loads((out / "summary.json").read_text()) == summary
    # the saved config re-parses into the same config
    reparsed = pyrallis.parse(config_class=type(cfg), config_path=str(out / "config.yaml"), args=[])
    assert reparsed == cfg
    # a finished run is skipped: nothing is rewritten
    before = (out / "eval.jsonl").stat().st_mtime_ns
    assert train(cfg, agent_class) == summary
    assert (out / "eval.jsonl").stat().st_mtime_ns == before


def test_training_follows_the_threads_a_sweep_lends(umaze_registered, tmp_path, two_lent_threads, capsys):
    """A sweep's tail lends idle cores by writing a thread count into $PRIVTRANR_THREADS_FILE: the trainer switches
    torch to it at its next log step, and says so in its log."""
    agent_class, cfg = tiny("td3_bc", tmp_path, threads=1)
    train(cfg, agent_class)
    assert torch.get_num_threads() == 2
    assert "now 2 threads" in capsys.readouterr().out
    for unusable in ("", "two", "0"):  # a missing, damaged or zero count changes nothing
        two_lent_threads.write_text(unusable)
        assert follow_lent_threads() is None and torch.get_num_threads() == 2


def test_training_bounds_td3_bc_targets_by_the_training_rewards(umaze_registered, tmp_path):
    agent_class, cfg = tiny("td3_bc", tmp_path, max_timesteps=20, bound_targets=True)
    train(cfg, agent_class)
    state = torch.load(run_dir(cfg, "td3_bc") / "checkpoint.pt", weights_only=False)["agent"]
    expected = return_bounds(float(umaze_registered.rewards.min()), float(umaze_registered.rewards.max()), cfg.discount)
    assert (float(state["target_low"]), float(state["target_high"])) == pytest.approx(expected, rel=1e-6)


def test_maze_policy_probe_tables_a_trained_checkpoint(umaze_registered, tmp_path):
    """benchmarks/maze_policy.py: shares over the maze's free cells, critic values at free cells only."""
    agent_class, cfg = tiny("td3_bc", tmp_path, max_timesteps=20)
    train(cfg, agent_class)
    path = ROOT / "benchmarks" / "maze_policy.py"
    spec = importlib.util.spec_from_file_location("maze_policy", path)
    maze_policy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maze_policy)
    p = maze_policy.probe(run_dir(cfg, "td3_bc") / "checkpoint.pt", episodes=3, horizon=15)
    free = np.asarray(MAZES["umaze"].layout) == 0
    assert p["step"] == 20 and np.array_equal(p["free"], free) and np.array_equal(~np.isnan(p["values"]), free)
    assert p["occupancy"].sum() == pytest.approx(100) and p["ends"].sum() == pytest.approx(100)
    assert p["occupancy"][~free].sum() == 0 and p["ends"][~free].sum() == 0
    assert np.isfinite(p["values"][free]).all()


def test_eval_envs_changes_speed_not_scores(umaze_registered, tmp_path):
    agent_class, cfg = tiny("td3_bc", tmp_path, n_episodes=3)
    one_by_one = train(dataclasses.replace(cfg, eval_envs=1, name="one"), agent_class)
    side_by_side = train(dataclasses.replace(cfg, name="all"), agent_class)  # eval_envs 0: all 3 at once
    # the batched actor may round differently in the last float bit; the start states and updates are the same
    np.testing.assert_allclose(side_by_side["final_return"], one_by_one["final_return"], rtol=1e-4)
    assert one_by_one["evaluation"]["protocol"] == side_by_side["evaluation"]["protocol"] == EVAL_PROTOCOL
    with pytest.raises(UserError, match="--eval_envs"):
        train(dataclasses.replace(cfg, eval_envs=-1, name="bad"), agent_class)


def _dies_on_second_call(monkeypatch, owner: Any, name: str) -> Callable:
    """Make the second call of owner.name (the trainer's evaluate, torch.save) raise KeyboardInterrupt, as a killed
    run would; returns the real function."""
    real, calls = getattr(owner, name), []

    def dies_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, dies_on_second_call)
    return real


def test_killed_run_resumes_from_its_last_checkpoint(umaze_registered, tmp_path, monkeypatch):
    import synther.agents.trainer as trainer

    agent_class, cfg = tiny("iql", tmp_path, max_timesteps=60)
    real_evaluate = _dies_on_second_call(monkeypatch, trainer, "evaluate")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, agent_class)
    out = run_dir(cfg, "iql")
    assert not (out / "summary.json").exists() and (out / "checkpoint.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 20
    monkeypatch.setattr(trainer, "evaluate", real_evaluate)
    summary = train(cfg, agent_class)
    evals = [json.loads(line)["step"] for line in (out / "eval.jsonl").read_text().splitlines()]
    assert evals == [20, 40, 60] and summary["evaluations"] == 3
    metric_steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metric_steps == sorted(set(metric_steps))  # no step logged twice
    # a checkpoint whose curve was scored under another evaluation protocol is not continued
    (out / "summary.json").unlink()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    torch.save({**ckpt, "eval_protocol": "episode-seeds-v1"}, out / "checkpoint.pt")
    with pytest.raises(UserError, match="another protocol"):
        train(cfg, agent_class)
    torch.save(ckpt, out / "checkpoint.pt")
    # a different configuration in the same folder is refused rather than silently mixed
    _, other = tiny("iql", tmp_path, max_timesteps=60, beta=1.0)
    with pytest.raises(UserError, match="different run configuration"):
        train(other, agent_class)


def _run_files(out: Path) -> dict:
    """A run folder's learning curve, losses and final agent state."""
    rows = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]  # noqa: E731
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return {"evals": rows("eval.jsonl"), "metrics": rows("metrics.jsonl"), "ckpt": ckpt}


def _assert_same_run(a: dict, b: dict) -> None:
    """Two runs took the same steps: same curve and losses, same final networks (to float rounding: a stacked
    product may sum in another order than a one-seed one)."""
    for key in ("normalized_score", "return_mean", "step"):
        np.testing.assert_allclose([e[key] for e in a["evals"]], [e[key] for e in b["evals"]], rtol=1e-4)
    for key in a["metrics"][0]:
        np.testing.assert_allclose([m[key] for m in a["metrics"]], [m[key] for m in b["metrics"]], rtol=1e-4)
    flat_a = torch.cat([t.flatten() for m in a["ckpt"]["agent"].values() if isinstance(m, dict)
                        for t in m.values() if isinstance(t, torch.Tensor)])
    flat_b = torch.cat([t.flatten() for m in b["ckpt"]["agent"].values() if isinstance(m, dict)
                        for t in m.values() if isinstance(t, torch.Tensor)])
    torch.testing.assert_close(flat_a, flat_b, rtol=1e-4, atol=1e-5)
    assert torch.equal(a["ckpt"]["buffer_rng"], b["ckpt"]["buffer_rng"])
    assert a["ckpt"]["buffer_cursor"] == b["ckpt"]["buffer_cursor"]
    assert torch.equal(a["ckpt"]["noise_rng"], b["ckpt"]["noise_rng"])


@pytest.mark.parametrize("algorithm", ["td3_bc", "iql"])
def test_stacked_seeds_train_as_each_seed_alone(umaze_registered, tmp_path, algorithm):
    """--stack_seeds 3 trains seeds 1, 2, 3 as one network; each seed's run folder holds what a one-seed run of it
    writes: the same batches, the same target-policy noise, the same updates, curve and checkpoint."""
    agent_class, cfg = tiny(algorithm, tmp_path, seed=1, max_timesteps=60, n_episodes=2)
    stacked = train_seeds(dataclasses.replace(cfg, stack_seeds=3), agent_class)
    runs = []
    for seed, summary in zip((1, 2, 3), stacked):
        alone = train(dataclasses.replace(cfg, seed=seed, checkpoints_path=str(tmp_path / "alone")), agent_class)
        out, alone_out = Path(summary["run_dir"]), Path(alone["run_dir"])
        assert out.name == alone_out.name == f"{algorithm}-{UMAZE}-real-seed{seed}" and out != alone_out
        assert summary["stacked_seeds"] == [1, 2, 3] and alone["stacked_seeds"] is None
        runs.append(_run_files(out))
        _assert_same_run(runs[-1], _run_files(alone_out))
        reparsed = pyrallis.parse(config_class=type(cfg), config_path=str(out / "config.yaml"), args=[])
        assert reparsed == dataclasses.replace(cfg, seed=seed)  # an ordinary one-seed config
    # the seeds are not copies of one another
    assert runs[0]["metrics"][-1] != runs[1]["metrics"][-1] != runs[2]["metrics"][-1]


def test_a_killed_stacked_run_resumes_each_seed_where_it_stopped(umaze_registered, tmp_path, monkeypatch):
    """Killed between two seeds' checkpoints: seed 1 stopped at update 20, seeds 2 and 3 at none; the resumed
    process trains the two groups apart and every seed ends as it would alone."""
    import synther.agents.trainer as trainer

    agent_class, cfg = tiny("td3_bc", tmp_path, seed=1, max_timesteps=60, n_episodes=2)
    real_save = _dies_on_second_call(monkeypatch, trainer.torch, "save")  # the stacked seeds evaluate together
    with pytest.raises(KeyboardInterrupt):
        train_seeds(dataclasses.replace(cfg, stack_seeds=3), agent_class)
    outs = [run_dir(dataclasses.replace(cfg, seed=seed), "td3_bc") for seed in (1, 2, 3)]
    assert [(out / "checkpoint.pt").exists() for out in outs] == [True, False, False]
    monkeypatch.setattr(trainer.torch, "save", real_save)
    summaries = train_seeds(dataclasses.replace(cfg, stack_seeds=3), agent_class)
    assert [s["stacked_seeds"] for s in summaries] == [None, [2, 3], [2, 3]]
    for seed, out in zip((1, 2, 3), outs):
        alone = train(dataclasses.replace(cfg, seed=seed, checkpoints_path=str(tmp_path / "alone")), agent_class)
        _assert_same_run(_run_files(out), _run_files(Path(alone["run_dir"])))
    # finished seeds are skipped, as a one-seed run's are
    assert train_seeds(dataclasses.replace(cfg, stack_seeds=3), agent_class) == summaries


def test_stacked_seeds_each_train_on_their_own_samples(umaze_registered, tmp_path):
    """{seed} in --diffusion.path and --name: seed s reads seed s's samples, with its own state statistics and
    reward bounds, as a one-seed run on that file does."""
    for seed, shift in ((1, 0.5), (2, -0.7)):
        _samples(umaze_registered, tmp_path / f"samples-seed{seed}.npz", shift=shift, reward_factor=seed,
                 scale=seed)
    agent_class, cfg = tiny("td3_bc", tmp_path, seed=1, bound_targets=True, dp_epsilon=10.0,
                            diffusion=DiffusionSource(path=str(tmp_path / "samples-seed{seed}.npz")))
    stacked = train_seeds(dataclasses.replace(cfg, stack_seeds=2, name="mine-{seed}"), agent_class)
    for seed, summary in zip((1, 2), stacked):
        alone = train(seed_config(dataclasses.replace(cfg, checkpoints_path=str(tmp_path / "alone")), seed),
                      agent_class)
        assert Path(summary["run_dir"]).name == f"mine-{seed}"
        assert summary["data"]["path"] == alone["data"]["path"] == str(tmp_path / f"samples-seed{seed}.npz")
        assert summary["normalization"] == alone["normalization"]
        _assert_same_run(_run_files(Path(summary["run_dir"])), _run_files(Path(alone["run_dir"])))
    for statistic in ("state_mean", "state_std"):  # the stacked evaluation normalizes each seed by its own
        assert stacked[0]["normalization"][statistic] != stacked[1]["normalization"][statistic]
    highs = [float(_run_files(Path(s["run_dir"]))["ckpt"]["agent"]["target_high"]) for s in stacked]
    assert highs[1] == pytest.approx(2 * highs[0])  # each seed's TD targets bounded by its own rewards


def test_stack_seeds_is_refused_where_it_cannot_run(umaze_registered, tmp_path):
    agent_class, cfg = tiny("cql", tmp_path, stack_seeds=2)
    with pytest.raises(UserError, match="one seed per process"):
        train_seeds(cfg, agent_class)
    agent_class, cfg = tiny("td3_bc", tmp_path, stack_seeds=2)
    for bad, match in ((dict(name="mine"), "give no --name"), (dict(cuda_graph=True), "--cuda_graph"),
                       (dict(stack_seeds=0), "at least 1")):
        with pytest.raises(UserError, match=match):
            train_seeds(dataclasses.replace(cfg, **bad), agent_class)
    with pytest.raises(UserError, match="train_seeds"):
        train(cfg, agent_class)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("summary.json"))


def test_bf16_multiplies_hidden_layers_in_bf16_and_keeps_outputs_in_fp32():
    torch.manual_seed(0)
    critic = EnsembleMLP(6, 1, 64, 2, members=2)
    x = torch.randn(128, 6) * 3
    exact = critic(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = critic(x)
        one = critic(x, member=1)
    assert mixed.dtype == one.dtype == torch.float32
    spread = (exact - mixed).abs().max() / exact.abs().max()
    assert 0 < spread < 0.05  # bf16 products: rounded, not equal (autocast on), and close (fp32 output layer)
    torch.testing.assert_close(one, mixed[1])


@pytest.mark.parametrize("algorithm", ["td3_bc", "iql"])
def test_bf16_precision_trains_close_to_fp32_and_is_refused_where_untested(umaze_registered, tmp_path, algorithm):
    agent_class, cfg = tiny(algorithm, tmp_path, max_timesteps=60)
    fp32 = _run_files(Path(train(cfg, agent_class)["run_dir"]))
    bf16 = _run_files(Path(train(dataclasses.replace(cfg, precision="bf16", name="bf16"), agent_class)["run_dir"]))
    for key in fp32["metrics"][0]:
        if key == "step":
            continue
        a, b = np.array([m[key] for m in fp32["metrics"]]), np.array([m[key] for m in bf16["metrics"]])
        assert np.isfinite(b).all() and not np.array_equal(a, b)  # the products did change precision
        np.testing.assert_allclose(b, a, rtol=0.1, atol=0.05)  # and the losses follow fp32's
    assert bf16["ckpt"]["config"]["precision"] == "bf16"
    with pytest.raises(UserError, match="--precision"):
        train(dataclasses.replace(cfg, precision="fp16", name="x"), agent_class)
    with pytest.raises(UserError, match="cuda_graph"):
        train(dataclasses.replace(cfg, precision="bf16", cuda_graph=True, name="x"), agent_class)
    cql_class, cql = tiny("cql", tmp_path, precision="bf16")
    with pytest.raises(UserError, match="bf16: td3_bc, iql"):
        train(cql, cql_class)


# --- synthetic data only -----------------------------------------------------------------------------------
def _samples(umaze_data, path: Path, rows: int = 3000, shift: float = 0.5, reward_factor: float = 1.0,
             scale: float = 1.0) -> TransitionDataset:
    """A stand-in for diffusion samples: shuffled rows, scaled and shifted so their statistics differ from the real
    data's."""
    idx = np.random.default_rng(0).permutation(umaze_data.size)[:rows]
    arrays = {k: v[idx] for k, v in umaze_data.arrays().items() if k != "timeouts"}
    arrays["observations"] = arrays["observations"] * scale + shift
    arrays["next_observations"] = arrays["next_observations"] * scale + shift
    arrays["rewards"] = arrays["rewards"] * reward_factor
    ds = TransitionDataset(**arrays, name="synthetic", source=str(path))
    ds.save(path, extra_metadata={"privacy_ledger": {"target_epsilon": 10.0, "guarantee": "(10, 1e-06)-DP (test)"}})
    return ds


def test_diffusion_npz_trains_only_on_samples_and_never_reads_real_data(umaze_data, tmp_path, monkeypatch):
    import synther.agents.data as data

    def no_real_data(*args, **kwargs):
        raise AssertionError("the real dataset was read")

    monkeypatch.setattr(data, "load_dataset", no_real_data)  # and the real file is not in the data folder at all
    samples = _samples(umaze_data, tmp_path / "samples.npz")
    agent_class, cfg = tiny("iql", tmp_path, dp_epsilon=10.0,
                            diffusion=DiffusionSource(path=str(tmp_path / "samples.npz"), sample_limit=2000))
    summary = train(cfg, agent_class)
    assert Path(summary["run_dir"]).name == f"iql-{UMAZE}-eps10-seed0"
    assert summary["data"]["kind"] == "synthetic" and summary["data"]["rows"] == 2000
    assert summary["dp_epsilon"] == 10.0 and "(10, 1e-06)-DP" in summary["privacy_guarantee"]
    note = summary["normalization_statistics"]
    assert "computed from: the synthetic samples" in note and "real dataset was not read" in note
    first = samples.observations[:2000].astype(np.float64)
    np.testing.assert_allclose(summary["normalization"]["state_mean"], first.mean(0), rtol=1e-5)
    np.testing.assert_allclose(summary["normalization"]["state_std"], first.std(0) + 1e-3, rtol=1e-5)
    assert summary["evaluation"]["dataset"] == UMAZE  # scored in the real simulator of --dataset


def test_diffusion_checkpoint_is_sampled_on_the_fly(umaze_data, data_roots, tmp_path):
    from synther.diffusion.synthesizer import DiffusionConfig, pretrain
    from synther.diffusion.trainer import TrainConfig as DiffusionTrainConfig

    # a tiny model "pre-trained" on the umaze data stands in for a DP checkpoint; the agent never reads that data
    umaze_data.subset(np.arange(2000)).save(data_roots["PRIVTRANR_DATA_DIR"] / "public.npz")
    public = str(data_roots["PRIVTRANR_DATA_DIR"] / "public.npz")
    ckpt = pretrain(DiffusionConfig(mode="pretrain", public_datasets=public, run_dir=str(tmp_path / "diffusion"),
                                    width=32, depth=2, progress=False,
                                    train=DiffusionTrainConfig(max_steps=10, batch_size=64, checkpoint_every=10)))
    agent_class, cfg = tiny("td3_bc", tmp_path, max_timesteps=20, diffusion=DiffusionSource(
        path=str(ckpt), sample_limit=300, num_steps=4))
    summary = train(cfg, agent_class)
    assert summary["data"]["format"] == "diffusion checkpoint, sampled on the fly"
    assert summary["data"]["rows"] == 300 and summary["data"]["kind"] == "synthetic"
    assert Path(summary["run_dir"]).name == f"td3_bc-{UMAZE}-synthetic-seed0"
    assert "computed from: the synthetic samples" in summary["normalization_statistics"]
    assert summary["privacy_guarantee"] == "no sensitive data used: nothing to account"


@pytest.mark.parametrize(
    "write, fragments",
    [
        (lambda p: np.savez(p, observations=np.zeros((5, 4))), ("missing field", "'actions'")),
        (lambda p: np.savez(p, observations=np.full((5, 4), np.nan), actions=np.zeros((5, 2)), rewards=np.zeros(5),
                            next_observations=np.zeros((5, 4)), terminals=np.zeros(5)), ("NaN", "'observations'")),
        (lambda p: p.write_bytes(b"not a zip"), ("not an npz file",)),
        (lambda p: np.savez(p, observations=np.zeros((5, 3)), actions=np.zeros((5, 2)), rewards=np.zeros(5),
                            next_observations=np.zeros((5, 3)), terminals=np.zeros(5)),
         ("dimension mismatch", "obs_dim")),
    ],
)
def test_bad_samples_are_clear_user_errors(tmp_path, write, fragments):
    path = tmp_path / "samples.npz"
    write(path)
    agent_class, cfg = tiny("td3_bc", tmp_path)
    cfg = dataclasses.replace(cfg, diffusion=DiffusionSource(path=str(path)))
    with pytest.raises(UserError) as err:
        train(cfg, agent_class)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert str(path) in str(err.value) or "dimension mismatch" in str(err.value)


def test_diffusion_path_kinds(tmp_path):
    with pytest.raises(UserError, match="must be a samples .npz or a diffusion checkpoint"):
        load_training_data(UMAZE, str(tmp_path / "samples.csv"))
    with pytest.raises(UserError, match="diffusion checkpoint not found"):
        load_training_data(UMAZE, str(tmp_path / "checkpoint.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pt"):
        load_training_data(UMAZE, str(tmp_path / "junk.pt"))
    with pytest.raises(UserError, match="sample_limit"):
        load_training_data(UMAZE, str(tmp_path / "x.npz"), sample_limit=0)


def test_config_checks(tmp_path):
    agent_class, cfg = tiny("td3_bc", tmp_path, dp_epsilon=5.0)
    with pytest.raises(UserError, match="needs --diffusion.path"):
        train(cfg, agent_class)
    with pytest.raises(UserError, match="disagree"):
        train(dataclasses.replace(cfg, dp_epsilon=-1.0, env="ptr-maze2d-medium-dense-v0", dataset="other"),
              agent_class)
    with pytest.raises(DatasetError, match="collect_data.py"):  # real data asked for but not generated
        train(dataclasses.replace(cfg, dp_epsilon=-1.0), agent_class)


# --- per-dataset configs -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_yaml_config_loads_into_its_algorithm():
    files = sorted((ROOT / "config" / "agents").glob("*/*.yaml"))
    assert {f.parent.name for f in files} == set(ALGORITHMS) and len(files) >= 25
    for f in files:
        _, config_class = get_algorithm(f.parent.name)
        cfg = pyrallis.parse(config_class=config_class, config_path=str(f), args=[])
        assert cfg.dataset == f.stem and eval_target(cfg.dataset)
    edac_hopper = pyrallis.parse(config_class=get_algorithm("edac")[1],
                                 config_path=str(ROOT / "config/agents/edac/ptr-hopper-medium-replay-v0.yaml"), args=[])
    assert edac_hopper.num_critics == 50  # CORL's per-env setting


def test_defaults_are_corl_defaults():
    defaults = {name: get_algorithm(name)[1]() for name in ALGORITHMS}
    for cfg in defaults.values():
        assert (cfg.batch_size, cfg.discount, cfg.normalize, cfg.max_timesteps) == (256, 0.99, True, 1_000_000)
    td3, iql, cql, awac, edac = (defaults[k] for k in ("td3_bc", "iql", "cql", "awac", "edac"))
    assert (td3.alpha, td3.policy_noise, td3.noise_clip, td3.policy_freq, td3.tau, td3.n_hidden) == (
        2.5, 0.2, 0.5, 2, 0.005, 2)
    assert (iql.iql_tau, iql.beta, iql.actor_lr, iql.n_hidden) == (0.7, 3.0, 3e-4, 2)
    assert (cql.policy_lr, cql.qf_lr, cql.cql_alpha, cql.cql_n_actions, cql.n_hidden) == (3e-5, 3e-4, 10.0, 10, 3)
    assert cql.use_automatic_entropy_tuning and cql.orthogonal_init
    assert (awac.awac_lambda, awac.exp_adv_max, awac.n_hidden) == (pytest.approx(1 / 3), 100.0, 3)
    assert (edac.num_critics, edac.eta, edac.n_hidden) == (10, 1.0, 3)
    assert AgentConfig().device == "auto"


# --- the real task: better than random on a small generated maze ------------------------------------------
# CPU budget, tried over seeds 0-4: 30k generated umaze transitions, 3000 updates, 128-wide networks, γ = 0.97 and
# faster targets (τ) so values propagate within the budget, a greedier actor (α / β = 10). Normalized scores after
# 3000 updates (5 episodes): TD3+BC 49-63, IQL 53-63; a uniform-random policy scores ≈ 0 by construction.
MAZE_BUDGET = {
    "td3_bc": dict(alpha=10.0, tau=0.05),
    "iql": dict(beta=10.0, tau=0.02),
}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(MAZE_BUDGET))
def test_agent_clearly_beats_random_policy_on_generated_umaze(algorithm, umaze_registered, tmp_path):
    agent_class, config_class = get_algorithm(algorithm)
    cfg = config_class(dataset=UMAZE, max_timesteps=3000, eval_freq=3000, n_episodes=10, hidden_dim=128,
                       discount=0.97, checkpoints_path=str(tmp_path), progress=False, save_checkpoints=False,
                       **MAZE_BUDGET[algorithm])
    summary = train(cfg, agent_class)
    target = eval_target(UMAZE)
    env = target.make_env()
    random_score = float(target.normalize(run_episodes(env, random_policy(env, 0), 10, seed=0)).mean())
    agent_score = summary["final_normalized_score"]
    assert agent_score > random_score + 20 and agent_score > 25, (algorithm, agent_score, random_score)
