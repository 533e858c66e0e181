"""Lifting synthetic locomotion states out of the floor (synther.diffusion.floor) and its use by the sampler."""
import numpy as np
import pytest

from synther.data.dataset import TransitionDataset
from synther.diffusion import Synthesizer
from synther.diffusion.edm import SamplerConfig
from synther.diffusion.floor import PUBLIC_QUANTILE, FloorModel
from synther.diffusion.relabel import fit_public_dynamics
from synther.diffusion.synthesizer import DiffusionConfig, pretrain
from synther.diffusion.trainer import TrainConfig
from synther.errors import UserError


def _rollout_obs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import gymnasium as gym

    env = gym.make("HalfCheetah-v5")
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a = rng.uniform(-1, 1, 6)
        nxt, r, *_ = env.step(a)
        rows.append((obs, a, r, nxt))
        obs = nxt
    o, a, r, o2 = (np.array(v) for v in zip(*rows))
    return o, a, r, o2


def test_lowering_the_root_deepens_the_contacts_by_as_much_and_the_lift_undoes_it_only_where_needed():
    floor = FloorModel("HalfCheetah-v5")
    obs = _rollout_obs(300, seed=0)[0]
    depth = floor.depth(obs)
    touching = np.isfinite(depth)
    assert touching.mean() > 0.5  # a random gait is on the ground most of the time
    sunk = obs.copy()
    sunk[:, 0] -= 0.1
    # the floor is flat: lowering the root by 0.1 deepens every contact by 0.1
    np.testing.assert_allclose(floor.depth(sunk)[touching], depth[touching] - 0.1, atol=1e-9)
    allowed = -0.02
    lifted, lift = floor.lift(sunk, allowed)
    after = floor.depth(lifted)
    assert (after >= allowed - 1e-9).all()
    raised = lift > 0
    np.testing.assert_allclose(after[raised], allowed, atol=1e-9)  # no higher than needed
    np.testing.assert_array_equal(lifted[~raised], sunk[~raised])  # rows deep enough already are left alone
    np.testing.assert_array_equal(lifted[:, 1:], sunk[:, 1:])  # only the root's height moves
    assert floor.allowed_depth(obs) == pytest.approx(np.quantile(depth, PUBLIC_QUANTILE))


def test_the_floor_needs_a_locomotion_environment():
    with pytest.raises(UserError, match="MuJoCo locomotion"):
        FloorModel("PointMaze_UMaze-v3")
    with pytest.raises(UserError, match="not recorded"):
        FloorModel(None)


@pytest.fixture(scope="module")
def cheetah(tmp_path_factory):
    """Two public HalfCheetah datasets (random gaits) and a model pre-trained on them for a few steps."""
    root = tmp_path_factory.mktemp("cheetah")
    names = []
    for seed in (0, 1):
        o, a, r, o2 = _rollout_obs(1200, seed)  # the relabel needs 2,000 public rows
        ds = TransitionDataset(observations=o.astype(np.float32), actions=a.astype(np.float32),
                               rewards=r.astype(np.float32), next_observations=o2.astype(np.float32),
                               terminals=np.zeros(len(o), np.float32), env_id="HalfCheetah-v5",
                               name=f"cheetah-{seed}")
        names.append(str(ds.save(root / f"cheetah-{seed}.npz")))
    cfg = DiffusionConfig(mode="pretrain", run_dir=str(root / "pre"), width=32, depth=2, progress=False,
                          public_datasets=",".join(names),
                          train=TrainConfig(max_steps=20, batch_size=64, log_every=10, checkpoint_every=10))
    return pretrain(cfg), names


def test_sampling_with_floor_public_lifts_sunk_states_before_the_relabel_and_says_so(cheetah, monkeypatch):
    import synther.diffusion.synthesizer as synthesizer
    from synther.data import load_dataset

    checkpoint, names = cheetah
    syn = Synthesizer.load(checkpoint, device="cpu")
    sampler = SamplerConfig(name="euler", steps=4)
    kw = dict(seed=3, identities="none", reward_range="none", saturated_actions="none")
    plain = syn.sample(400, sampler, **kw)
    floor = FloorModel("HalfCheetah-v5")
    public = [load_dataset(n) for n in names]
    allowed = floor.allowed_depth(np.concatenate([ds.observations for ds in public]))
    assert (floor.depth(plain.observations) < allowed - 1e-3).any()  # an untrained model sinks some states
    lifted = syn.sample(400, sampler, floor="public", **kw)
    # s and s′ are the sampled rows with the root raised exactly where the public depth is exceeded
    for key in ("observations", "next_observations"):
        expected, _ = floor.lift(getattr(plain, key), allowed)
        np.testing.assert_allclose(getattr(lifted, key), expected, atol=1e-6)
        assert (floor.depth(getattr(lifted, key)) >= allowed - 1e-5).all()
    for key in ("actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(lifted, key), getattr(plain, key))
    assert "the root raised in" in lifted.provenance["postprocessing"]
    assert "HalfCheetah-v5 model" in lifted.provenance["postprocessing"]
    # with the relabel, s′ and r are the public model's at the RAISED s; the public datasets are read once for both
    loaded = []
    monkeypatch.setattr(synthesizer, "load_dataset", lambda where: loaded.append(where) or load_dataset(where))
    both = syn.sample(400, sampler, floor="public", relabel="public", relabel_steps=30, **kw)
    assert sorted(loaded) == sorted(names)
    model, _ = fit_public_dynamics(public, 30, seed=3)
    next_obs, reward = model.predict(lifted.observations.astype(np.float64), lifted.actions.astype(np.float64))
    np.testing.assert_allclose(both.next_observations, next_obs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both.rewards, reward, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="unknown floor"):
        syn.sample(4, sampler, floor="sensitive")
