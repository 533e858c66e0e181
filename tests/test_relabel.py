"""The public dynamics model behind `--relabel public`: it learns the physics of the public transitions."""
import numpy as np
import pytest
import torch

from synther.data.dataset import TransitionDataset, TransitionLayout
import synther.diffusion.relabel as relabel
from synther.diffusion.relabel import cached_public_dynamics, fit_public_dynamics, least_disputed, relabel_rows
from synther.errors import UserError


def _physics(s: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A smooth nonlinear system standing in for a robot: s′ and r as functions of (s, a)."""
    s2 = s + 0.1 * np.tanh(s[:, ::-1]) + 0.2 * np.concatenate([a, a[:, :1]], axis=1)
    return s2, s[:, 0] - 0.5 * (a ** 2).sum(axis=1)


def _dataset(rows: int, seed: int, timeouts: bool = False) -> TransitionDataset:
    rng = np.random.default_rng(seed)
    s, a = rng.normal(size=(rows, 3)), rng.uniform(-1, 1, size=(rows, 2))
    s2, r = _physics(s, a)
    t = np.zeros(rows, dtype=np.float32)
    return TransitionDataset(s.astype(np.float32), a.astype(np.float32), r.astype(np.float32), s2.astype(np.float32),
                             t, timeouts=(rng.random(rows) < 0.1).astype(np.float32) if timeouts else None)


def test_the_model_learns_the_public_physics_and_relabels_rows_with_it():
    public = [_dataset(3000, 0), _dataset(3000, 1, timeouts=True)]
    model, fit = fit_public_dynamics(public, steps=1500, seed=0)
    assert fit.rows == 3000 + int((public[1].timeouts == 0).sum())  # timeouts are left out
    assert fit.held_out_nmse_next_obs < 0.02 and fit.held_out_nmse_reward < 0.02
    # fresh (s, a) with wrong s′ and r: relabelling puts the physics' s′ and r there, leaving s, a, terminal alone
    fresh = _dataset(500, 2)
    layout = TransitionLayout(3, 2)
    x = fresh.to_vectors().astype(np.float64)
    x[:, layout.next_obs], x[:, layout.reward], x[:, layout.terminal] = 0.0, 0.0, 1.0
    before = x.copy()
    relabel_rows(x, layout, model)
    want_s2, want_r = _physics(fresh.observations.astype(np.float64), fresh.actions.astype(np.float64))
    nmse = ((x[:, layout.next_obs] - want_s2) ** 2).mean(0) / (want_s2 - fresh.observations).var(0)
    assert nmse.max() < 0.05 and np.mean((x[:, layout.reward] - want_r) ** 2) / want_r.var() < 0.05
    untouched = np.r_[np.arange(layout.reward), layout.terminal]
    np.testing.assert_array_equal(x[:, untouched], before[:, untouched])


def test_ranked_rewards_keep_the_sampled_values_in_the_models_order():
    class Known:  # a model with known predictions
        def predict(self, obs, actions):
            return obs + 1.0, np.sin(3 * obs[:, 0]) + actions[:, 0]

    layout = TransitionLayout(3, 2)
    x = np.random.default_rng(0).normal(size=(400, layout.dim))
    sampled = x[:, layout.reward].copy()
    want_s2, predicted = Known().predict(x[:, layout.obs], x[:, layout.action])
    model_labels = x.copy()
    relabel_rows(model_labels, layout, Known())
    np.testing.assert_array_equal(model_labels[:, layout.reward], predicted)
    relabel_rows(x, layout, Known(), "ranked")
    np.testing.assert_array_equal(x[:, layout.next_obs], want_s2)
    np.testing.assert_array_equal(np.sort(x[:, layout.reward]), np.sort(sampled))  # the sampled values, all of them
    np.testing.assert_array_equal(np.argsort(x[:, layout.reward]), np.argsort(predicted))  # in the model's order
    # ties in the model's rewards keep row order; every sampled value is handed out once
    assert relabel.ranked_rewards(np.zeros(3), np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 2.0, 3.0]


def test_the_fit_is_a_function_of_the_seed_and_leaves_the_global_stream_alone():
    public = [_dataset(2500, 0)]
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a, _ = fit_public_dynamics(public, steps=20, seed=3)
    assert torch.rand(1) == expected_next
    b, _ = fit_public_dynamics(public, steps=20, seed=3)
    c, _ = fit_public_dynamics(public, steps=20, seed=4)
    x = torch.randn(8, 5)
    first = [m.members[0] for m in (a, b, c)]
    assert torch.equal(first[0](x), first[1](x)) and not torch.equal(first[0](x), first[2](x))


def test_a_cached_fit_predicts_as_a_fresh_one_and_is_keyed_by_all_it_depends_on(tmp_path, monkeypatch):
    public = [_dataset(2500, 0)]
    fits = []
    original = relabel.fit_public_dynamics
    monkeypatch.setattr(relabel, "fit_public_dynamics", lambda *a, **k: fits.append(a[1:]) or original(*a, **k))
    x = torch.randn(8, 5)
    fresh, fresh_report = fit_public_dynamics(public, steps=20, seed=3, members=2)
    first, report, reused = cached_public_dynamics(tmp_path, ["abc"], public, 20, 3, members=2)
    again, again_report, reused_again = cached_public_dynamics(tmp_path, ["abc"], public, 20, 3, members=2)
    assert (reused, reused_again) == (False, True) and len(fits) == 1
    assert report == again_report == fresh_report
    for model in (first, again):
        for m, f in zip(model.members, fresh.members):
            assert torch.equal(m(x), f(x))
    # another public dataset, seed, step count, width or ensemble size: another fit
    for sha, steps, seed, members, width in ((["abd"], 20, 3, 2, 256), (["abc"], 21, 3, 2, 256),
                                             (["abc"], 20, 4, 2, 256), (["abc"], 20, 3, 1, 256),
                                             (["abc"], 20, 3, 2, 32)):
        assert not cached_public_dynamics(tmp_path, sha, public, steps, seed, members, width)[2]
    assert len(fits) == 6
    # a damaged cached fit is fitted again and replaced
    for kept in tmp_path.glob("*.pt"):
        kept.write_bytes(b"not a checkpoint")
    assert not cached_public_dynamics(tmp_path, ["abc"], public, 20, 3, members=2)[2]
    assert cached_public_dynamics(tmp_path, ["abc"], public, 20, 3, members=2)[2]


def test_an_ensemble_disagrees_off_the_public_data_and_the_filter_keeps_the_agreed_rows():
    public = [_dataset(3000, 0)]
    ensemble, fit = fit_public_dynamics(public, steps=600, seed=0, members=4)
    single, _ = fit_public_dynamics(public, steps=600, seed=0)
    assert len(ensemble.members) == 4 and fit.held_out_nmse_next_obs < 0.05
    # member 0 is the single model of the same seed; the others start elsewhere
    x = torch.randn(16, 5)
    assert torch.equal(ensemble.members[0](x), single.members[0](x))
    assert not torch.equal(ensemble.members[0](x), ensemble.members[1](x))
    # the labels are the members' mean
    inside = _dataset(400, 3)
    s, a = inside.observations.astype(np.float64), inside.actions.astype(np.float64)
    each = [m.predict(s, a) for m in ensemble.members]
    mean_next, mean_r = ensemble.predict(s, a)
    np.testing.assert_allclose(mean_next, np.mean([e[0] for e in each], axis=0))
    np.testing.assert_allclose(mean_r, np.mean([e[1] for e in each], axis=0))
    # where the public states never go (|s| ≈ 6 standard deviations) the members extrapolate apart
    far = s + 6.0 * np.sign(s)
    on, off = ensemble.disagreement(s, a), ensemble.disagreement(far, a)
    assert np.median(off) > 10 * np.median(on)
    mixed = np.concatenate([on, off])
    kept = least_disputed(mixed, 400)
    assert (kept < 400).mean() > 0.95 and np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(least_disputed(mixed, 900), np.arange(800))
    with pytest.raises(UserError, match="relabel_models must be at least 1"):
        fit_public_dynamics(public, steps=10, seed=0, members=0)


def test_the_width_sets_every_hidden_layer_and_a_wider_model_fits_at_least_as_well():
    public = [_dataset(3000, 0)]
    narrow, narrow_fit = fit_public_dynamics(public, steps=600, seed=0, width=16)
    wide, wide_fit = fit_public_dynamics(public, steps=600, seed=0, width=128)
    for model, width in ((narrow, 16), (wide, 128)):
        hidden = [m.out_features for m in model.members[0].net if isinstance(m, torch.nn.Linear)][:-1]
        assert hidden == [width] * 3
    assert wide_fit.held_out_nmse_next_obs < narrow_fit.held_out_nmse_next_obs
    with pytest.raises(UserError, match="relabel_width must be at least 1"):
        fit_public_dynamics(public, steps=10, seed=0, width=0)


def test_too_few_public_rows_is_a_user_error():
    with pytest.raises(UserError, match="at least 2000 public transitions"):
        fit_public_dynamics([_dataset(1500, 0)], steps=10, seed=0)


def _shifted(rows: int, seed: int) -> TransitionDataset:
    """The same physics where the public data is thin: states around 2.5 instead of 0."""
    ds = _dataset(rows, seed)
    s = ds.observations + 2.5
    s2, r = _physics(s.astype(np.float64), ds.actions.astype(np.float64))
    return TransitionDataset(s, ds.actions, r.astype(np.float32), s2.astype(np.float32), ds.terminals)


def _nmse_next_obs(model, ds: TransitionDataset) -> float:
    s, a = ds.observations.astype(np.float64), ds.actions.astype(np.float64)
    next_obs, _ = model.predict(s, a)
    return float((((next_obs - ds.next_observations) ** 2).mean(0) / (ds.next_observations - s).var(0)).mean())


@pytest.mark.parametrize("private", [True, False])
def test_fine_tuning_on_the_sensitive_rows_corrects_the_public_model_where_it_extrapolates(private):
    from synther.diffusion.relabel import SensitiveFit, finetune_dynamics

    public, _ = fit_public_dynamics([_dataset(3000, 0)], steps=800, seed=0, width=64)
    sensitive, heldout = _shifted(4000, 1), _shifted(1000, 2)
    before = _nmse_next_obs(public.members[0], heldout)
    fit = SensitiveFit(steps=300, batch_size=400, lr=1e-3, **({"noise_multiplier": 1.0, "clip_norm": 1.0,
                                                                 "sample_rate": 0.1} if private else {}))
    tuned = finetune_dynamics(public.members[0], sensitive.to_vectors(), TransitionLayout(3, 2), fit, seed=0,
                              progress=False)
    after = _nmse_next_obs(tuned, heldout)
    assert after < 0.5 * before, (before, after)
    assert tuned.in_mean.equal(public.members[0].in_mean)  # the public standardization is kept
    if private:
        assert fit.z_max is not None and fit.z_max > 9  # the noise generator's cap, for the ledger's tail term


def test_train_layers_fine_tunes_only_the_last_layers_and_still_corrects_the_model():
    from synther.diffusion.relabel import SensitiveFit, finetune_dynamics

    public, _ = fit_public_dynamics([_dataset(3000, 0)], steps=800, seed=0, width=64)
    sensitive, heldout = _shifted(4000, 1), _shifted(1000, 2)
    start = {k: v.clone() for k, v in public.members[0].state_dict().items()}
    before = _nmse_next_obs(public.members[0], heldout)
    fit = SensitiveFit(steps=300, batch_size=400, lr=1e-3, noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1,
                       train_layers=1)
    tuned = finetune_dynamics(public.members[0], sensitive.to_vectors(), TransitionLayout(3, 2), fit, seed=0,
                              progress=False)
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"net.6.weight", "net.6.bias"}  # the output layer only
    assert _nmse_next_obs(tuned, heldout) < 0.8 * before


def test_the_private_fine_tune_draws_its_batches_and_noise_from_os_entropy_not_the_seed():
    from synther.diffusion.relabel import PublicDynamics, SensitiveFit, finetune_dynamics

    x, layout = _shifted(500, 1).to_vectors(), TransitionLayout(3, 2)
    start = PublicDynamics(3, 2, width=16)
    for name in ("in_std", "out_std"):
        getattr(start, name).fill_(1.0)
    runs = []
    for _ in range(2):
        model = PublicDynamics(3, 2, width=16)
        model.load_state_dict(start.state_dict())
        fit = SensitiveFit(steps=3, batch_size=50, lr=1e-2, noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.1)
        runs.append(finetune_dynamics(model, x, layout, fit, seed=7, progress=False).net[0].weight)
    assert not torch.equal(runs[0], runs[1])
