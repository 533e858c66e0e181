"""The CPU Gaussian-noise kernel: Philox4x32-10 bits as published, Box-Muller on them, a right N(0, 1) with its
tail to 9.42σ (and torch's fallback to 8.57σ), counters never reused, the same numbers on any thread count, and a
clean fallback where it cannot be built."""
import ctypes
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from synther.errors import UserError
from synther.privacy import philox
from synther.privacy.dpsgd import TORCH_Z_MAX, GaussianNoise, long_tailed_normal_
from synther.privacy.philox import PhiloxNormal, load_kernel


@pytest.fixture(scope="module")
def kernel():
    lib = load_kernel()
    assert lib is not None, "the Philox kernel did not build (is a C compiler installed?)"
    return lib


def philox_words(kernel, n_blocks: int, key: int, ctr_lo: int, ctr_hi: int) -> np.ndarray:
    out = np.zeros(4 * n_blocks, np.uint32)
    kernel.philox_bits(out.ctypes.data_as(ctypes.c_void_p), n_blocks, key, ctr_lo, ctr_hi)
    return out.reshape(n_blocks, 4)


# Random123's known-answer vectors (its tests/kat_vectors) for Philox4x32-10: counter words, key words, output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_bits_match_the_published_known_answers(kernel, counter, key, expected):
    words = philox_words(kernel, 1, key[0] | key[1] << 32, counter[0] | counter[1] << 32,
                         counter[2] | counter[3] << 32)
    assert tuple(int(w) for w in words[0]) == expected


def box_muller_reference(hi: np.ndarray, lo: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """float64 Box-Muller as the kernel documents it, u1 = (hi·2^32 + lo + 1)·2^-64 and θ = 2π·(top 24 bits of
    angle)/2^24: the cos halves, then the sin halves."""
    u1 = hi.astype(np.float64) * 2.0**-32 + (lo.astype(np.float64) + 1) * 2.0**-64  # one rounding, as in C
    theta = (angle >> 8).astype(np.float64) / 2**24 * 2 * np.pi
    radius = np.sqrt(-2 * np.log(u1))
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)])


def kernel_box_muller(kernel, hi, lo, angle) -> np.ndarray:
    hi, lo, angle = (np.ascontiguousarray(a, np.uint32) for a in (hi, lo, angle))
    out = np.empty(2 * len(hi), np.float32)
    kernel.box_muller_words(*(a.ctypes.data_as(ctypes.c_void_p) for a in (out, hi, lo, angle)), len(hi))
    return out


def test_normals_are_box_muller_of_the_philox_bits(kernel):
    gen = PhiloxNormal(kernel, seed=1234)
    batch, blocks, batches = gen.batch, gen.blocks_per_batch, 100
    pairs = batch // 2
    out = torch.empty(batches * batch)
    gen.fill_(out, 1.0)
    for b in range(batches):  # batch b: blocks at counters b·blocks …, their words word-major, three per pair
        words = philox_words(kernel, blocks, 1234, b * blocks, 0).T.reshape(-1)
        expected = box_muller_reference(words[:pairs], words[pairs: 2 * pairs], words[2 * pairs: 3 * pairs])
        np.testing.assert_allclose(out[b * batch:(b + 1) * batch].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_the_radius_uniform_has_64_bits(kernel):
    """Words no random draw reaches in a test: the smallest uniforms, where the low word decides the radius, and
    the transform's branch points."""
    lo = np.array([0, 1, 2, 1000, 2**31, 2**32 - 1, 0, 0, 2**32 - 1, 12345, 0, 2**32 - 1], np.uint32)
    hi = np.array([0, 0, 0, 0, 0, 0, 1, 2**16, 0xB504F333, 0xB504F334, 2**31, 2**32 - 1], np.uint32)
    for angle in (0, 2**30, 0x12345678, 2**32 - 1):
        got = kernel_box_muller(kernel, hi, lo, np.full(len(hi), angle))
        np.testing.assert_allclose(got, box_muller_reference(hi, lo, np.full(len(hi), angle, np.uint32)),
                                   rtol=1e-6, atol=1e-6)
    # the cap: k = 0 (u1 = 2^-64) at angle 0 gives sqrt(128 ln 2), which Z_MAX must not exceed
    top = kernel_box_muller(kernel, [0], [0], [0])
    assert top[1] == 0 and philox.Z_MAX <= top[0] <= math.sqrt(128 * math.log(2)) + 1e-5


def test_draws_are_standard_normal(kernel):
    z = torch.empty(2_000_000)
    PhiloxNormal(kernel, seed=7).fill_(z, 1.0)
    z = z.double().numpy()
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, abs=3e-3)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.mean(np.abs(z) > 3) == pytest.approx(2 * stats.norm.sf(3), rel=0.05)  # the tails are there
    # neighbours, and the two halves of each Box-Muller pair, are uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.005
    half = PhiloxNormal(kernel).batch // 2
    pairs = z[: len(z) // (2 * half) * 2 * half].reshape(-1, 2, half)
    assert abs(np.corrcoef(pairs[:, 0].ravel() ** 2, pairs[:, 1].ravel() ** 2)[0, 1]) < 0.005


TAIL_DRAWS, TAIL_CHUNK = 10**9, 2**24


def tail_of(draw_chunk) -> tuple[float, int]:
    """max |z| over TAIL_DRAWS draws, and how many exceed 5.8 (the old 24-bit generators stopped at 5.77);
    `draw_chunk()` returns the next TAIL_CHUNK draws."""
    top, beyond = 0.0, 0
    for _ in range(-(-TAIL_DRAWS // TAIL_CHUNK)):
        z = draw_chunk()
        low, high = torch.aminmax(z)  # one pass; counting is slower, so only where the extremes call for it
        chunk_top = max(-low.item(), high.item())
        if chunk_top > 5.8:
            beyond += int((z.abs() > 5.8).sum())
        top = max(top, chunk_top)
    return top, beyond


def assert_untruncated(top: float, beyond: int, cap: float) -> None:
    # a fixed seed makes this deterministic; for N(0, 1), 1e9 draws hold ≈ 6.6 beyond 5.8 (P(none) = 0.1%)
    assert 5.8 < top <= cap
    assert 1 <= beyond <= 20


def test_philox_draws_reach_past_the_old_cap(kernel):
    gen, z = PhiloxNormal(kernel, seed=2024), torch.empty(TAIL_CHUNK)

    def draw_chunk() -> torch.Tensor:
        gen.fill_(z, 1.0)
        return z

    assert_untruncated(*tail_of(draw_chunk), cap=math.sqrt(128 * math.log(2)) + 1e-5)


@pytest.mark.slow
def test_torch_fallback_draws_reach_past_the_old_cap():
    params = [torch.nn.Parameter(torch.zeros(TAIL_CHUNK // 2)) for _ in range(2)]  # one per worker thread
    noise = GaussianNoise(params, workers=2, seed=2024, generator="torch")

    def draw_chunk() -> torch.Tensor:
        noise.fill_(1.0)
        return torch.cat([p.grad for p in params])

    # float64 Box-Muller on a 106-bit radius uniform, cast to float32 (rounding adds < 1e-6)
    assert_untruncated(*tail_of(draw_chunk), cap=math.sqrt(212 * math.log(2)) + 1e-5)


def test_long_tailed_normal_is_box_muller_on_a_106_bit_radius_uniform():
    """What dpsgd.TORCH_Z_MAX rests on: torch.rand's float64 uniforms lie on a 53-bit grid, and two of them make
    the radius uniform u1 = (1 − a) − b·2⁻⁵³, whose smallest value 2⁻¹⁰⁶ gives |z| = √(212 ln 2)."""
    out = torch.empty(4097, dtype=torch.float64)
    long_tailed_normal_(out, 1.0, torch.Generator().manual_seed(5))
    u = torch.rand(3, 2049, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(u * 2**53, torch.round(u * 2**53))
    radius = torch.sqrt(-2 * torch.log((1 - u[0]) - u[1] * 2.0**-53))
    expected = torch.cat([radius * torch.cos(2 * math.pi * u[2]), (radius * torch.sin(2 * math.pi * u[2]))[:2048]])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the extreme words: a = b = 1 − 2⁻⁵³ (the largest uniforms) give exactly u1 = 2⁻¹⁰⁶
    a = torch.tensor(1 - 2.0**-53, dtype=torch.float64)
    assert ((1 - a) - a * 2.0**-53).item() == 2.0**-106
    assert math.sqrt(-2 * math.log(2.0**-106)) >= TORCH_Z_MAX


@pytest.mark.parametrize("generator", ["philox", "torch"])
def test_gaussian_noise_states_its_tail_cap(kernel, generator):
    noise = GaussianNoise([torch.nn.Parameter(torch.zeros(100))], generator=generator)
    assert noise.z_max >= 8.5
    # a lower bound of the cap the generator reaches (see philox.Z_MAX and dpsgd.TORCH_Z_MAX)
    assert noise.z_max <= (math.sqrt(128 * math.log(2)) if generator == "philox" else math.sqrt(212 * math.log(2)))


def test_std_scales_the_draw(kernel):
    unit, scaled = torch.empty(10_000), torch.empty(10_000)
    PhiloxNormal(kernel, seed=3).fill_(unit, 1.0)
    PhiloxNormal(kernel, seed=3).fill_(scaled, 0.25)
    torch.testing.assert_close(scaled, 0.25 * unit)


def test_draws_do_not_depend_on_the_thread_count(kernel):
    n = 3 * PhiloxNormal(kernel).batch + 17
    draws = []
    for threads in (1, 2, 3):
        out = torch.empty(n)
        PhiloxNormal(kernel, seed=11).fill_(out, 1.0, threads=threads)
        draws.append(out)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_every_draw_uses_fresh_counters(kernel):
    gen = PhiloxNormal(kernel, seed=5)
    batch = gen.batch
    first, second = torch.empty(batch + 5), torch.empty(batch)
    gen.fill_(first, 1.0)  # uses two batches' counters, though it keeps only batch + 5 numbers
    gen.fill_(second, 1.0)
    stream = torch.empty(3 * batch)
    PhiloxNormal(kernel, seed=5).fill_(stream, 1.0)
    assert torch.equal(first, stream[: batch + 5])
    assert torch.equal(second, stream[2 * batch:])  # no block of the first draw is used again


def test_unseeded_streams_differ(kernel):
    a, b = torch.empty(1000), torch.empty(1000)
    PhiloxNormal(kernel).fill_(a, 1.0)
    PhiloxNormal(kernel).fill_(b, 1.0)
    assert not torch.equal(a, b)


def test_loading_the_kernel_keeps_torch_denormals(kernel):
    # gcc < 13 links -ffast-math shared libraries with code that sets flush-to-zero for the whole process
    tiny = torch.tensor([1e-40])
    assert (tiny * 1.0).item() > 0


def test_gaussian_noise_uses_the_kernel_on_the_cpu(kernel):
    p = torch.nn.Parameter(torch.zeros(5000))
    assert GaussianNoise([p]).generator_name == philox.GENERATOR_NAME
    assert "mt19937 uniforms, float64 Box-Muller" in GaussianNoise([p], generator="torch").generator_name
    with pytest.raises(UserError, match="unknown noise generator"):
        GaussianNoise([p], generator="mt")


@pytest.fixture
def fresh_kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVTRANR_CACHE", str(tmp_path / "cache"))
    load_kernel.cache_clear()
    yield tmp_path / "cache"
    load_kernel.cache_clear()


def test_kernel_builds_into_the_cache_and_is_reused(fresh_kernel_cache, monkeypatch):
    assert load_kernel() is not None
    built = sorted(fresh_kernel_cache.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # nothing else (objects, temp files) is left
    load_kernel.cache_clear()
    monkeypatch.setattr(philox, "_build", lambda *a: pytest.fail("rebuilt although cached"))
    assert load_kernel() is not None


def test_a_failed_build_falls_back_to_torch(fresh_kernel_cache, tmp_path, monkeypatch):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(philox, "SOURCE", broken)
    with pytest.warns(UserWarning, match="could not build"):
        assert load_kernel() is None
    assert not any(fresh_kernel_cache.iterdir())  # no half-built library left behind
    p = torch.nn.Parameter(torch.zeros(100))
    assert "mt19937" in GaussianNoise([p]).generator_name  # auto falls back
    with pytest.raises(UserError, match="kernel is unavailable"):
        GaussianNoise([p], generator="philox")


def test_no_compiler_falls_back_to_torch(fresh_kernel_cache, monkeypatch):
    monkeypatch.setattr(philox, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert load_kernel() is None
    monkeypatch.setenv("PRIVTRANR_NOISE_KERNEL", "0")
    load_kernel.cache_clear()
    assert load_kernel() is None  # disabled on request, silently


def _vector_variants() -> list[tuple[str, list[str]]]:
    """The kernel's code paths this CPU can run: scalar, AVX2 and whatever -march=native picks (AVX-512 here)."""
    variants = [("native", ["-O3", "-march=native", "-fno-math-errno"])]
    if platform.machine() in ("x86_64", "AMD64"):
        flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
        variants.append(("scalar", ["-O2", "-mno-avx2", "-mno-avx512f"]))
        if " avx2" in flags:
            variants.append(("avx2", ["-O3", "-mavx2", "-mfma", "-mno-avx512f", "-fno-math-errno"]))
    return variants


def test_every_vector_path_draws_the_same_numbers(kernel, tmp_path):
    cc = philox._compiler()
    n, key, counter, nonce = 3 * 2048 + 5, 0x0123456789ABCDEF, 2**32 - 700, 99  # the counter's low word wraps
    draws = {}
    for name, flags in _vector_variants():
        target = tmp_path / f"{name}.so"
        assert philox._build(cc, flags, target) is None
        out = torch.empty(n)
        philox._bind(ctypes.CDLL(str(target))).philox_normal(out.data_ptr(), n, 0.0, 1.0, key, counter, nonce, 1)
        draws[name] = out
    for name, out in draws.items():  # the same bits; the float transform may round differently (FMA or not)
        torch.testing.assert_close(out, draws["native"], rtol=1e-6, atol=1e-6, msg=name)
