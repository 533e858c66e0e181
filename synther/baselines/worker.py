"""Fit one smartnoise-synth synthesizer and sample from it. Runs INSIDE the baselines venv (requirements-baselines.txt).

    python worker.py spec.json      fit + sample as the spec says; writes the output npz and an info JSON
    python worker.py --selfcheck    print library versions and check opacus' per-sample gradients against autograd

This file imports only numpy, pandas, torch/opacus (smartnoise's own dependencies) and snsynth, never synther:
the main environment's packages are not installed here. Input and output are plain files:

    spec.json   {"method", "epsilon", "delta", "seed", "num_samples", "input", "output", "info", "params",
                 "cardinalities" (mst/aim: bins per column) | "lower"/"upper" (GANs: public column bounds)}
    input npz   "data": (N, d) table, bin codes (mst/aim) or continuous values already clipped to the bounds (GANs)
    output npz  "data": (num_samples, d), same encoding
    info JSON   fit/sample time, privacy accounting actually used, library versions

Every transformer handed to smartnoise is built from the spec (public domain / public bounds) and marked fitted
before the sensitive table is seen, so smartnoise never infers categories or bounds from the sensitive data.

Randomness: "seed" is published (samples.json), so nothing a mechanism draws may be replayable from it. Python's
random, numpy's global RNG and torch's global generator (the RNGs smartnoise, mbi and opacus draw from, listed in
MECHANISM_RNGS) are seeded from OS entropy that is never saved, before the fit and again after every library
constructor that resets a seed; "seed" is applied only after the fit, to sampling rows from the fitted model.
"""
import importlib.metadata as md
import json
import math
import random
import secrets
import sys
import time
import warnings

import numpy as np

LIBRARIES = ("smartnoise-synth", "smartnoise-sql", "opacus", "torch", "mbi", "opendp", "numpy", "pandas")
# opacus 0.14's PrivacyEngine default RDP orders; DPCTGAN passes exactly these
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
# Every random draw inside each mechanism (smartnoise-synth 1.0.8, mbi 1.1.0, opacus 0.14.0, opendp 0.14.2) and the
# RNG it comes from. OpenDP samples from its own OS-seeded CSPRNG (OpenSSL RAND_bytes / getrandom), which Python
# cannot seed; every other RNG here is seeded by seed_from_os_entropy().
MECHANISM_RNGS = {
    "mst": "Gaussian marginal measurements: OpenDP's CSPRNG; exponential-mechanism edge selections "
           "(MSTSynthesizer.exponential_mechanism, prng=np.random) and mbi's junction-tree elimination orders: "
           "numpy's global RNG",
    "aim": "Gaussian marginal measurements: OpenDP's CSPRNG; exponential-mechanism selections "
           "(snsynth.utils.exponential_mechanism), any workload subsampling (aim.prng) and mbi's junction-tree "
           "elimination orders: numpy's global RNG",
    "dpctgan": "Poisson batch membership: a numpy Generator on OS entropy; gradient noise (opacus, secure_rng off), "
               "dropout and generator inputs: torch's global generator; opacus' count of noise-only steps at attach "
               "(scipy planck): numpy's global RNG",
    "patectgan": "teacher assignment: a numpy Generator on OS entropy; teacher batches and Laplace vote noise "
                 "(snsynth pate()): numpy's global RNG; dropout and generator inputs: torch's global generator",
}


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def log(msg: str) -> None:
    print(f"[worker] {msg}", flush=True)


# --- randomness ----------------------------------------------------------------------------------------------------
def seed_from_os_entropy() -> None:
    """Seed python's random, numpy's global RNG and torch's global generator from fresh OS entropy (never saved)."""
    import torch

    random.seed(secrets.randbits(256))
    np.random.seed(np.frombuffer(secrets.token_bytes(32), dtype=np.uint32))  # 256 bits into MT19937's init_by_array
    torch.manual_seed(secrets.randbits(64))  # the widest seed torch's CPU generator takes


def seed_for_sampling(seed: int) -> None:
    """Reseed the global RNGs from --seed once the fit is done: drawing rows from the fitted model is post-processing,
    and smartnoise/mbi sample from the same global RNGs the fit drew from."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poisson_batch(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    """Indices of a Poisson-sampled batch: each of the n rows independently with probability q (possibly none)."""
    return np.flatnonzero(rng.random(n) < q)


# --- transformers built from public information only -----------------------------------------------------------
def categorical_transformer(cardinalities):
    """One LabelTransformer per column, fitted on the public domain 0..k-1 (not on the data)."""
    from snsynth.transform.label import LabelTransformer
    from snsynth.transform.table import TableTransformer

    columns = []
    for k in cardinalities:
        t = LabelTransformer(nullable=False)
        t.fit(list(range(int(k))))
        columns.append(t)
    table = TableTransformer(columns)
    assert table.fit_complete and table.cardinality == [int(k) for k in cardinalities]
    return table


def minmax_transformer(lower, upper):
    """One MinMaxTransformer per column with the given public bounds, fitted on those two values only."""
    from snsynth.transform.minmax import MinMaxTransformer
    from snsynth.transform.table import TableTransformer

    columns = []
    for lo, hi in zip(lower, upper):
        t = MinMaxTransformer(lower=float(lo), upper=float(hi), negative=True)
        t.fit([float(lo), float(hi)])
        columns.append(t)
    table = TableTransformer(columns)
    assert table.fit_complete and not table.needs_epsilon
    return table


# --- MST / AIM ---------------------------------------------------------------------------------------------------
def fit_marginal(spec, data):
    from snsynth import Synthesizer

    method, p = spec["method"], spec["params"]
    kwargs = {"epsilon": float(spec["epsilon"]), "delta": float(spec["delta"]), "verbose": bool(p.get("verbose"))}
    if method == "aim":
        kwargs.update(rounds=p.get("rounds") or None, max_model_size=float(p.get("max_model_size", 80)),
                      max_cells=int(p.get("max_cells", 10000)), degree=int(p.get("degree", 2)))
    synth = Synthesizer.create(method, **kwargs)
    transformer = categorical_transformer(spec["cardinalities"])
    t0 = time.time()
    synth.fit(data.astype(np.int64), transformer=transformer)
    fit_s = time.time() - t0
    t0 = time.time()
    seed_for_sampling(int(spec["seed"]))
    out = np.asarray(synth.sample(int(spec["num_samples"])), dtype=np.float64)
    accounting = {"epsilon_spent": float(spec["epsilon"]), "delta": float(spec["delta"]),
                  "accountant": "zCDP: smartnoise converts (ε, δ) to ρ (opendp) and spends all of it on Gaussian "
                                "marginal measurements and exponential-mechanism selections",
                  "mechanism_rngs": MECHANISM_RNGS[method]}
    if method == "aim":
        accounting["rounds"] = kwargs["rounds"] or f"library default (16 x {len(spec['cardinalities'])} columns)"
    return out, fit_s, time.time() - t0, accounting


# --- DP-CTGAN ----------------------------------------------------------------------------------------------------
def dpsgd_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    from opacus import privacy_analysis

    rdp = privacy_analysis.compute_rdp(q, sigma, steps, RDP_ORDERS)
    eps, _ = privacy_analysis.get_privacy_spent(RDP_ORDERS, rdp, delta)
    return float(eps)


def calibrate_sigma(q: float, steps: int, epsilon: float, delta: float) -> float:
    """Smallest noise multiplier (to 0.1%) whose RDP ε after `steps` steps is within the target."""
    lo, hi = 0.2, 1.0
    while dpsgd_epsilon(q, hi, steps, delta) > epsilon:
        hi *= 2
        if hi > 1e4:
            raise ValueError(f"no noise multiplier reaches ε={epsilon} in {steps} steps at rate {q:.4g}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dpsgd_epsilon(q, mid, steps, delta) > epsilon else (lo, mid)
    return hi


def fit_dpctgan(spec, data):
    """DP-CTGAN with Poisson-sampled batches, i.e. with the sampling its RDP accountant assumes.

    smartnoise 1.0.8's train() draws every real batch as `batch_size` rows uniformly with replacement
    (DataSampler.sample_data) and builds fixed-size tensors around it, while opacus' accountant (and our σ
    calibration) is for the sampled Gaussian mechanism: each row joins each batch independently with probability
    q = batch / N. So the loop is re-assembled from smartnoise's parts (generator, discriminator, activations,
    sampling code) with the same steps: a discriminator step on generated rows, one on a real Poisson batch, then a
    generator step. opacus runs in Poisson mode, so each DP step releases (sum of clipped per-row gradients +
    N(0, σ²C²)) / (q·N), normalised by the EXPECTED batch size as the accountant assumes, never by the realized one.
    An empty real batch still takes its step (noise only), so the number of steps never depends on the data.
    """
    import opacus
    import torch
    from torch import nn, optim
    from snsynth.pytorch.nn.ctgan.data_sampler import DataSampler
    from snsynth.pytorch.nn.dpctgan import DPCTGAN, Discriminator, Generator

    p, n = spec["params"], len(data)
    eps, delta = float(spec["epsilon"]), float(spec["delta"])
    batch = min(int(p.get("batch_size", 500)), n - n % 2)  # smartnoise's DPCTGAN requires an even batch size
    epochs = int(p.get("epochs", 10))
    steps_per_epoch = max(n // batch, 1)
    # smartnoise's own stopping rule checks ε only BEFORE each epoch, so the last epoch can overshoot the target;
    # instead σ is calibrated so that all planned optimizer steps (two per iteration: fake and real batch) fit.
    steps = 2 * epochs * steps_per_epoch
    q = batch / n
    sigma = calibrate_sigma(q, steps, eps, delta)
    clip = float(p.get("clip_norm", 1.0))
    log(f"dpctgan: {epochs} epochs x {steps_per_epoch} iterations, expected batch {batch}, q={q:.4g}, σ={sigma:.4g}")
    dims = tuple(int(w) for w in p.get("hidden", [256, 256]))
    emb = int(p.get("embedding_dim", 128))
    model = DPCTGAN(embedding_dim=emb, generator_dim=dims, discriminator_dim=dims, batch_size=batch, pac=1,
                    cuda=False, verbose=False)
    model._transformer = minmax_transformer(spec["lower"], spec["upper"])
    table = torch.from_numpy(np.asarray(model._transformer.transform(data), dtype=np.float32))
    width = model._transformer.output_width
    # no categorical columns, so there is no conditional vector (which would use sensitive category frequencies)
    model._data_sampler = DataSampler(np.zeros((1, width)), model._transformer.transformers)
    assert model._data_sampler.dim_cond_vec() == 0
    generator = Generator(emb, dims, width)
    model._generator = generator
    discriminator = Discriminator(width, dims, "cross_entropy", 1)
    opt_g = optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)
    opt_d = optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)
    engine = opacus.PrivacyEngine(discriminator, batch_size=batch, sample_size=n, alphas=RDP_ORDERS,
                                  noise_multiplier=sigma, max_grad_norm=clip, poisson=True)
    engine.attach(opt_d)
    # Discriminator() resets torch's global seed to 0 and opacus reseeds it from 8 bytes of os.urandom: reseed last
    seed_from_os_entropy()
    rows = np.random.default_rng()  # batch membership: OS entropy, never saved
    bce = nn.BCELoss()
    ones = torch.ones(batch)

    def dp_step(x, label: float) -> None:
        opt_d.zero_grad()
        if len(x):
            bce(discriminator(x).squeeze(-1), torch.full((len(x),), label)).backward()
        else:  # what opacus does for an empty batch: zero gradient, noise only
            for w in discriminator.parameters():
                w.grad = torch.zeros_like(w)
        # dp_step, not step(): step() would add a random number of noise-only steps standing in for the empty
        # batches opacus' own sampler skips; this loop never skips one
        opt_d.dp_step(is_empty=len(x) == 0)

    def fake_batch():
        return model._apply_activate(generator(torch.randn(batch, emb)))

    t0 = time.time()
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            dp_step(fake_batch().detach(), 0.0)
            dp_step(table[poisson_batch(rows, n, q)], 1.0)
            loss_g = bce(discriminator(fake_batch()).squeeze(-1), ones)
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
        log(f"dpctgan: epoch {epoch + 1}/{epochs}, loss G {loss_g.item():.3f}")
    fit_s = time.time() - t0
    spent = dpsgd_epsilon(q, sigma, steps, delta)
    assert spent <= eps * (1 + 1e-9), (spent, eps)
    t0 = time.time()
    seed_for_sampling(int(spec["seed"]))
    out = np.asarray(model.sample(int(spec["num_samples"])), dtype=np.float64)
    accounting = {"epsilon_spent": spent, "delta": delta, "accountant": "RDP (opacus 0.14 privacy_analysis)",
                  "noise_multiplier": sigma, "sample_rate": q, "optimizer_steps": steps, "epochs": epochs,
                  "batch_size": batch, "clip_norm": clip,
                  "batch_sampling": "Poisson: each row joins each real batch independently with probability "
                                    "sample_rate; gradients and noise divided by the expected batch size",
                  "note": "every discriminator step is charged, including the one on generated data only",
                  "mechanism_rngs": MECHANISM_RNGS["dpctgan"]}
    return out, fit_s, time.time() - t0, accounting


# --- PATE-CTGAN (fixed) --------------------------------------------------------------------------------------------
def laplace_rdp(lam: float, alpha: float) -> float:
    """Rényi DP of order alpha of the Laplace mechanism with scale 1/lam on a sensitivity-1 query (Mironov 2017)."""
    a = (alpha / (2 * alpha - 1)) * math.exp((alpha - 1) * lam)
    b = ((alpha - 1) / (2 * alpha - 1)) * math.exp(-alpha * lam)
    return math.log(a + b) / (alpha - 1)


def pate_epsilon(lam: float, queries: int, delta: float) -> float:
    orders = [1.05, 1.1, 1.25, 1.5, 1.75] + list(range(2, 256))
    return min(queries * laplace_rdp(lam, a) + math.log(1 / delta) / (a - 1) for a in orders)


def calibrate_lambda(queries: int, epsilon: float, delta: float) -> float:
    lo, hi = 0.0, 1.0
    while pate_epsilon(hi, queries, delta) < epsilon and hi < 1e3:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pate_epsilon(mid, queries, delta) <= epsilon else (lo, mid)
    if lo == 0.0:
        raise ValueError(f"ε={epsilon} is too small for {queries} PATE queries at δ={delta}")
    return lo


def fit_patectgan(spec, data):
    """PATE-CTGAN with the privacy defects of smartnoise 1.0.8's train() fixed.

    smartnoise builds `teacher_disc = [discriminator for i in range(num_teachers)]` and `student_disc =
    discriminator`: ONE network serves as every teacher and as the student, so the student (and through it the
    generator) is trained directly on all sensitive partitions and the PATE analysis does not apply. Its teacher
    partitions come from np.array_split of the ordered table (adding a row shifts every later partition) and its
    moments accountant is data-dependent (it reads the teachers' vote margins, so the stopping time itself leaks).
    Here: independent teachers, each record assigned to one teacher by an i.i.d. draw, a separate student trained
    only on generated rows and noisy votes, a fixed number of iterations, and the data-INDEPENDENT Rényi bound of
    the Laplace vote mechanism composed over every vote, with the noise calibrated to the target (ε, δ).
    The generator, activation and sampling code are smartnoise's.
    """
    import torch
    from torch import nn, optim
    from snsynth.pytorch.nn.ctgan.data_sampler import DataSampler
    from snsynth.pytorch.nn.patectgan import PATECTGAN, Discriminator, Generator, weights_init
    from snsynth.pytorch.nn.privacy_utils import pate

    p, n = spec["params"], len(data)
    eps, delta = float(spec["epsilon"]), float(spec["delta"])
    batch = int(p.get("batch_size", 500))
    iterations = int(p.get("iterations", 50))
    teacher_iters, student_iters = int(p.get("teacher_iters", 5)), int(p.get("student_iters", 5))
    n_teachers = max(2, n // int(p.get("rows_per_teacher", 1000)))
    queries = iterations * student_iters * batch
    lam = calibrate_lambda(queries, eps, delta)
    log(f"patectgan: {n_teachers} teachers, {iterations} iterations, {queries} votes, Laplace scale {1 / lam:.4g}")

    dims = tuple(int(w) for w in p.get("hidden", [256, 256]))
    emb = int(p.get("embedding_dim", 128))
    model = PATECTGAN(epsilon=eps, delta=delta, batch_size=batch, embedding_dim=emb, generator_dim=dims,
                      discriminator_dim=dims, cuda=False, verbose=False)
    model._transformer = minmax_transformer(spec["lower"], spec["upper"])
    table = np.asarray(model._transformer.transform(data), dtype=np.float64)
    width = model._transformer.output_width
    # no categorical columns, so there is no conditional vector (which would use sensitive category frequencies)
    model.cond_generator = DataSampler(np.zeros((1, width)), model._transformer.transformers)
    assert model.cond_generator.dim_cond_vec() == 0

    # a fresh draw per fit: from a published seed, adding a row would move every later row to another teacher
    owner = np.random.default_rng().integers(n_teachers, size=n)
    parts = [table[owner == i] for i in range(n_teachers)]
    teachers = [Discriminator(width, dims, "cross_entropy", 1) for _ in range(n_teachers)]
    student = Discriminator(width, dims, "cross_entropy", 1)
    seed_from_os_entropy()  # smartnoise's Discriminator() resets torch's global seed to 0
    for d in (*teachers, student):
        d.apply(weights_init)
    generator = Generator(emb, dims, width)
    model._generator = generator
    opt_g = optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6)
    opt_t = [optim.Adam(t.parameters(), lr=2e-4, betas=(0.5, 0.9), weight_decay=1e-6) for t in teachers]
    opt_s = optim.Adam(student.parameters(), lr=2e-4, betas=(0.5, 0.9))
    bce = nn.BCELoss()
    ones, zeros = torch.ones(batch), torch.zeros(batch)

    def fake_batch():
        return model._apply_activate(generator(torch.randn(batch, emb)))

    t0 = time.time()
    for it in range(iterations):
        for _ in range(teacher_iters):
            for teacher, opt, part in zip(teachers, opt_t, parts):
                if len(part) == 0:
                    continue
                real = torch.from_numpy(part[np.random.randint(len(part), size=batch)].astype(np.float32))
                fake = fake_batch().detach()
                loss = bce(teacher(torch.cat([fake, real])).squeeze(-1), torch.cat([zeros, ones]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        for _ in range(student_iters):
            fake = fake_batch().detach()
            labels, _ = pate(fake, teachers, lam)  # Laplace(1/lam) noise on each vote count: the only data access
            loss_s = bce(student(fake).squeeze(-1), labels.float().squeeze(-1))
            opt_s.zero_grad()
            loss_s.backward()
            opt_s.step()
        loss_g = bce(student(fake_batch()).squeeze(-1), ones)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if (it + 1) % max(1, iterations // 10) == 0:
            log(f"patectgan: iteration {it + 1}/{iterations}, loss G {loss_g.item():.3f}, loss S {loss_s.item():.3f}")
    fit_s = time.time() - t0
    t0 = time.time()
    seed_for_sampling(int(spec["seed"]))
    out = np.asarray(model.generate(int(spec["num_samples"])), dtype=np.float64)
    accounting = {"epsilon_spent": pate_epsilon(lam, queries, delta), "delta": delta,
                  "accountant": "RDP of the Laplace mechanism (data-independent), composed over every teacher vote",
                  "laplace_scale": 1 / lam, "votes": queries, "teachers": n_teachers, "iterations": iterations,
                  "teacher_assignment": "i.i.d. uniform per record (add/remove changes one teacher's data)",
                  "fixes": "independent teachers and student; see worker.fit_patectgan docstring",
                  "mechanism_rngs": MECHANISM_RNGS["patectgan"]}
    return out, fit_s, time.time() - t0, accounting


METHODS = {"mst": fit_marginal, "aim": fit_marginal, "dpctgan": fit_dpctgan, "patectgan": fit_patectgan}


def selfcheck() -> dict:
    """opacus 0.14 on this torch: per-sample gradients of smartnoise's discriminator equal autograd's."""
    import opacus
    import torch
    from snsynth.pytorch.nn.dpctgan import Discriminator

    torch.manual_seed(0)
    d = Discriminator(5, (16, 16), "cross_entropy", pac=1)
    for m in d.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # deterministic forward passes, so one-sample passes are comparable
    x = torch.randn(6, 5)
    ref = []
    for i in range(6):
        d.zero_grad()
        torch.nn.BCELoss()(d(x[i:i + 1]).squeeze(-1), torch.ones(1)).backward()
        ref.append(torch.cat([q.grad.flatten() for q in d.parameters()]).clone())
    opt = torch.optim.SGD(d.parameters(), lr=0.0)
    engine = opacus.PrivacyEngine(d, batch_size=6, sample_size=60, alphas=[2.0], noise_multiplier=0.0,
                                  max_grad_norm=1e6)
    engine.attach(opt)
    opt.zero_grad()
    torch.nn.BCELoss()(d(x).squeeze(-1), torch.ones(6)).backward()
    per_sample = torch.cat([q.grad_sample.reshape(6, -1) for q in d.parameters()], 1)
    err = float((per_sample - torch.stack(ref)).abs().max())
    return {"versions": versions(), "opacus_per_sample_grad_max_abs_error": err, "ok": err < 1e-5}


def main(argv: list) -> int:
    if argv[1:] == ["--selfcheck"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = selfcheck()
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        spec = json.load(f)
    seed_from_os_entropy()  # never from spec["seed"]: it is published, and the mechanisms draw from these RNGs
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    data = np.load(spec["input"])["data"]
    log(f"{spec['method']}: fitting on {data.shape[0]} rows x {data.shape[1]} columns at ε={spec['epsilon']}, "
        f"δ={spec['delta']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus 0.14 / mbi deprecation warnings on every step
        out, fit_s, sample_s, accounting = METHODS[spec["method"]](spec, data)
    if out.shape != (int(spec["num_samples"]), data.shape[1]):
        raise RuntimeError(f"sampler returned shape {out.shape}")
    np.savez(spec["output"], data=out)
    info = {"fit_seconds": fit_s, "sample_seconds": sample_s, "accounting": accounting, "versions": versions()}
    with open(spec["info"], "w") as f:
        json.dump(info, f, indent=2)
    log(f"{spec['method']}: fit {fit_s:.1f} s, sample {sample_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
