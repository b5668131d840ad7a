r"""Sound output bounds for a network on an input region: interval (IBP) and symbolic intervals.

One idea per file: ``graph`` (the table of supported operations and their handlers, the plan
and its walker), ``plans`` (fx tracing and the reuse of plans), ``ops`` (the affine maps of
the layers), ``interval`` (IBP), ``symbolic`` (symbolic intervals), ``patches`` and ``crops``
(its coefficients through convolutions as windows and crops), ``chunks`` (the batch in chunks
sized by a memory budget) and ``api`` (what this package exports).

The input region is the box ``x ∈ [lower, upper]`` (for verification
``[x₀ − ε, x₀ + ε] ∩ [0, 1]``), or an L2 ball ``‖x − x₀‖₂ ≤ ε``.

Naive interval propagation (IBP), :func:`interval`
    Every neuron is held as a centre ``c`` and a radius ``r``. An affine layer
    ``z ↦ Wz + b`` maps ``c' = Wc + b`` and ``r' = |W| r``; a ReLU maps
    ``[l, u] ↦ [relu(l), relu(u)]``. Costs about two forward passes.

Symbolic intervals (ReluVal / Neurify, as used by MixTrain), :func:`symbolic`
    Write the input as ``x = x̂ + e ⊙ δ`` with centre ``x̂``, half-width ``e``
    and noise ``δ ∈ [−1, 1]^d``. Every neuron is held as an affine form

    .. math:: z = c + \sum_i A_i δ_i + \sum_j E_j η_j ,\qquad δ_i, η_j ∈ [−1, 1]

    (``A`` already includes the half-width ``e``). Affine layers map ``c``,
    ``A`` and ``E`` linearly (``A`` and ``E`` without the bias). Concretising
    gives ``radius = Σ_i |A_i| + Σ_j |E_j|``, ``l = c − radius``,
    ``u = c + radius``. A ReLU whose input is stable is the identity
    (``l ≥ 0``, slope λ = 1) or zero (``u ≤ 0``, λ = 0). For an unstable neuron
    (``l < 0 < u``) the relaxation is the band between two parallel lines of
    slope ``λ = u / (u − l)``:

    .. math:: λ z ≤ \mathrm{relu}(z) ≤ λ (z − l),

    i.e. ``relu(z) ∈ λz − λl/2 ± (−λl/2)``: scale ``c``, ``A`` and ``E`` by λ,
    add ``−λl/2`` to ``c`` and append one fresh error term ``η`` of size
    ``−λl/2`` for that neuron. Every error term belongs to the ReLU node that
    created it, so when two branches of a residual network meet (``x + f(x)``)
    the coefficients of the same error term add, exactly as the input terms do.
    This is the relaxation that auto_LiRPA calls CROWN with
    ``relu='same-slope'``; because forward propagation of affine forms over
    independent noise symbols is exact, the bounds equal that backward
    computation (checked against auto_LiRPA's reference data in the tests).

    For an L2 ball the input term is ``x = x₀ + ε δ`` with ``‖δ‖₂ ≤ 1`` and
    concretises with the dual norm: ``radius = ε ‖A_row‖₂ + Σ_j |E_j|``.

    Cost: ``A`` holds ``d × n`` numbers per sample for a layer of ``n``
    neurons (``d`` = input dimension), so the batch is processed in chunks
    that fit ``memory_budget`` bytes. The work is about one forward pass of
    ``d + 1`` images plus one more input per error term after the ReLU that
    made it: before the first ReLU ``A = e ⊗ J`` stays factored (``J`` the
    Jacobian of the layers so far, shared by the batch; radius ``|e| @ |J|``),
    and a fresh error term, one-hot, crosses the next Linear or Conv as a
    gather from its weights rather than a pass of its own.

    Note (checked in the tests): with this relaxation the symbolic bound is
    *not* always tighter than IBP; e.g. ``z ∈ [−1, 1]``, ``out = −relu(z)``
    gives IBP ``[−1, 0]`` but symbolic ``[−1, 0.5]``. ``intersect_interval=True``
    runs IBP alongside, relaxes every ReLU with the intersected ``[l, u]`` and
    intersects the final bounds: never looser than IBP. (It is not always
    tighter than the pure symbolic bound either: tighter ``[l, u]`` raise the
    slope ``λ``, and the lower line ``λz`` then drops for ``z < 0``.)

Verification specification, :func:`margin_bounds` / :func:`verify`
    Bounds of the margins ``z_j − z_y`` are computed with the specification
    ``C = e_j − e_y`` applied *before* concretising: for symbolic intervals
    ``C`` is applied to the affine forms of the logits (the same as folding it
    into the last linear layer), for IBP it is folded into the last linear
    layer's weights when the network ends with one. A sample is verified iff
    the upper bound of every ``z_j − z_y`` (``j ≠ y``) is ``< 0``.

Robust loss, :func:`robust_loss`
    ``CE(u, y)`` with ``u_y = 0``: ``log(1 + Σ_{j≠y} exp(u_j))``, differentiable
    in the model parameters (MixTrain trains through it).

Precision
    Bounds are computed in the dtype of the inputs (and weights). A caller's autocast is switched off inside
    every function here: bf16 rounding of an affine map could lift a lower bound above the network's true
    minimum. (Rounding in fp32 is not directed either:
    give float64 inputs and weights where a margin within a few ulps of zero matters.)

Supported networks
    Any ``nn.Module`` that ``torch.fx`` traces into: Linear, Conv1d/Conv2d,
    ReLU (module, ``F.relu``, ``torch.relu``, ``Tensor.relu``), BatchNorm1d/2d in
    eval mode, average pooling (AvgPool1d/2d, AdaptiveAvgPool1d/2d,
    ``F.avg_pool2d``, ``F.adaptive_avg_pool2d``), flatten / view / reshape /
    Unflatten, addition and subtraction of two traced tensors (residual
    connections), addition of constants and multiplication / division by
    constants (e.g. an input normalisation), Identity and Dropout in eval mode.
    Anything else raises :class:`UnsupportedOperation` before any bound is
    computed: never a silently unsound bound.
"""
from .api import input_box, interval, margin_bounds, margin_coefficients, robust_loss, symbolic, verify
from .errors import SUPPORTED_OPERATIONS, UnsupportedOperation
from .chunks import default_chunk, default_memory_budget, estimate_sample_bytes

__all__ = [
    "UnsupportedOperation", "SUPPORTED_OPERATIONS", "input_box", "interval", "symbolic",
    "margin_bounds", "margin_coefficients", "verify", "robust_loss", "default_memory_budget", "estimate_sample_bytes",
    "default_chunk",
]
