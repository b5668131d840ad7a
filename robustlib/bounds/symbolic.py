r"""Symbolic intervals (ReluVal / Neurify, as used by MixTrain): every neuron as an affine form of the noise.

With the input ``x = x̂ + e ⊙ δ``, ``δ ∈ [−1, 1]^d``, a neuron is

    z = c + Σ_i A_i δ_i + Σ_j E_j η_j,   η_j ∈ [−1, 1] one error symbol per unstable ReLU,

concretised as ``c ± (Σ_i |A_i| + Σ_j |E_j|)`` (for an L2 ball ``ε‖A_row‖₂`` replaces
``Σ|A_i|``). Affine layers map ``c``, ``A`` and ``E`` linearly; a ReLU with bounds
``[l, u]`` is the identity (``l ≥ 0``), zero (``u ≤ 0``) or, when unstable, the
band ``λz ≤ relu(z) ≤ λ(z − l)`` with ``λ = u/(u − l)``: scale by λ, add ``−λl/2``
to ``c`` and a fresh error term of size ``−λl/2``. Error terms are keyed by the
ReLU that made them, so the branches of a residual network add exactly.

``A`` holds ``d × n`` numbers per sample for a layer of ``n`` neurons, so the
batch runs in chunks sized by a memory budget; without autograd a ReLU scales
coefficients in place when no other live node shares their storage. Three
shortcuts keep the work near, or below, one pass of ``d + 1`` columns: through
convolutions ``A`` is one window of the input per neuron
(:mod:`robustlib.bounds.patches`, ``PATCHES``), a fraction of the ``d`` dense
columns, until a Linear turns it dense or a window would outgrow the input;
before the first ReLU of other networks ``A = s ⊗ J`` stays factored (``s`` the
input's half-widths, ``J`` the Jacobian of the layers so far, shared by the
batch), so its radius is one product ``|s| @ |J|``; and a fresh error term,
one-hot, crosses the next Linear or Conv as a gather from its weights instead
of a pass of its own (``SHORTCUTS``: these two). Error terms that go on through
more convolutions, or a convolution and then a Linear, stay small crops of the neuron grid around their ReLU
(:mod:`robustlib.bounds.crops`, ``CROPS``) instead of dense images of the layer; a Linear reads only the weight
columns of each crop (``CROP_LINEAR``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import crops, patches
from .graph import Plan, margin_spec, walk
from .interval import Box, L2Ball
from .interval import affine as box_affine
from .interval import relu as box_relu
from .ops import Affine


# The two shortcuts above (the factored first layer, the gathers of fresh error terms) switched off: the plain
# passes they replace, for timing them (benchmarks/bench_bounds.py) and checking them (tests/test_bounds_rows.py).
SHORTCUTS = True
# Error terms through convolutions as small crops of the neuron grid, one per term (robustlib.bounds.crops); off:
# each a dense image of its layer through every convolution. Measured like PATCHES ("symbolic, no crops").
CROPS = True
# Crops also for error terms whose next convolution leads to a Linear, which reads only each crop's weight columns
# (crops.linear); off: such terms dense images of the convolution's outputs, through a dense product with the
# Linear's weight. Measured like CROPS ("symbolic, no crops into Linear"). Only for a block of at least
# CROP_LINEAR_TERMS terms in the chunk (batch × terms per sample): below it the crops' extra operations cost more than
# they save. On the 2-core CPU (2026-11-27, bench_bounds at eps 0.01 and 0.1) crops into a Linear were 0.89x and
# 0.92x the dense images' speed at 122 and 315 terms (MNIST_Small and CIFAR_Small, batch 1), 1.00x at 490 and
# 1.1-2.2x from 1,240 terms on.
CROP_LINEAR = True
CROP_LINEAR_TERMS = 512
# ... and only on these device types. On the H200 (benchmarks/results/bounds-cuda.json, 2026-11-27, ε = 0.01, the
# "no crops into Linear" row of the same run) the dense images were 1.2-2.8x faster in 7 of 12 cells (2.0-2.8x on
# MNIST_Large and CIFAR_Large at batch 16 and 128, 1.3-1.4x at batch 1, 1.2x on CIFAR_Small at 16) and within 6% in
# the other five: a GPU's dense product costs little, while the crops' gathers add small kernels.
CROP_LINEAR_DEVICES = ("cpu",)
# Convolutions' input coefficients as one window of the input per neuron (robustlib.bounds.patches); off: d dense
# columns through every convolution. Measured on the 2-core CPU (benchmarks/bench_bounds.py, "symbolic, no windows"):
# 1.8-5.9x faster at every network and batch size there.
PATCHES = True
# ... and on these device types only for a chunk whose dense coefficients (chunk × d × the most neurons of a layer)
# number at least this many: below it the windows' extra small operations cost more than the dense products they
# save. On the H200 (2026-11-27; benchmarks/results/bounds-cuda.json, "no windows" against "no crops" in one run, and
# certified-cuda.json, dense against windows and crops in one run) the dense coefficients were faster at every size up
# to 40 million: bounds of MNIST_Small at batch 1 and 16 (2.5 and 39 million) 1.2x, of MNIST_Large and CIFAR_Small at
# batch 1 (20 and 13 million) 1.7x and 1.2x, a forward + backward of MNIST_Small at batch 8 (20 million) 1.4x, a
# MixTrain epoch of MNIST_Small (k = 5, 12 million) 1.09x. From 101 million on the windows were faster (1.2-3.7x; a full
# symbolic-training epoch of MNIST_Small, 123 million, 1.6x) or level (MNIST_Large's forward + backward at batch 8,
# 157 million), except CIFAR_Large's bounds at batch 1 (101 million), where dense was 1.25x faster.
PATCHES_MIN_DENSE = {"cuda": 50_000_000}
# Crops of fresh error terms (CROPS) on these device types only for a block whose dense images at the convolution's
# output (the chunk's terms × its output neurons) number at least this many; below, dense images. On the H200
# (benchmarks/results/bounds-cuda.json, 2026-11-28 02:37 UTC, the "no crops" row of the same run, ε = 0.01; the block
# sizes counted on a CPU with the same seeds and CUDA's settings) dense images were 1.56x, 1.30x and 1.16x faster at
# 4.6-4.7, 18-19 and 81-87 million (MNIST_Large at batch 1, CIFAR_Large at 1, MNIST_Large at 16), crops 1.22x faster
# at 298-300 and 646-719 million (CIFAR_Large at 16, MNIST_Large at 128). MNIST_Small and CIFAR_Small make no crops
# on CUDA (their terms go on into a Linear), yet their two identical runs differed by up to 1.32x (CIFAR_Small at batch
# 1, 3.7 ms a call): the rule rests mostly on the batch-1 cells of 13-18 ms a call; bench_bounds' "crops at every size"
# rows check it. MixTrain's five points of MNIST_Large on Fashion-MNIST make blocks of 30-34 million at ε = 0.01 and
# 250-360 million at ε = 0.1 (initial weights, counted on the CPU): dense in the ε warm-up, crops at the full ε.
CROPS_MIN_DENSE = {"cuda": 150_000_000}


def _crop_linear(device) -> bool:
    """Whether error-term crops go on into a Linear on ``device`` (``CROP_LINEAR`` and ``CROP_LINEAR_DEVICES``)."""
    return CROP_LINEAR and torch.device(device).type in CROP_LINEAR_DEVICES


@dataclass
class _Diag:
    """Input coefficients that are still diagonal: A[b, d, :] = s[b, d] · onehot(d) (flat order)."""
    s: torch.Tensor   # (B, D)


@dataclass
class _Outer:
    """Input coefficients that are one batch-independent matrix with its rows scaled per sample:
    A[b, d, ...] = s[b, d] · J[d, ...] — the input box through the affine layers before the first ReLU (J their
    Jacobian). Its radius is one product |s| @ |J|; the ReLU that scales its columns materialises it."""
    s: torch.Tensor   # (B, D)
    J: torch.Tensor   # (D, *shape)


@dataclass
class _SparseE:
    """A block of error terms that each still act on one neuron: E[b, k] = vals[b, k] · onehot(idx[b, k]).

    A ReLU layer creates its error terms in this form (one per unstable neuron, padded with zeros
    to the largest count in the batch); elementwise layers and reshapes keep it, the next
    Linear / Conv materialises it by a gather from its weights (``Affine.rows``), other layers by
    gathering columns of their Jacobian when that is cheaper than a dense pass.
    """
    idx: torch.Tensor   # (B, K) flat neuron index
    vals: torch.Tensor  # (B, K)


@dataclass
class _Sym:
    c: torch.Tensor                       # (B, *shape)
    A: object                             # torch.Tensor (B, D, *shape), _Diag or _Outer
    E: dict                               # relu-node name → (B, K, *shape) tensor or _SparseE
    box: Optional[Box] = None            # IBP state run alongside (intersect_interval=True)


def _fold_apply(fn: Callable, t: torch.Tensor) -> torch.Tensor:
    """Apply a batched linear op to a coefficient tensor (B, k, *shape) by folding k into the batch."""
    B, k = t.shape[:2]
    out = fn(t.reshape(B * k, *t.shape[2:]))
    return out.reshape(B, k, *out.shape[1:])


def _storage_ptrs(s) -> list:
    """Storage addresses of a symbolic state's dense coefficient tensors (views share their base's)."""
    if not isinstance(s, _Sym):
        return []
    ts = [s.A.P if isinstance(s.A, patches.Patches) else s.A] + \
        [e.T if isinstance(e, crops.Crops) else e for e in s.E.values()]
    return [t.untyped_storage().data_ptr() for t in ts if isinstance(t, torch.Tensor)]


L1_FORMS = {"abs-sum": lambda t: t.abs().sum(1), "vector_norm": lambda t: torch.linalg.vector_norm(t, 1, dim=1)}


def _l1(t: torch.Tensor) -> torch.Tensor:
    """Σ_k |t[:, k, ...]| in the form faster on ``t``'s device. On the 2-core CPU ``t.abs().sum(1)`` is 3.4× faster
    than ``torch.linalg.vector_norm(t, 1, dim=1)`` on a (1, 784, 16, 14, 14) coefficient tensor (0.41 against
    1.39 ms): the norm reduces over a middle dimension slowly there. On an H100 the norm mostly wins: symbolic
    bounds 1.02–1.6× faster in 22 of 24 (network, batch) cells of two ``bench_bounds.py`` runs (2026-11-26), 0.84
    and 0.96× in the other two (batch 128, whose timings varied 2× between the runs). It reads ``t`` once, where
    ``abs()`` first writes a copy."""
    return L1_FORMS["vector_norm" if t.is_cuda else "abs-sum"](t)


def _materialize(A, shape: tuple) -> torch.Tensor:
    if isinstance(A, torch.Tensor):
        return A
    if isinstance(A, patches.Patches):
        D = patches.dense(A)
        return D.reshape(*D.shape[:2], *shape)
    if isinstance(A, _Outer):
        return A.s.reshape(*A.s.shape, *([1] * len(shape))) * A.J.unsqueeze(0)
    s = A.s
    B, D = s.shape
    return torch.diag_embed(s).reshape(B, D, *shape)


def _dense_e(e, shape: tuple) -> torch.Tensor:
    if isinstance(e, torch.Tensor):
        return e
    if isinstance(e, crops.Crops):
        D = crops.dense(e)
        return D.reshape(*D.shape[:2], *shape)
    B, K = e.idx.shape
    n = math.prod(shape)
    block = torch.zeros(B, K, n, dtype=e.vals.dtype, device=e.vals.device).scatter(
        2, e.idx.unsqueeze(-1), e.vals.unsqueeze(-1))
    return block.reshape(B, K, *shape)


class SymbolicRunner:
    def __init__(self, plan: Plan, l2: bool, jac_budget: int, coefficients: bool = False):
        self.plan, self.l2 = plan, l2
        self.coefficients = coefficients  # also return the margins' input coefficients
        self.jac_budget = jac_budget
        self.jac: dict = {}   # node name → Jacobian of its linear part (n_in, *out), shared by all chunks; also
        #                       (name, "s ⊗ J") → an _Outer's J after that node, (name, "|J|" / "J^2") → its radius map
        self.shapes = {plan.input_name: plan.in_shape, **{n.name: n.shape for n in plan.nodes}}
        # one sample's dense input coefficients at its widest layer (what PATCHES_MIN_DENSE counts)
        self.dense_per_sample = math.prod(plan.in_shape) * max((math.prod(n.shape) for n in plan.nodes), default=1)
        self.index = {n.name: i for i, n in enumerate(plan.nodes)}
        self.consumers: dict = {}
        for n in plan.nodes:
            for i in n.inputs:
                self.consumers.setdefault(i, []).append(n)

    def windows_pay(self, c: torch.Tensor) -> bool:
        """Whether the chunk of centres ``c`` takes convolutions' input coefficients as windows (``PATCHES``; on a
        device type of ``PATCHES_MIN_DENSE`` only for a chunk with at least that many dense coefficients)."""
        return PATCHES and c.shape[0] * self.dense_per_sample >= PATCHES_MIN_DENSE.get(c.device.type, 0)

    def crops_pay(self, name: str, terms: int, device) -> bool:
        """Whether ``terms`` error terms (the chunk's) at the output of node ``name`` should be crops: their dense
        images there number at least ``CROPS_MIN_DENSE`` on ``device``'s type, and the node reaches another
        convolution, or (:func:`_crop_linear` on ``device``, at least ``CROP_LINEAR_TERMS`` terms) a Linear, through
        ReLUs, elementwise maps and reshapes only (crops that go dense at the next layer would only add work)."""
        if terms * math.prod(self.shapes[name]) < CROPS_MIN_DENSE.get(torch.device(device).type, 0):
            return False
        stack, seen, linear = list(self.consumers.get(name, ())), set(), False
        while stack:
            m = stack.pop()
            if m.name in seen:
                continue
            seen.add(m.name)
            if m.kind == "affine" and m.op.conv is not None:
                return True
            if m.kind == "affine" and m.op.matrix is not None:
                linear = True
            elif m.kind == "relu" or (m.kind == "affine" and (m.op.diag is not None or m.op.reshape)):
                stack += self.consumers.get(m.name, ())
        return linear and _crop_linear(device) and terms >= CROP_LINEAR_TERMS

    def jacobian(self, name: str, op: Affine, in_shape: tuple, like: torch.Tensor) -> torch.Tensor:
        J = self.jac.get(name)
        if J is None:
            n = math.prod(in_shape)
            if op.rows is not None and op.rows_fan_in > 16:   # from the weights, cheaper than n one-hot inputs
                J = op.rows(torch.arange(n, device=like.device).unsqueeze(0),
                            torch.ones(1, n, dtype=like.dtype, device=like.device))[0]
            else:
                J = op.lin(torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *in_shape))
            self.jac[name] = J
        return J

    def outer_radius(self, name: str, A: _Outer, shape: tuple) -> torch.Tensor:
        """Σ_d |s_d J_d| = |s| @ |J| (L2: √(s² @ J²)), with |J| (J²) made once per call and node."""
        key = (name, "J^2" if self.l2 else "|J|")
        absJ = self.jac.get(key)
        if absJ is None:
            absJ = self.jac[key] = (A.J * A.J if self.l2 else A.J.abs()).reshape(A.J.shape[0], -1)
        if self.l2:
            return (A.s * A.s).matmul(absJ).sqrt().reshape(-1, *shape)
        return A.s.abs().matmul(absJ).reshape(-1, *shape)

    # concretisation -----------------------------------------------------------------------------
    def radius(self, s: _Sym, shape: tuple, name: str = "") -> torch.Tensor:
        B = s.c.shape[0]
        if isinstance(s.A, _Diag):
            rad = s.A.s.abs().reshape(B, *shape)
        elif isinstance(s.A, _Outer):
            rad = self.outer_radius(name, s.A, shape)
        elif isinstance(s.A, patches.Patches):
            rad = patches.radius(s.A, self.l2).reshape(B, *shape)
        else:  # ‖A_row‖₁ for the box (δ ∈ [−1, 1]^d), ‖A_row‖₂ for the L2 ball (dual norms)
            rad = torch.linalg.vector_norm(s.A, 2, dim=1) if self.l2 else _l1(s.A)
        for e in s.E.values():
            if isinstance(e, _SparseE):
                rad = rad.reshape(B, -1).scatter_add(1, e.idx, e.vals.abs()).reshape(B, *shape)
            elif isinstance(e, crops.Crops):
                rad = rad + crops.radius(e).reshape(B, *shape)
            else:
                rad = rad + _l1(e)
        return rad

    def bounds(self, s: _Sym, shape: tuple, name: str = ""):
        rad = self.radius(s, shape, name)
        lo, hi = s.c - rad, s.c + rad
        if s.box is not None:
            lo = torch.maximum(lo, s.box.c - s.box.r)
            hi = torch.minimum(hi, s.box.c + s.box.r)
        return lo, hi

    # layers -------------------------------------------------------------------------------------
    def affine(self, name: str, op: Affine, s: _Sym, in_shape: tuple) -> _Sym:
        c = op.full(s.c)
        n_in = math.prod(in_shape)
        d_flat = None
        if op.diag is not None:
            d_flat = op.diag.to(s.c)
            d_flat = d_flat.expand(in_shape).reshape(1, -1) if d_flat.ndim else d_flat
        if isinstance(s.A, _Diag):
            if op.reshape:
                A = s.A
            elif d_flat is not None:
                A = _Diag(s.A.s * d_flat)
            elif op.conv is not None and self.windows_pay(s.c):     # one window of the input per neuron
                A = patches.from_diag(s.A.s, in_shape, *op.conv, self.shapes[name])
            else:
                A = _Outer(s.A.s, self.jacobian(name, op, in_shape, s.c))   # J: (D, *out), batch independent
                A = A if SHORTCUTS else _materialize(A, self.shapes[name])
        elif isinstance(s.A, _Outer):   # lin(s ⊗ J) = s ⊗ lin(J): one pass for the whole chunk
            J = self.jac.get((name, "s ⊗ J"))
            if J is None:
                J = self.jac[name, "s ⊗ J"] = op.lin(s.A.J)
            A = _Outer(s.A.s, J)
        elif isinstance(s.A, patches.Patches):
            A = self.patch_affine(name, op, s.A, in_shape, d_flat)
        else:
            A = _fold_apply(op.lin, s.A)
        E = {}
        for k, e in s.E.items():
            if isinstance(e, crops.Crops):
                E[k] = self.crop_affine(name, op, e, in_shape, d_flat)
            elif not isinstance(e, _SparseE):
                E[k] = _fold_apply(op.lin, e)
            elif op.reshape:
                E[k] = e
            elif d_flat is not None:
                E[k] = _SparseE(e.idx, e.vals * (d_flat.expand(1, n_in)[0][e.idx] if d_flat.ndim else d_flat))
            elif op.conv is not None and CROPS and self.crops_pay(name, e.idx.numel(), e.idx.device) and \
                    crops.worth_a_conv((1, 1), op.conv[0], op.conv[1], self.shapes[name]):
                E[k] = crops.from_sparse(e.idx, e.vals.to(s.c.dtype), in_shape, *op.conv, self.shapes[name])
            elif op.rows is not None and SHORTCUTS:   # the images of one-hot inputs, straight from the weights
                E[k] = op.rows(e.idx, e.vals.to(s.c.dtype))
            else:
                B, K = e.idx.shape
                out_numel = math.prod(self.shapes[name])
                if name in self.jac or (n_in <= 2 * B * K and
                                        n_in * out_numel * s.c.element_size() <= self.jac_budget):
                    J = self.jacobian(name, op, in_shape, s.c)
                    cols = J.reshape(n_in, -1).index_select(0, e.idx.reshape(-1)).reshape(B, K, -1)
                    E[k] = (cols * e.vals.unsqueeze(-1)).reshape(B, K, *J.shape[1:])
                else:
                    E[k] = _fold_apply(op.lin, _dense_e(e, in_shape))
        box = box_affine(op, s.box) if s.box is not None else None
        return _Sym(c, A, E, box)

    def crop_affine(self, name: str, op: Affine, e: crops.Crops, in_shape: tuple, d_flat):
        """An affine layer on cropped error terms: crops again after a convolution that keeps them below half the
        grid, an elementwise map or a reshape; dense images after a Linear, from each crop's weight columns; else
        dense images through the layer."""
        if op.reshape:
            return e
        if d_flat is not None:
            return crops.scale(e, d_flat)
        if op.matrix is not None and _crop_linear(e.T.device) and op.matrix.shape[1] == math.prod(e.grid):
            return crops.linear(e, op.matrix)
        if op.conv is not None and tuple(in_shape) == e.grid and \
                crops.worth_a_conv(e.T.shape[-2:], op.conv[0], op.conv[1], self.shapes[name]):
            return crops.conv(e, *op.conv, self.shapes[name])
        return _fold_apply(op.lin, _dense_e(e, in_shape))

    def patch_affine(self, name: str, op: Affine, A: patches.Patches, in_shape: tuple, d_flat):
        """An affine layer on windowed coefficients: windows again after a convolution that keeps them smaller
        than the input, an elementwise map or a reshape; dense ones after a Linear; else a dense pass."""
        if op.reshape:
            return A
        if d_flat is not None:
            return patches.scale(A, d_flat)
        if op.conv is not None and tuple(in_shape) == A.neurons and patches.worth_a_conv(A, op.conv[0]):
            return patches.conv(A, *op.conv, self.shapes[name])
        if op.matrix is not None and op.matrix.shape[1] == math.prod(A.neurons):
            out = patches.linear(A, op.matrix)
            return out.reshape(*out.shape[:2], *self.shapes[name])
        return _fold_apply(op.lin, _materialize(A, in_shape))

    def relu(self, s: _Sym, shape: tuple, name: str, owned: Callable = lambda t: False) -> _Sym:
        """Relax a ReLU; ``owned(t)`` says a coefficient tensor may be scaled in place (no one else sees it)."""
        B = s.c.shape[0]
        lo, hi = self.bounds(s, shape, name)
        unstable = (lo < 0) & (hi > 0)
        # λ = u/(u − l) for unstable neurons, 1 for l ≥ 0, 0 for u ≤ 0
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        lam = torch.where(unstable, hi / denom, (lo >= 0).to(hi.dtype))
        mu = torch.where(unstable, -lam * lo / 2, torch.zeros_like(lo))    # −λl/2 ≥ 0
        c = lam * s.c + mu
        lam_b = lam.unsqueeze(1)
        lam_flat = lam.reshape(B, -1)
        if isinstance(s.A, torch.Tensor) and owned(s.A):   # no autograd, no other reader: scale in place
            A = s.A.mul_(lam_b)
        elif isinstance(s.A, patches.Patches):
            A = patches.scale(s.A, lam, in_place=owned(s.A.P))
        elif isinstance(s.A, _Outer):                       # s ⊗ J ⊙ λ in two passes
            A = s.A.J.unsqueeze(0) * lam_b
            A = A.mul_(s.A.s.reshape(*s.A.s.shape, *([1] * len(shape)))) if not torch.is_grad_enabled() else \
                A * s.A.s.reshape(*s.A.s.shape, *([1] * len(shape)))
        else:
            A = _materialize(s.A, shape) * lam_b
        E = {}
        for k, e in s.E.items():
            if isinstance(e, _SparseE):
                E[k] = _SparseE(e.idx, e.vals * lam_flat.gather(1, e.idx))
            elif isinstance(e, crops.Crops):
                E[k] = crops.scale(e, lam)
            else:
                E[k] = e.mul_(lam_b) if owned(e) else e * lam_b
        # one fresh error term of size −λl/2 per unstable neuron, packed per sample
        flat_u = unstable.reshape(B, -1)
        counts = flat_u.sum(1, keepdim=True)
        K = int(counts.max()) if B else 0
        if K > 0:   # unstable neuron j of a sample goes to slot (its rank among them); slot K collects the others
            n = flat_u.shape[1]
            slot = torch.where(flat_u, flat_u.cumsum(1) - 1, K)
            order = flat_u.new_zeros(B, K + 1, dtype=torch.long).scatter_(
                1, slot, torch.arange(n, device=flat_u.device).expand(B, n))[:, :K]
            valid = torch.arange(K, device=flat_u.device) < counts
            E[name] = _SparseE(order, mu.reshape(B, -1).gather(1, order) * valid)
        box = None
        if s.box is not None:
            box = box_relu(Box((hi + lo) / 2, (hi - lo) / 2))
        return _Sym(c, A, E, box)

    def add(self, a: _Sym, b: _Sym, shape: tuple, sign: float) -> _Sym:
        c = a.c + b.c if sign > 0 else a.c - b.c
        if isinstance(a.A, _Diag) and isinstance(b.A, _Diag):
            A = _Diag(a.A.s + b.A.s if sign > 0 else a.A.s - b.A.s)
        else:
            A1, A2 = _materialize(a.A, shape), _materialize(b.A, shape)
            A = A1 + A2 if sign > 0 else A1 - A2
        E = dict(a.E)
        for k, v in b.E.items():
            if isinstance(v, _SparseE):
                v = v if sign > 0 else _SparseE(v.idx, -v.vals)
            elif isinstance(v, crops.Crops):
                v = v if sign > 0 else v.like(-v.T)
            else:
                v = v if sign > 0 else -v
            if k not in E:
                E[k] = v
            elif isinstance(E[k], _SparseE) and isinstance(v, _SparseE) and E[k].idx is v.idx:
                E[k] = _SparseE(v.idx, E[k].vals + v.vals)   # same error terms (shared history)
            else:
                E[k] = _dense_e(E[k], shape) + _dense_e(v, shape)
        box = None
        if a.box is not None:
            box = Box(a.box.c + b.box.c if sign > 0 else a.box.c - b.box.c, a.box.r + b.box.r)
        return _Sym(c, A, E, box)

    def step(self, n, ins, env) -> _Sym:
        if n.kind == "affine":
            return self.affine(n.name, n.op, ins[0], self.shapes[n.inputs[0]])
        if n.kind == "relu":
            src = n.inputs[0]
            owned = lambda t: False  # noqa: E731 - with autograd on, or while src is read later: copy
            if not torch.is_grad_enabled() and self.plan.last_use.get(src) == self.index[n.name]:
                # Scaling in place is safe only for tensors no other live node shares: an addition
                # reuses its operands' error-term tensors and a reshape returns views of its input.
                shared = {p for k, v in env.items() if k != src for p in _storage_ptrs(v)}
                owned = lambda t, _s=shared: t.untyped_storage().data_ptr() not in _s  # noqa: E731
            return self.relu(ins[0], n.shape, n.name, owned)
        return self.add(ins[0], ins[1], n.shape, 1.0 if n.kind == "add" else -1.0)

    def run(self, state: _Sym, y: Optional[torch.Tensor]):
        plan = self.plan
        s = walk(plan, state, self.step)
        shape = plan.out_shape
        if y is None:
            return self.bounds(s, shape)
        # margin specification z_j − z_y, applied to the affine forms before concretising
        B = s.c.shape[0]
        A = _materialize(s.A, shape).reshape(B, -1, math.prod(shape))
        E = {k: _dense_e(v, shape) for k, v in s.E.items()}
        s2 = _Sym(margin_spec(s.c.reshape(B, -1), y), margin_spec(A, y),
                  {k: margin_spec(v.reshape(B, v.shape[1], -1), y) for k, v in E.items()})
        lo, hi = self.bounds(s2, (math.prod(shape),))
        if self.coefficients:
            return lo, hi, s2.A.transpose(1, 2)  # (B, K, D): ∂(margin_j)/∂δ, half-width included
        return lo, hi


def initial_state(mode: str, a, b, intersect: bool) -> _Sym:
    """The input region as a symbolic state: a box ``[a, b]`` (mode "box") or an L2 ball (centre a, radius b)."""
    if mode == "l2":
        D = math.prod(a.shape[1:])
        return _Sym(a, _Diag(b.unsqueeze(1).expand(-1, D)), {}, L2Ball(a, b).box() if intersect else None)
    st = Box.from_bounds(a, b)
    return _Sym(st.c, _Diag(st.r.reshape(st.r.shape[0], -1)), {}, st if intersect else None)
