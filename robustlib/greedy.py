"""Greedy subset solvers behind Adv-GRAD-MATCH and Adv-GLISTER, on plain tensors (no model, no data).

* :func:`omp` — orthogonal matching pursuit: at most ``budget`` rows of G (n × d) whose weighted sum
  approximates a target, with non-negative weights solved by an active-set NNLS (``_nnls``) on the small
  Gram system of the picked rows (k × k) in float64, whose Cholesky factor is extended row by row.
* :func:`glister_greedy` — greedy (or stochastic-greedy) first-order GLISTER gains against a validation
  gradient, refreshed as picks are made. Its G may be an :class:`OuterRows`: rows g_i = P_i ⊗ H_i kept as their two
  factors (last-layer gradients are such outer products), so each greedy step reads n·(C + F) numbers, not n·C·F.

Tensors in, tensors out, on G's device; only the greedy steps loop in Python. :mod:`robustlib.pruning` turns
scores and gradients of a model into the inputs of these solvers.
"""
from __future__ import annotations

import math

import torch

from .checks import check_int


class OuterRows:
    """An n × (C·F) matrix whose row i is the outer product P_i ⊗ H_i (flattened C-major), kept as P (n × C) and
    H (n × F): ``mv`` and ``rows_sum`` cost n·(C + F) instead of n·C·F, and the matrix is never formed.
    ``log_p`` (optional, n × C): the log-probabilities behind P = p − e_y, which GLISTER's exact refresh needs
    (rebuilt from P in fp32, a log p_y below about −16 is lost)."""

    def __init__(self, P: torch.Tensor, H: torch.Tensor, log_p: torch.Tensor | None = None):
        if P.dim() != 2 or H.dim() != 2 or P.shape[0] != H.shape[0]:
            raise ValueError(f"OuterRows needs P (n × C) and H (n × F) with the same n; got {tuple(P.shape)} and "
                             f"{tuple(H.shape)}")
        self.P, self.H, self.log_p = P, H, log_p
        self.shape = torch.Size((P.shape[0], P.shape[1] * H.shape[1]))
        self.dtype, self.device = P.dtype, P.device

    def rows(self, idx: torch.Tensor) -> "OuterRows":
        """The rows ``idx`` (indices or a mask)."""
        return OuterRows(self.P[idx], self.H[idx], None if self.log_p is None else self.log_p[idx])

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """G v: row i is P_iᵀ V H_i with V = v as a C × F matrix."""
        return ((self.H @ v.reshape(self.P.shape[1], -1).T) * self.P).sum(1)

    def rows_sum(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_{i ∈ idx} g_i (all rows when None) = P[idx]ᵀ H[idx], flattened."""
        P, H = (self.P, self.H) if idx is None else (self.P[idx], self.H[idx])
        return (P.T @ H).flatten()

    def dense(self) -> torch.Tensor:
        return (self.P[:, :, None] * self.H[:, None, :]).flatten(1)


def _check_budget(budget, n: int) -> int:
    if check_int(budget, "budget", 1, "pick at least one row") > n:
        raise ValueError(f"budget {budget} is larger than the number of rows n={n}; use budget ≤ n")
    return int(budget)


def _solve(Q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Q s = b for the small symmetric PSD Q: Cholesky, or the pseudo-inverse when Q is singular."""
    L, info = torch.linalg.cholesky_ex(Q)
    return torch.cholesky_solve(b[:, None], L).squeeze(1) if int(info) == 0 else torch.linalg.pinv(Q) @ b


class _FreeSetSolver:
    """Solves Q[F, F] s = b[F] for the free sets F that an active-set NNLS visits inside OMP.

    Keeps the Cholesky factor of the last F (in the order its indices joined). When F grows by one index — the
    common step, as OMP adds one row at a time — the factor gains one row in O(|F|²) instead of a new O(|F|³)
    factorisation; when F loses one index, the rows after it are refactored from their Schur complement
    (:meth:`_drop`); when it changes otherwise it is refactored. A singular block (the new pivot
    vanishes) falls back to :func:`_solve`. ``Q`` may be replaced by a larger matrix with the same leading
    block (OMP's Gram matrix growing), which keeps the factor valid.
    """

    def __init__(self):
        self._keep([], None)

    def _keep(self, order: list, L: torch.Tensor | None) -> None:
        """The factor L of Q[order, order], and order as a tensor too (indexing with it skips a list conversion)."""
        self.order, self.L = order, L
        self.order_t = torch.tensor(order, dtype=torch.long, device=None if L is None else L.device)

    def solve(self, Q: torch.Tensor, free: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        idx = free.nonzero().squeeze(1).tolist()
        known = set(self.order)
        new = [i for i in idx if i not in known]
        if self.L is not None and len(idx) == len(self.order) + 1 and len(new) == 1:
            j = new[0]
            q = Q[self.order_t, j]
            row = torch.linalg.solve_triangular(self.L, q[:, None], upper=False).squeeze(1)
            pivot = Q[j, j] - row @ row
            if float(pivot) > 1e-12 * float(Q[j, j].abs().clamp_min(1e-300)):
                n = len(self.order)
                L = self.L.new_zeros(n + 1, n + 1)
                L[:n, :n], L[n, :n], L[n, n] = self.L, row, pivot.sqrt()
                self._keep(self.order + [j], L)
                return self._solve_known(b)
        elif self.L is not None and not new and len(idx) == len(self.order):
            return self._solve_known(b)
        elif self.L is not None and not new and len(idx) == len(self.order) - 1:
            if self._drop(Q, (set(self.order) - set(idx)).pop()):   # a weight reached 0: its row leaves the factor
                return self._solve_known(b)
        L, info = torch.linalg.cholesky_ex(Q[idx][:, idx])
        if int(info) != 0:   # singular: no factor to keep
            self._keep([], None)
            out = torch.zeros_like(b)
            out[idx] = _solve(Q[idx][:, idx], b[idx])
            return out
        self._keep(idx, L)
        return self._solve_known(b)

    def _drop(self, Q: torch.Tensor, i: int) -> bool:
        """Remove index i from the factor: rows before it keep theirs, and the trailing block is the Cholesky factor
        of its Schur complement, Q[rest, rest] − L[rest, :p]·L[rest, :p]ᵀ (O((n − p)³) instead of O(n³)). False
        (factor unchanged) when that block is not positive definite in floating point."""
        p = self.order.index(i)
        rest, rest_t = self.order[p + 1:], self.order_t[p + 1:]
        L21 = self.L[p + 1:, :p]
        L22, info = torch.linalg.cholesky_ex(Q[rest_t[:, None], rest_t] - L21 @ L21.T)
        if int(info) != 0:
            return False
        n = len(self.order) - 1
        L = self.L.new_zeros(n, n)
        L[:p, :p], L[p:, :p], L[p:, p:] = self.L[:p, :p], L21, L22
        self._keep(self.order[:p] + rest, L)
        return True

    def _solve_known(self, b: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(b)
        out[self.order_t] = torch.cholesky_solve(b[self.order_t][:, None], self.L).squeeze(1)
        return out


def _nnls(Q: torch.Tensor, b: torch.Tensor, w0: torch.Tensor, solver: _FreeSetSolver | None = None) -> torch.Tensor:
    """argmin_{w ≥ 0} ½wᵀQw − bᵀw (Q = AAᵀ + λI, k×k): Lawson–Hanson active set, warm-started at w0 ≥ 0,
    which must be optimal on its positive set (OMP's previous weights plus a 0): usually one solve.

    Give Q and b in float64: in float32 the rounding of ``b − Qw`` on nearly collinear rows (GRAD-MATCH's
    summed batch gradients) exceeds any fixed tolerance, and the active set cycles — a weight re-enters
    the free set with a gradient that is only rounding, is dropped again, and so on (measured: 35,000
    solves without finishing one selection of 738 groups). A weight dropped in this call therefore
    re-enters only with a gradient above the tolerance of the working precision times ‖b‖∞·k.
    """
    solver = _FreeSetSolver() if solver is None else solver
    k, w, free = len(b), w0.clone(), w0 > 0
    scale = float(b.abs().max().clamp_min(1e-30)) + float(Q.abs().max()) * float(w.abs().sum())
    tol = 64 * k * torch.finfo(b.dtype).eps * scale
    dropped = torch.zeros_like(free)
    for _ in range(3 * k + 10):
        neg_grad = (b - Q @ w).masked_fill(free, -math.inf)
        j = int(neg_grad.argmax())
        if float(neg_grad[j]) <= tol:
            break  # KKT: no weight held at 0 would lower the objective (up to rounding)
        if bool(dropped[j]):
            break  # it left the free set in this call: its gradient is rounding, not progress
        free[j] = True
        for _ in range(k + 1):  # move towards the free-set solution until a weight reaches 0
            s = solver.solve(Q, free, b)
            bad = free & (s <= 0)
            if not bool(bad.any()):
                w = s
                break
            ratio = torch.where(bad, w / (w - s).where(bad, torch.ones_like(w)), math.inf)
            a = int(ratio.argmin())
            w = w + ratio[a].clamp(0, 1) * (s - w)
            w[a] = 0.0
            dropped |= free & (w <= 0)
            free &= w > 0
            w = w.masked_fill(~free, 0.0)
    return w


def omp(G: torch.Tensor, target: torch.Tensor, budget: int, *, positive: bool = True,
        lam: float = 0.0, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal matching pursuit: at most ``budget`` rows of G (n×d) with Σ_i w_i G_i ≈ ``target`` (d).

    Each greedy step picks the unused row most correlated with the residual r = target − Σ_S w_i G_i
    (largest G_i·r when ``positive``, largest |G_i·r| otherwise), then re-solves the weights on the
    support S: min ‖G_Sᵀw − target‖² + λ‖w‖², with w ≥ 0 when ``positive`` (active-set NNLS on the
    |S|×|S| normal equations). Stops early when ‖r‖ ≤ tol·‖target‖ or, when ``positive``, no row
    correlates positively. Returns (indices, weights) on G's device; with ``positive``, rows the NNLS
    set to 0 are dropped. Cost ≈ budget·(n·d + |S|³); use fewer rows (per class, per batch) for large k.
    """
    if G.dim() != 2 or target.shape != (G.shape[1],):
        raise ValueError(f"G must be n×d and target of shape (d,); got {tuple(G.shape)} and {tuple(target.shape)}")
    n, budget = G.shape[0], _check_budget(budget, G.shape[0])
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number ≥ 0 (the ridge weight λ), got {lam!r}")
    if not bool(torch.isfinite(G).all() & torch.isfinite(target).all()):
        raise ValueError("G and target must be finite (NaN/inf gradients: check the model and its inputs)")
    target, used, support = target.to(G.dtype), torch.zeros(n, dtype=torch.bool, device=G.device), []
    f64 = dict(dtype=torch.float64, device=G.device)   # the small |S|×|S| system in float64 (see _nnls)
    Q, b, w = torch.zeros(0, 0, **f64), torch.zeros(0, **f64), torch.zeros(0, **f64)
    GS = torch.empty(budget, G.shape[1], **f64)         # the picked rows, filled in order (no gather per step)
    residual, stop, target64 = target.clone(), tol * float(target.norm()), target.double()
    solver = _FreeSetSolver()   # keeps the free set's Cholesky factor from one greedy step to the next
    for m in range(budget):  # the only Python loop: one greedy step per pick
        corr = G @ residual
        corr = (corr if positive else corr.abs()).masked_fill(used, -math.inf)
        j = int(corr.argmax())
        if float(corr[j]) <= (0.0 if positive else 1e-12 * float(residual.norm())):
            break
        GS[m] = G[j]
        gj = GS[m]
        q = GS[:m] @ gj  # grow the Gram matrix Q = G_S G_Sᵀ + λI by one row and column
        Q = torch.cat([torch.cat([Q, q[:, None]], 1), torch.cat([q, (gj @ gj + lam)[None]])[None]], 0)
        b = torch.cat([b, (gj @ target64)[None]])
        support.append(j)
        used[j] = True
        w = _nnls(Q, b, torch.cat([w, w.new_zeros(1)]), solver) if positive else _solve(Q, b)
        residual = target - (w @ GS[:m + 1]).to(G.dtype)
        if float(residual.norm()) <= stop:
            break
    idx, w = torch.tensor(support, dtype=torch.long, device=G.device), w.to(G.dtype)
    return (idx[w > 0], w[w > 0]) if positive else (idx, w)


def glister_greedy(G: torch.Tensor, g_val: torch.Tensor, budget: int, *, eta: float = 0.1, chunk: int = 1,
                   stochastic: bool = False, delta: float = 0.01,
                   generator: torch.Generator | None = None, valid: OuterRows | None = None,
                   valid_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy first-order GLISTER: ``budget`` rows of G (n×d, a tensor or an :class:`OuterRows`) chosen for their
    gain g_valᵀ g_i.

    After each step the validation gradient is refreshed by a Hessian-free one-step Taylor update:
    ∇L_val(θ − η Σ g_i) ≈ ∇L_val(θ) − η H Σ g_i with H ≈ I, i.e. g_val ← g_val − η·Σ_{picked} g_i,
    which discounts directions already covered. With ``valid`` (the validation split's last-layer gradients as
    :class:`OuterRows`, P = p − e_y and H = [h, 1]) and ``valid_labels``, the refresh is exact for the last layer
    instead, as CORDS computes it: the validation logits moved by the step ΔW = −η Σ_{picked} g_i of the last
    layer, z'_v = log p_v + ΔW H_v, and g_val = mean_v (softmax(z'_v) − e_v) ⊗ H_v, which stays bounded where the
    linear refresh grows with every pick. Each step takes the ``chunk`` best rows, so the Python
    loop runs ceil(budget/chunk) times. ``stochastic``: stochastic greedy (Mirzasoleiman et al. 2015),
    each step scores only a random sample of chunk·(n/budget)·log(1/δ) unused rows.
    """
    if len(G.shape) != 2 or g_val.shape != (G.shape[1],):
        raise ValueError(f"G must be n×d and g_val of shape (d,); got {tuple(G.shape)} and {tuple(g_val.shape)}")
    n, budget = G.shape[0], _check_budget(budget, G.shape[0])
    chunk = check_int(chunk, "chunk", 1, "pick at least one row per greedy step")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    used, g_val, picked, left = torch.zeros(n, dtype=torch.bool, device=G.device), g_val.to(G.dtype), [], budget
    if valid is not None:   # the exact last-layer refresh: the validation logits, moved as picks are made
        if valid_labels is None or valid.shape[1] != G.shape[1] or len(valid_labels) != valid.P.shape[0]:
            raise ValueError("the exact refresh needs valid (OuterRows of the validation split, as wide as G) and "
                             "one label per validation row (valid_labels)")
        onehot = torch.nn.functional.one_hot(valid_labels, valid.P.shape[1]).to(valid.P.dtype)
        log_p = valid.log_p if valid.log_p is not None else (valid.P + onehot).clamp_min(1e-30).log()
        moved = torch.zeros_like(valid.P)
    while left > 0:
        m = min(chunk, left)
        gain = G.mv(g_val).masked_fill(used, -math.inf)
        if stochastic:
            size = min(n, max(m, math.ceil(m * n / budget * math.log(1 / delta))))
            u = torch.rand(n, generator=generator, device=G.device).masked_fill(used, math.inf)
            sample = u.topk(size, largest=False).indices
            sample = sample[~used[sample]]
            gain = torch.full_like(gain, -math.inf).index_copy(0, sample, gain[sample])
        top = gain.topk(m).indices
        used[top] = True
        picked.append(top)
        picked_sum = G.rows_sum(top) if isinstance(G, OuterRows) else G[top].sum(0)
        if valid is None:
            g_val = g_val - eta * picked_sum
        else:
            moved = moved - eta * valid.H @ picked_sum.view(valid.P.shape[1], -1).T
            g_val = ((torch.softmax(log_p + moved, 1) - onehot).T @ valid.H).flatten() / len(valid_labels)
        left -= m
    return torch.cat(picked)


