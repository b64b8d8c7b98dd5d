"""CPU-kernel paths that the family tests do not select on their own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_portable_gemm_fallback_matches_reference() -> None:
    """NATTEN_LIKE_CPU_BLAS=0 forces the vectorised loops used where torch exposes no BLAS: same results, fwd + bwd."""
    script = textwrap.dedent(
        """
        import torch, natten_like
        torch.manual_seed(0)
        q, k, v = (torch.randn(2, 9, 11, 4, 16, requires_grad=True) for _ in range(3))
        args = ((5, 3), (2, 3), (1, 2), (False, True))
        out = natten_like.gna(q, k, v, *args, backend="cpu")
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = natten_like.gna(qd, kd, vd, *args, backend="reference")
        ref_grads = torch.autograd.grad(ref.square().sum(), (qd, kd, vd))
        err = max([(out.double() - ref).abs().max().item()]
                  + [(g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads)])
        print(err)
        """
    )
    env = dict(os.environ, NATTEN_LIKE_CPU_BLAS="0")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-4


def test_fused_and_two_pass_backward_agree_with_reference() -> None:
    """The backward fuses dQ into the dK/dV walk when (batch x KV heads) fill the threads, else runs two passes."""
    script = textwrap.dedent(
        """
        import torch, natten_like
        torch.manual_seed(0)
        errs = []
        for threads in (1, 2):  # 1 thread: fused; 2 threads with one (batch, KV head) unit: two passes
            torch.set_num_threads(threads)
            q = torch.randn(1, 7, 6, 4, 8, requires_grad=True)
            k, v = (torch.randn(1, 7, 6, 1, 8, requires_grad=True) for _ in range(2))
            args = ((3, 4), (1, 2), (2, 1), (True, False))
            out = natten_like.gna(q, k, v, *args, backend="cpu")
            grads = torch.autograd.grad(out.sin().sum(), (q, k, v))
            qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
            ref = natten_like.gna(qd, kd, vd, *args, backend="reference")
            ref_grads = torch.autograd.grad(ref.sin().sum(), (qd, kd, vd))
            errs.append(max((g.double() - r).abs().max().item() for g, r in zip(grads, ref_grads)))
        print(*errs)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    errs = [float(e) for e in result.stdout.split()]
    assert len(errs) == 2 and max(errs) < 1e-4, errs
