"""llmlab's native blocked linear kernel against a float64 product by hand, its layout against the weight it packs, and
its build: cached once per machine (also under concurrent first uses), refused in one line, with oneDNN kept."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmlab.infer import native
from llmlab.infer.prepack import BLOCK, PackedLinear, blocked, prepack

available = native.load("blocked_linear")
needs_kernel = pytest.mark.skipif(not available, reason=f"no native kernel here: "
                                                        f"{native.unavailable_reason('blocked_linear')}")
ROOT = Path(__file__).resolve().parents[2]


def by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias in float64, rounded to float32 once."""
    out = x.double() @ weight.double().T
    return (out if bias is None else out + bias.double()).float()


def test_the_blocked_layout_holds_every_weight_once_with_zero_padding():
    weight = torch.arange(37 * 5, dtype=torch.float32).view(37, 5)
    packed = blocked(weight)
    assert packed.shape == (3, 5, BLOCK) and packed.is_contiguous()
    for out in range(37):
        assert torch.equal(packed[out // BLOCK, :, out % BLOCK], weight[out])
    assert not packed[2, :, 37 - 32:].any()


@needs_kernel
@pytest.mark.parametrize("out_features,in_features", [(1, 1), (16, 8), (37, 5), (100, 64), (768, 3072), (50257, 48)])
@pytest.mark.parametrize("rows", [0, 1, 2, 5, 6, 7, 13, 300])
def test_the_kernel_is_exact_on_small_integers_at_every_tile_edge(out_features, in_features, rows):
    # every product and partial sum is an integer below 2**24, so float32 computes them exactly in any order
    generator = torch.Generator().manual_seed(rows + out_features)
    weight = torch.randint(-3, 4, (out_features, in_features), generator=generator).float()
    bias = torch.randint(-3, 4, (out_features,), generator=generator).float()
    x = torch.randint(-3, 4, (rows, in_features), generator=generator).float()
    for b in (bias, None):
        out = torch.ops.llmlab.blocked_linear(x, blocked(weight), b, out_features)
        assert out.shape == (rows, out_features) and out.dtype == torch.float32
        assert torch.equal(out, by_hand(x, weight, b))


@needs_kernel
@pytest.mark.parametrize("rows", [1, 9])
def test_the_kernel_rounds_like_f_linear_on_real_values(rows):
    torch.manual_seed(rows)
    weight, bias, x = torch.randn(300, 3072), torch.randn(300), torch.randn(rows, 3072)
    exact = by_hand(x, weight, bias)
    ours = (torch.ops.llmlab.blocked_linear(x, blocked(weight), bias, 300) - exact).abs().max()
    theirs = (torch.nn.functional.linear(x, weight, bias) - exact).abs().max()
    assert ours <= 2 * theirs  # float32 sums of 3072 terms, each in its own order (ours in chunks of 128)


@needs_kernel
def test_the_kernel_takes_any_leading_shape_and_non_contiguous_input():
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 24), torch.randn(40)
    x = torch.randn(3, 24, 5).transpose(1, 2)  # [3, 5, 24], not contiguous
    out = torch.ops.llmlab.blocked_linear(x, blocked(weight), bias, 40)
    assert out.shape == (3, 5, 40)
    torch.testing.assert_close(out, by_hand(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_kernel_refuses_mismatched_shapes_in_one_line():
    packed = blocked(torch.randn(20, 8))
    with pytest.raises(RuntimeError, match="input has 7 features, its weight 8"):
        torch.ops.llmlab.blocked_linear(torch.randn(2, 7), packed, None, 20)
    with pytest.raises(RuntimeError, match="out_features does not match"):
        torch.ops.llmlab.blocked_linear(torch.randn(2, 8), packed, None, 33)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.llmlab.blocked_linear(torch.randn(2, 8).double(), packed, None, 20)


@needs_kernel
def test_a_prepacked_float32_layer_uses_the_native_kernel():
    layer = torch.nn.Linear(24, 40)
    prepack(layer)
    assert type(layer) is PackedLinear and not layer.packed_weight().is_mkldnn
    assert layer.packed_weight().shape == (3, 24, BLOCK)


def _in_a_new_process(code: str, cache: Path, **environment) -> subprocess.CompletedProcess:
    """Run code in a fresh Python whose kernel cache is the given folder (a build is per process)."""
    env = {**os.environ, "LLMLAB_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT / "src"), **environment}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


LOAD = ("from llmlab.infer import native; import torch; from llmlab.infer.prepack import prepack; "
        "layer = torch.nn.Linear(8, 8); prepack(layer); print(native.load('blocked_linear'), "
        "layer.packed_weight().is_mkldnn, native.unavailable_reason('blocked_linear'))")


@needs_kernel
def test_concurrent_first_uses_build_the_kernel_once_and_later_ones_reuse_it(tmp_path):
    env = {**os.environ, "LLMLAB_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    first = [subprocess.Popen([sys.executable, "-c", LOAD], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    assert [process.communicate(timeout=600)[0].split()[:2] for process in first] == [["True", "False"]] * 2
    builds = sorted(path.name for path in (tmp_path / "kernels").iterdir())
    assert len(builds) == 2 and builds[0].startswith("blocked_linear-") and builds[1] == "blocked_linear.lock"
    stamp = (tmp_path / "kernels" / builds[0]).stat().st_mtime_ns
    assert _in_a_new_process(LOAD, tmp_path).stdout.split()[:2] == ["True", "False"]
    assert (tmp_path / "kernels" / builds[0]).stat().st_mtime_ns == stamp  # reused, not built again


def test_without_a_working_compiler_the_kernel_is_refused_in_one_line_and_onednn_packs_instead(tmp_path):
    done = _in_a_new_process(LOAD, tmp_path, CXX="no-such-compiler")
    assert done.stdout.startswith("False True no C++ compiler (no-such-compiler) to build llmlab's blocked_linear")
    assert not list(tmp_path.glob("kernels/*.so"))
    done = _in_a_new_process(LOAD, tmp_path, CXX="false")  # a compiler that fails
    assert done.stdout.startswith("False True false could not build llmlab's blocked_linear kernel: no message")
    assert [path.name for path in (tmp_path / "kernels").iterdir()] == ["blocked_linear.lock"]  # no partial build
    done = _in_a_new_process(LOAD, tmp_path, LLMLAB_NATIVE="0")
    assert done.stdout.startswith("False True llmlab's native kernels are turned off (LLMLAB_NATIVE=0)")


@needs_kernel
def test_a_layer_saved_with_the_native_kernel_loads_on_onednn_where_the_kernel_is_off(tmp_path):
    layer = torch.nn.Linear(24, 40)
    prepack(layer, kernel="native")
    torch.save(layer, tmp_path / "layer.pt")
    code = ("import torch; from llmlab.infer.prepack import PackedLinear; torch.set_grad_enabled(False); "
            f"layer = torch.load({str(tmp_path / 'layer.pt')!r}, weights_only=False); x = torch.randn(3, 24); "
            "torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias)); "
            "print(type(layer).__name__, layer.packed_weight().is_mkldnn)")
    done = _in_a_new_process(code, tmp_path, LLMLAB_NATIVE="0")
    assert done.stdout.split() == ["PackedLinear", "True"], done.stderr


def test_large_packed_weights_lie_on_2_mib_aligned_memory_that_outlives_its_mapping_call():
    from llmlab.infer.prepack import HUGE_PAGE, huge_page_empty
    weight = torch.randn(3000, 768)  # 9 MiB: madvised into huge pages where the system has them
    packed = blocked(weight)
    import gc
    gc.collect()
    assert packed.data_ptr() % HUGE_PAGE == 0 and packed.is_contiguous()
    for out in (0, 17, 2999):
        assert torch.equal(packed[out // BLOCK, :, out % BLOCK], weight[out])
    assert not packed[-1, :, 3000 % BLOCK:].any()
    small = huge_page_empty((4, 4), torch.float32)  # below a huge page: ordinary memory
    assert small.shape == (4, 4) and small.dtype == torch.float32
