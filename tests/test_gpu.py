"""Checks only a CUDA machine can make (skipped elsewhere; bench/gpu_check.sh runs them): the GTA term under bf16
autocast, the fused attention kernels, and DistributedDataParallel across GPUs."""
import copy
import subprocess
import sys

import pytest
import torch

from gtaseg.methods import METHODS
from gtaseg.models import create_vit
from gtaseg.objective import Objective

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def objective(arch: str = "vit_small_patch14_dinov2") -> Objective:
    torch.manual_seed(0)
    model = create_vit(arch, 10).cuda().train()
    source = copy.deepcopy(model).eval().requires_grad_(False)
    return Objective(model, METHODS["gta"], source=source, lam=1.0, autocast=torch.bfloat16)


def batch(n: int = 32, size: int = 224):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g).cuda(), (torch.arange(n) % 10).cuda()


def test_gta_term_is_exactly_zero_at_step_0_under_cuda_bf16():
    """The target runs with autograd and the source under inference mode, possibly through other kernels; the
    [cls] rows are fp32 from the same bf16 q and k, so the term is exactly 0 while target = source."""
    loss, terms = objective().loss(*batch())
    assert terms["reg"].item() == 0.0
    loss.backward()


def test_capture_keeps_the_fused_attention_kernels():
    """The capture reads the [cls] row from the qkv projection: the blocks still run fused SDPA (no T×T softmax)."""
    obj = objective()
    images, labels = batch(8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, _ = obj.loss(images, labels)
        loss.backward()
    names = {e.name for e in prof.events()}
    assert any("scaled_dot_product" in n for n in names), sorted(names)[:50]
    assert all(b.attn.fused_attn for b in obj.target.blocks)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_gpus_matches_one_gpu(tmp_path, tiny_folder):
    """torchrun on 2 GPUs with batch 2 × accum 2 per rank against one GPU with batch 8: the same weights."""
    from safetensors.torch import load_file

    from tests.test_distributed import TINY, gtaseg_script, torchrun_env

    multi, single = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", gtaseg_script(),
           "train", "--data", str(tiny_folder), *TINY, "--device", "cuda", "--batch-size", "2", "--accum-steps", "2",
           "--out", str(multi)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=torchrun_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([gtaseg_script(), "train", "--data", str(tiny_folder), *TINY, "--device", "cuda",
                           "--batch-size", "8", "--out", str(single)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(multi / "model.safetensors")), load_file(str(single / "model.safetensors"))
    for name in b:  # bf16 autocast on both: a looser tolerance than the CPU test's
        torch.testing.assert_close(a[name], b[name], atol=1e-3, rtol=0, msg=name)
