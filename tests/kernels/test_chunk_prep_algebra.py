"""The triangular inverse of chunk_prep, emulated on the CPU, and fp64 expectations for its outputs.

chunk_prep uses tensor-core GEMMs and per-thread code, which TileLang's C backend cannot run, so its
algebra is proven here on the CPU: the inverse's pipeline is replayed step for step in float64 (exact:
must equal a triangular solve) and with fp16 rounded at exactly the points where the kernel stores an
fp16 operand (its error must stay small). `prep_expected` gives tmat, pmat and vecs straight from their definitions;
the GPU tests compare the kernel against it.
"""

import pytest
import torch

CHUNK = 64
BLOCK = 16


def _rounder(fp16: bool):
    return (lambda x: x.half().double()) if fp16 else (lambda x: x)


def _diagonal_block_inverses(lower: torch.Tensor) -> torch.Tensor:
    """D: inverses of the 16x16 unit-lower diagonal blocks of I + lower, by column-wise forward substitution."""
    d = torch.zeros_like(lower)
    for b in range(0, CHUNK, BLOCK):
        blk = lower[b:b + BLOCK, b:b + BLOCK]
        x = torch.eye(BLOCK, dtype=lower.dtype)
        for i in range(BLOCK):
            x[i] = x[i] - blk[i, :i] @ x[:i]
        d[b:b + BLOCK, b:b + BLOCK] = x
    return d


def _split(lower: torch.Tensor, fp16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, L_off) as the kernels store them (fp16 when asked)."""
    r = _rounder(fp16)
    block = torch.arange(CHUNK) // BLOCK
    off = torch.where(block[:, None] > block[None, :], lower, torch.zeros_like(lower))
    return r(_diagonal_block_inverses(lower)), r(off)


def inverse_chain(lower: torch.Tensor, *, fp16: bool) -> torch.Tensor:
    """chunk_prep's pipeline: N = D L_off, R = I - N + N^2 - N^3 with N^2 and N^3 from fp16 N, X = R D."""
    r = _rounder(fp16)
    eye = torch.eye(CHUNK, dtype=lower.dtype)
    d, off = _split(lower, fp16)
    n = d @ off
    n_half = r(n)
    n_sq = n_half @ n_half
    return r(eye - n + n_sq + r(-n_sq) @ n_half) @ d


def _gates(g: torch.Tensor, beta: torch.Tensor, a_log, dt_bias) -> tuple[torch.Tensor, torch.Tensor]:
    if a_log is None:
        return g, beta
    return -a_log.exp() * torch.nn.functional.softplus(g + dt_bias), torch.sigmoid(beta)


def prep_expected(
    q: torch.Tensor, k: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, *, scale: float, l2norm: bool,
    a_log: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None, lens: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tmat, pmat [chunks, Hv, 64, 64] and vecs [chunks, Hv, 4, 64] in fp64, from their definitions.

    q, k [ntok, Hk, 128]; g, beta [ntok, Hv] (raw a, b when a_log is given); lens: the packed sequence
    lengths (chunks are numbered sequence by sequence, a sequence's last chunk zero-padded).
    """
    q, k, g, beta = (x.double() for x in (q, k, g, beta))
    if a_log is not None:
        a_log, dt_bias = a_log.double(), dt_bias.double()
    g, beta = _gates(g, beta, a_log, dt_bias)
    group = g.shape[1] // k.shape[1]
    tmats, pmats, vecs = [], [], []
    start = 0
    strict = torch.tril(torch.ones(CHUNK, CHUNK, dtype=torch.bool), -1)
    for length in lens:
        for bos in range(start, start + length, CHUNK):
            n = min(CHUNK, start + length - bos)
            pad = CHUNK - n

            def rows(x: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.pad(x[bos:bos + n], (0, 0) * (x.dim() - 1) + (0, pad))

            qc, kc, gc, bc = rows(q), rows(k), rows(g), rows(beta)
            rk = torch.rsqrt((kc * kc).sum(-1) + 1e-6) if l2norm else torch.ones(kc.shape[:2], dtype=kc.dtype)
            rq = torch.rsqrt((qc * qc).sum(-1) + 1e-6) if l2norm else torch.ones(qc.shape[:2], dtype=qc.dtype)
            gam = gc.cumsum(0)
            valid = (torch.arange(CHUNK) < n).double()
            t_heads, p_heads, v_heads = [], [], []
            for h in range(g.shape[1]):
                hk = h // group
                kn, qn = kc[:, hk] * rk[:, hk, None], qc[:, hk] * rq[:, hk, None]
                decay = torch.exp((gam[:, h, None] - gam[None, :, h]).clamp(max=0))
                lower = torch.where(strict, bc[:, h, None] * (kn @ kn.T) * decay, 0.0)
                eye = torch.eye(CHUNK, dtype=torch.float64)
                t_heads.append(torch.linalg.solve_triangular(eye + lower, torch.diag(bc[:, h]), upper=False))
                p_heads.append(torch.tril(scale * (qn @ kn.T) * decay))
                e, last = torch.exp(gam[:, h]), gam[-1, h]
                v_heads.append(torch.stack([
                    valid * e * rk[:, hk], valid * scale * e * rq[:, hk],
                    valid * torch.exp(last - gam[:, h]) * rk[:, hk], torch.exp(last).expand(CHUNK),
                ]))
            tmats.append(torch.stack(t_heads))
            pmats.append(torch.stack(p_heads))
            vecs.append(torch.stack(v_heads))
        start += length
    return torch.stack(tmats), torch.stack(pmats), torch.stack(vecs)


def _chunk_lower(seed: int, *, decay_rate: float, l2norm: bool = True) -> torch.Tensor:
    """L of one chunk as the kernels build it: beta_r exp(gamma_r - gamma_j) kn_r.kn_j below the diagonal."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(CHUNK, 128, generator=gen, dtype=torch.float64)
    if l2norm:
        k = k / k.norm(dim=-1, keepdim=True)
    beta = torch.rand(CHUNK, generator=gen, dtype=torch.float64)
    gam = (-decay_rate * torch.rand(CHUNK, generator=gen, dtype=torch.float64)).cumsum(0)
    decay = torch.exp(gam[:, None] - gam[None, :])
    return torch.tril(beta[:, None] * (k @ k.T) * decay, -1)


@pytest.mark.parametrize("decay_rate", [0.0, 0.1, 30.0])
def test_inverse_is_exact_in_fp64(decay_rate: float) -> None:
    """Without rounding the pipeline is the exact inverse (N^4 = 0: the series ends)."""
    for seed in range(3):
        lower = _chunk_lower(seed, decay_rate=decay_rate)
        ref = torch.linalg.solve_triangular(torch.eye(CHUNK, dtype=torch.float64) + lower,
                                            torch.eye(CHUNK, dtype=torch.float64), upper=False)
        out = inverse_chain(lower, fp16=False)
        assert (out - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_unnormalised_keys_are_exact_too() -> None:
    """Large entries (keys not normalised, beta * |k|^2 up to ~100) change nothing in exact arithmetic."""
    lower = 0.1 * _chunk_lower(7, decay_rate=0.0, l2norm=False)
    ref = torch.linalg.inv(torch.eye(CHUNK, dtype=torch.float64) + lower)
    out = inverse_chain(lower, fp16=False)
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


@pytest.mark.parametrize("decay_rate", [0.0, 0.05, 1.0])
def test_fp16_rounding_error_is_small(decay_rate: float) -> None:
    """With fp16 operands where the kernel stores them, the inverse stays within 2e-3 of the exact one
    (worst over these seeds: 1.2e-4)."""
    eye = torch.eye(CHUNK, dtype=torch.float64)
    worst = 0.0
    for seed in range(8):
        lower = _chunk_lower(100 + seed, decay_rate=decay_rate)
        ref = torch.linalg.solve_triangular(eye + lower, eye, upper=False)
        out = inverse_chain(lower, fp16=True)
        worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
    assert worst <= 2e-3, f"fp16 inverse off by {worst:.2e}"


def test_expected_outputs_solve_the_chunk_system() -> None:
    """prep_expected's T satisfies (I + L) T = diag(beta), padded rows are inert, P is causal."""
    gen = torch.Generator().manual_seed(3)
    ntok, hk, hv = 100, 1, 2
    q = torch.randn(ntok, hk, 128, generator=gen, dtype=torch.float64)
    k = torch.randn(ntok, hk, 128, generator=gen, dtype=torch.float64)
    g = -0.1 * torch.rand(ntok, hv, generator=gen, dtype=torch.float64)
    beta = torch.rand(ntok, hv, generator=gen, dtype=torch.float64)
    tmat, pmat, vecs = prep_expected(q, k, g, beta, scale=0.1, l2norm=True, lens=[ntok])
    assert tmat.shape == (2, hv, CHUNK, CHUNK) and vecs.shape == (2, hv, 4, CHUNK)
    n_last = ntok - CHUNK
    assert tmat[1, :, n_last:].abs().max() == 0 and tmat[1, :, :, n_last:].abs().max() == 0
    assert vecs[1, :, :3, n_last:].abs().max() == 0
    assert torch.equal(pmat, torch.tril(pmat))
    kn = k[:CHUNK, 0] * torch.rsqrt((k[:CHUNK, 0] ** 2).sum(-1, keepdim=True) + 1e-6)
    gam = g[:CHUNK, 1].cumsum(0)
    lower = torch.tril(beta[:CHUNK, 1, None] * (kn @ kn.T) * torch.exp(gam[:, None] - gam[None, :]), -1)
    residual = (torch.eye(CHUNK, dtype=torch.float64) + lower) @ tmat[0, 1] - torch.diag(beta[:CHUNK, 1])
    assert residual.abs().max() < 1e-12


def test_expected_outputs_drive_the_scan_to_the_reference() -> None:
    """chunk_scan's recurrence on prep_expected's outputs reproduces the reference (their meaning is right)."""
    from qla_agent.kernels import reference

    gen = torch.Generator().manual_seed(5)
    ntok, hk, hv, scale = 150, 1, 2, 0.1
    q = torch.randn(ntok, hk, 128, generator=gen, dtype=torch.float64)
    k = torch.randn(ntok, hk, 128, generator=gen, dtype=torch.float64)
    v = torch.randn(ntok, hv, 128, generator=gen, dtype=torch.float64)
    g, beta = torch.randn(ntok, hv, generator=gen, dtype=torch.float64), torch.randn(ntok, hv, generator=gen)
    a_log, dt_bias = torch.randn(hv, generator=gen), torch.randn(hv, generator=gen)
    tmat, pmat, vecs = prep_expected(q, k, g, beta, scale=scale, l2norm=True, a_log=a_log, dt_bias=dt_bias,
                                     lens=[ntok])
    out = torch.zeros(ntok, hv, 128, dtype=torch.float64)
    for h in range(hv):
        state = torch.zeros(128, 128, dtype=torch.float64)
        for c in range(tmat.shape[0]):
            n = min(CHUNK, ntok - c * CHUNK)
            rows = slice(c * CHUNK, c * CHUNK + n)
            kc, qc, vc = k[rows, h // (hv // hk)], q[rows, h // (hv // hk)], v[rows, h]
            a, o, d, lam = vecs[c, h, 0, :n], vecs[c, h, 1, :n], vecs[c, h, 2, :n], vecs[c, h, 3, 0]
            u = tmat[c, h, :n, :n] @ (vc - a[:, None] * (kc @ state))
            out[rows, h] = o[:, None] * (qc @ state) + pmat[c, h, :n, :n] @ u
            state = lam * state + kc.T @ (d[:, None] * u)
    ref, _ = reference.gdn_chunked(
        q[None], k[None], v[None], g[None], beta[None].double(), scale=scale, use_qk_l2norm=True,
        A_log=a_log.double(), dt_bias=dt_bias.double(),
    )
    assert (out - ref[0]).abs().max() <= 1e-9 * ref.abs().max()
