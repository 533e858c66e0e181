"""The CPU Gaussian-noise kernel: Philox4x32-10 bits as published, Box-Muller on them, a right N(0, 1), counters
never reused, the same numbers on any thread count, and a clean fallback where it cannot be built."""
import ctypes
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from synther.errors import UserError
from synther.privacy import philox
from synther.privacy.dpsgd import GaussianNoise
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


def test_normals_are_box_muller_of_the_philox_bits(kernel):
    gen = PhiloxNormal(kernel, seed=1234)
    batch, blocks = gen.batch, gen.blocks_per_batch
    out = torch.empty(2 * batch)
    gen.fill_(out, 1.0)
    for b in range(2):  # batch b: blocks at counters b·blocks …, cos halves first, then sin halves
        w = philox_words(kernel, blocks, 1234, b * blocks, 0).astype(np.float64)
        u1 = (np.concatenate([w[:, 0], w[:, 1]]) // 256 + 1) / 2**24  # 24-bit uniforms in (0, 1]
        angle = np.concatenate([w[:, 2], w[:, 3]]) // 256 / 2**24 * 2 * np.pi
        radius = np.sqrt(-2 * np.log(u1))
        expected = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
        np.testing.assert_allclose(out[b * batch:(b + 1) * batch].numpy(), expected, rtol=1e-5, atol=2e-6)


def test_draws_are_standard_normal(kernel):
    z = torch.empty(2_000_000)
    PhiloxNormal(kernel, seed=7).fill_(z, 1.0)
    z = z.double().numpy()
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert z.std() == pytest.approx(1.0, abs=3e-3)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.mean(np.abs(z) > 3) == pytest.approx(2 * stats.norm.sf(3), rel=0.05)  # the tails are there
    assert np.abs(z).max() <= np.sqrt(2 * np.log(2**24)) + 1e-4  # 24-bit uniforms, as torch's float normal_
    # neighbours, and the two halves of each Box-Muller pair, are uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.005
    half = PhiloxNormal(kernel).batch // 2
    pairs = z[: len(z) // (2 * half) * 2 * half].reshape(-1, 2, half)
    assert abs(np.corrcoef(pairs[:, 0].ravel() ** 2, pairs[:, 1].ravel() ** 2)[0, 1]) < 0.005


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
    assert "mt19937" in GaussianNoise([p], generator="torch").generator_name
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
