"""The C kernels of lmft/finetune/excursion.c: the torch path's bits, and a clear fallback where they cannot be built."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess

import pytest
import torch
from torch import Tensor

from lmft.finetune import native
from lmft.finetune import excursion
from lmft.finetune.spsa import loss_at, mezo_step, spsa_grad

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler: the kernels cannot be built here")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A cache of its own (so the library is built here), and neither load's nor the kernels' cache."""
    monkeypatch.setenv("LMFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LMFT_NATIVE", raising=False)
    library = excursion._library  # a test may replace it
    native.load.cache_clear()
    library.cache_clear()
    yield
    native.load.cache_clear()
    library.cache_clear()


def tensors() -> list[Tensor]:
    """Values where the move back loses bits in every way: a random initialisation, values far
    below eps (deltas wider than 16 bits), signed zeros, large values, subnormals, powers of two,
    and lengths that are not multiples of 16 or 32."""
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 2.0**-10, -(2.0**-10), 1e4, -3e7, 1.0, 1e-9, -1e-9] * 7)
    return [torch.randn(3000, generator=g) * 0.02, torch.randn(1, 1001, generator=g) * 1e-7, special,
            torch.randn(50, 41, generator=g) * 30, torch.randn(5, generator=g)]


def bits(params: list[Tensor]) -> list[Tensor]:
    return [p.clone().view(torch.int32) for p in params]


def run(path: str, monkeypatch, fn) -> tuple[list, list[list[Tensor]]]:
    """``fn(params, loss)`` on fresh copies of :func:`tensors` with the kernels on or off: what it
    returns each time, and the parameters' bits at every loss evaluation and at the end."""
    monkeypatch.setenv("LMFT_NATIVE", "1" if path == "native" else "0")
    params, seen = tensors(), []
    weights = [torch.linspace(-1, 1, p.numel()).view_as(p) for p in params]

    def loss() -> Tensor:
        seen.append(bits(params))
        return sum((torch.sin(p) * w).sum() for p, w in zip(params, weights))

    out = [fn(params, loss, i) for i in range(4)]
    return out, seen + [bits(params)]


def same(a: list[list[Tensor]], b: list[list[Tensor]]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for u, v in zip(a, b) for x, y in zip(u, v))


@needs_cc
def test_the_kernels_build_here(fresh):
    assert excursion.kernels() is not None
    assert list((native.cache_dir()).glob("excursion-*.so"))


@needs_cc
@pytest.mark.parametrize("chunk", [excursion.CHUNK, 97])
@pytest.mark.parametrize("rademacher", [False, True])
@pytest.mark.parametrize("eps, n, wd", [(1e-3, 1, 0.0), (1e-1, 3, 0.5)])
def test_mezo_steps_have_the_torch_paths_bits(fresh, monkeypatch, chunk, rademacher, eps, n, wd):
    monkeypatch.setattr("lmft.finetune.excursion.CHUNK", chunk)

    def step(params, loss, i):
        return mezo_step(params, loss, eps=eps, lr=1e-2, weight_decay=wd, seed=7 + 10 * i, n_perturbations=n,
                         rademacher=rademacher)

    out_native, seen_native = run("native", monkeypatch, step)
    assert excursion.kernels() is not None
    out_torch, seen_torch = run("torch", monkeypatch, step)
    assert excursion.kernels() is None
    assert out_native == out_torch
    assert same(seen_native, seen_torch)
    assert max(o["kept_fraction"] for o in out_native) > 0  # the exact restore had work to do


@needs_cc
@pytest.mark.parametrize("rademacher", [False, True])
def test_excursions_restore_the_same_bits(fresh, monkeypatch, rademacher):
    """loss_at and spsa_grad (what FZOO and MeZO-SVRG measure with) end where they began."""
    def measure(params, loss, i):
        start = bits(params)
        got = (loss_at(params, loss, seed=i, scale=(-1) ** i * 1e-2, rademacher=rademacher),
               spsa_grad(params, loss, 1e-3, seed=i))
        assert same([start], [bits(params)])
        return got

    out_native, seen_native = run("native", monkeypatch, measure)
    out_torch, seen_torch = run("torch", monkeypatch, measure)
    assert out_native == out_torch
    assert same(seen_native, seen_torch)


@needs_cc
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX-512 is an x86 extension")
def test_the_portable_compaction_has_the_same_bits(fresh, monkeypatch, tmp_path):
    """Built without AVX-512 (as on CPUs that lack it), the kernels take their branch-free loop."""
    built = tmp_path / "portable.so"
    subprocess.run([shutil.which("cc") or "gcc", *native.FLAGS, "-mno-avx512f", "-o", str(built),
                    str(excursion.SOURCE)], check=True)
    monkeypatch.setattr(excursion, "_library", lambda: excursion.declare(ctypes.CDLL(str(built))))

    def step(params, loss, i):
        return mezo_step(params, loss, eps=1e-3, lr=1e-2, seed=3 + i, rademacher=i % 2 == 1)

    out_native, seen_native = run("native", monkeypatch, step)
    out_torch, seen_torch = run("torch", monkeypatch, step)
    assert out_native == out_torch
    assert same(seen_native, seen_torch)


def test_lmft_native_0_turns_the_kernels_off(fresh, monkeypatch):
    monkeypatch.setenv("LMFT_NATIVE", "0")
    assert excursion.kernels() is None


def test_a_failing_compiler_warns_and_falls_back_to_torch(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")  # exits 1, as a compiler that rejects the source
    with pytest.warns(RuntimeWarning, match="building excursion.c with false failed.*torch path"):
        assert excursion.kernels() is None
    params = [torch.randn(100)]
    before = bits(params)
    mezo_step(params, lambda: params[0].square().sum(), eps=1e-3, lr=0.0, seed=1)
    assert same([before], [bits(params)])


def test_a_missing_compiler_warns(fresh, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CC", raising=False)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert excursion.kernels() is None


@needs_cc
def test_an_unwritable_cache_warns(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LMFT_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="cannot build or load excursion.c"):
        assert excursion.kernels() is None


@needs_cc
def test_a_direction_keeps_its_path_when_lmft_native_changes(fresh, monkeypatch):
    """Kept elements of the torch path are not the kernels' form: a chunk moves back by the path that moved it out."""
    params = tensors()
    before = bits(params)
    chunks = excursion.chunks_of(params)
    scratch = excursion.Scratch(chunks)
    monkeypatch.setenv("LMFT_NATIVE", "0")
    direction = excursion.Direction(chunks, 5, 1e-1)
    direction.walk(scratch, out=1)
    monkeypatch.setenv("LMFT_NATIVE", "1")
    direction.walk(scratch, out=-1)
    direction.walk(scratch)
    assert same([before], [bits(params)])
