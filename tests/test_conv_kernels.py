"""Convolutions by their measured-fastest kernel: every variant is the same convolution, the swap is invisible."""
import copy
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import robustlib as rl
from robustlib import conv_kernels as ck

GEOMETRIES = [   # (in, out, kernel, stride, padding, H, W, bias): crops, odd sizes, stride 3, no bias
    (1, 16, 4, 2, 1, 28, 28, True), (3, 5, 3, 1, 1, 9, 11, False), (2, 4, 6, 3, 2, 13, 10, True),
    (4, 3, 4, 2, 0, 7, 8, True), (3, 2, 2, 2, 0, 6, 6, False), (2, 3, 4, 2, 3, 5, 9, True),
]


def _reference(conv, x, g):
    x = x.detach().requires_grad_(True)
    y = conv(x)
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    grads = torch.autograd.grad(y, [x] + params, g)
    return y.detach(), grads


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_variant_of_every_direction_is_the_convolution(geometry):
    cin, cout, k, s, p, h, w, bias = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, bias=bias).double()
    x = torch.randn(3, cin, h, w, dtype=torch.float64)
    g = torch.randn_like(conv(x))
    y, (gx, gw, *gb) = _reference(conv, x, g)
    variants = ck._variants(conv)
    assert ("s2d" in variants) == (s > 1 and k % s == 0)
    for v in variants:
        wt = conv.weight.detach()
        torch.testing.assert_close(ck.forward_variant(conv, v, x, wt, conv.bias), y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ck.input_grad_variant(conv, v, g, x.shape, wt), gx, rtol=1e-12, atol=1e-12)
        gw_v, gb_v = ck.weight_grad_variant(conv, v, g, x, wt, bias)
        torch.testing.assert_close(gw_v, gw, rtol=1e-10, atol=1e-10)
        if bias:
            torch.testing.assert_close(gb_v, gb[0], rtol=1e-10, atol=1e-10)
        else:
            assert gb_v is None


def test_bf16_variants_including_the_fp32_ones_match_fp32():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 4, 2, 1)
    x = torch.rand(8, 16, 14, 14)
    g = torch.randn_like(conv(x))
    y, (gx, gw, gb) = _reference(conv, x, g)
    xb, wb, bb, gbf = x.bfloat16(), conv.weight.detach().bfloat16(), conv.bias.detach().bfloat16(), g.bfloat16()
    variants = ck._variants(conv, torch.bfloat16)
    assert {"nchw/fp32", "nhwc/fp32"} <= set(variants)
    for v in variants:
        out = ck.forward_variant(conv, v, xb, wb, bb)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), y, rtol=0.05, atol=0.05)
        torch.testing.assert_close(ck.input_grad_variant(conv, v, gbf, xb.shape, wb).float(), gx, rtol=0.05,
                                   atol=0.05)
        gw_v, gb_v = ck.weight_grad_variant(conv, v, gbf, xb, wb, True)
        torch.testing.assert_close(gw_v.float(), gw, rtol=0.05, atol=0.5)
        torch.testing.assert_close(gb_v.float(), gb, rtol=0.05, atol=0.5)


def _net():
    torch.manual_seed(0)
    return rl.models.build("mnist_small", num_classes=10, in_channels=1)


def _plan_everywhere(model, x, plan):
    """Give every tuned convolution ``plan`` for the input it meets in ``model(x)`` (no timing)."""
    keys = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: keys.__setitem__(m, ck._key(m, a[0])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for m, key in keys.items():
        m._plans[key] = plan


@pytest.mark.parametrize("plan", [("nhwc", "s2d", "s2d-nhwc"), ("s2d", "nhwc", "nhwc"), ("s2d-nhwc", "nchw", "s2d")])
def test_a_tuned_network_computes_what_the_plain_one_does(plan):
    plain, x, y = _net(), torch.rand(6, 1, 28, 28), torch.arange(6)
    tuned = copy.deepcopy(plain)
    assert ck.tune(tuned) == 2 and all(type(m) is not nn.Conv2d for m in tuned.modules() if isinstance(m, nn.Conv2d))
    assert list(tuned.state_dict()) == list(plain.state_dict())
    _plan_everywhere(tuned, x, plan)
    results = []
    for net, ctx in ((plain, ck.active(False)), (tuned, ck.active())):
        xa = x.clone().requires_grad_(True)
        with ctx:
            out = net(xa)
        loss = F.cross_entropy(out, y)
        results.append([out, *torch.autograd.grad(loss, [xa, *net.parameters()])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_custom_kernels_run_only_inside_active_and_untune_restores_plain_convs():
    net, x = _net(), torch.rand(4, 1, 28, 28, requires_grad=True)
    ck.tune(net)
    _plan_everywhere(net, x, ("nhwc", "s2d", "nhwc"))
    first = net[0]

    def backward_names(out):
        names, stack = set(), [out.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None:
                names.add(fn.name())
                stack.extend(f for f, _ in fn.next_functions)
        return names

    assert not any("Tuned" in n for n in backward_names(net(x)))
    with ck.active():
        assert any("Tuned" in n for n in backward_names(net(x)))
    twin = copy.deepcopy(net)   # a copy keeps its plans and computes with its own weights
    with torch.no_grad():
        twin[0].weight.zero_()
    with ck.active():
        assert not torch.equal(twin(x), net(x))
    assert twin[0]._plans == first._plans
    ck.untune(net)
    assert type(net[0]) is nn.Conv2d and not hasattr(net[0], "_plans")


def test_autocast_computes_in_bf16_and_gives_fp32_parameter_gradients():
    plain, x, y = _net(), torch.rand(6, 1, 28, 28), torch.arange(6)
    tuned = copy.deepcopy(plain)
    ck.tune(tuned)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _plan_everywhere(tuned, x, ("nhwc", "s2d", "nchw/fp32"))
    grads = []
    for net, ctx in ((plain, ck.active(False)), (tuned, ck.active())):
        with ctx, torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(F.cross_entropy(out.float(), y), list(net.parameters())))
    for a, b in zip(*grads):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.02)


def test_choose_keeps_nchw_unless_another_variant_wins_by_the_margin(monkeypatch):
    conv = nn.Conv2d(1, 4, 4, 2, 1)
    fake = {"forward": {"nchw": 1.0, "nhwc": 0.95, "s2d": 2.0, "s2d-nhwc": 2.0},     # 5% faster: kept nchw
            "input_grad": {"nchw": 1.0, "nhwc": 0.9, "s2d": 0.4, "s2d-nhwc": 0.5},   # s2d 2.5× faster
            "weight_grad": {"nchw": 0.5, "nhwc": 0.6, "s2d": 0.7, "s2d-nhwc": 0.8}}
    monkeypatch.setattr(ck, "timings", lambda conv, shape, dtype: fake)
    assert ck.choose(conv, torch.rand(2, 1, 8, 8)) == ("nchw", "s2d", "nchw")


def test_tuning_measures_real_timings_and_leaves_the_global_random_state_alone():
    conv = nn.Conv2d(2, 4, 4, 2, 1)
    state = torch.get_rng_state()
    t = ck.timings(conv, (4, 2, 12, 12), torch.float32)
    assert torch.equal(state, torch.get_rng_state())
    assert set(t) == set(ck.DIRECTIONS) and all(set(v) == set(ck.VARIANTS) for v in t.values())
    assert all(s > 0 for v in t.values() for s in v.values())
    plan = ck.choose(conv, torch.rand(4, 2, 12, 12))
    assert len(plan) == 3 and all(p in ck.VARIANTS for p in plan)


@pytest.mark.parametrize("slow", [False, True])
def test_tuning_times_slow_convolutions_in_fewer_calls(monkeypatch, slow):
    """Every variant of every direction is called 2 + rounds·calls times (two warm-up calls, the second timed as a
    probe), or 2 + (SLOW_ROUNDS − 1) when the probe of a direction's slowest variant exceeds SLOW_CALL_S."""
    conv, calls = nn.Conv2d(2, 4, 4, 2, 1), {}
    for direction in ("forward", "input_grad", "weight_grad"):
        real = getattr(ck, f"{direction}_variant")

        def counted(conv_, variant, *args, _real=real, _d=direction):
            calls[_d, variant] = calls.get((_d, variant), 0) + 1
            return _real(conv_, variant, *args)
        monkeypatch.setattr(ck, f"{direction}_variant", counted)
    monkeypatch.setattr(ck, "SLOW_CALL_S", 0.0 if slow else float("inf"))
    t = ck.timings(conv, (4, 2, 12, 12), torch.float32, rounds=4, calls=3)
    assert all(s > 0 for v in t.values() for s in v.values())
    assert len(calls) == 3 * len(ck.VARIANTS)
    assert set(calls.values()) == {2 + (ck.SLOW_ROUNDS - 1 if slow else 4 * 3)}


def test_the_allocator_is_set_once_per_process():
    first = rl.allocator.steady()
    assert first and rl.allocator.steady() is first and rl.allocator.state() == first   # later calls change nothing
    if sys.platform.startswith("linux") and first.get("glibc", True):
        assert first == {"mmap_threshold_mib": 256, "trim_threshold_mib": 512}


def test_batch_sizes_share_a_plan_up_to_the_next_power_of_two():
    conv = nn.Conv2d(1, 4, 4, 2, 1)
    keys = {n: ck._key(conv, torch.empty(n, 1, 28, 28)) for n in (1, 2, 3, 4, 65, 100, 128, 129)}
    assert keys[3] == keys[4] and keys[65] == keys[100] == keys[128]
    assert len({keys[1], keys[2], keys[4], keys[128], keys[129]}) == 5


def test_ineligible_convolutions_are_left_alone():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, dilation=2), nn.Conv2d(4, 4, 3, padding="same"),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3))
    assert ck.tune(net) == 1
    assert [type(m).__name__ for m in net] == ["Conv2d"] * 4 + ["TunedConv2d"]


def test_bounds_trace_a_tuned_network_inside_the_training_step():
    net, x, y = _net(), torch.rand(3, 1, 28, 28), torch.arange(3)
    lo, up = rl.bounds.input_box(x, 0.05)
    expected = [rl.bounds.margin_bounds(net, lo, up, y, method=m) for m in ("interval", "symbolic")]
    ck.tune(net)
    _plan_everywhere(net, x, ("nhwc", "s2d", "nhwc"))
    with ck.active():
        got = [rl.bounds.margin_bounds(net, lo, up, y, method=m) for m in ("interval", "symbolic")]
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)


@pytest.mark.usefixtures("fp32_default")   # tuning is the default of a CPU without bf16 units
def test_fit_tunes_on_cpu_records_the_kernels_and_a_resumed_run_keeps_them(tmp_path):
    train, _ = rl.data.load("digits")
    part = train.head(256)
    objective = rl.objectives.PGDAT(0.1, steps=2)
    runs = {}
    for tune in (False, True):
        torch.manual_seed(0)
        net = rl.models.build("mnist_small", like=part)
        h = rl.train.fit(net, part, objective, epochs=1, batch_size=64, lr=0.05, progress=False, tune_convs=tune)
        assert all(type(m) is nn.Conv2d for m in net.modules() if isinstance(m, nn.Conv2d))   # untuned after fit
        runs[tune] = (h, net)
    assert runs[False][0].conv_kernels is None
    kernels = runs[True][0].conv_kernels
    assert set(kernels) == {"0", "2"} and all(len(p) == 3 for v in kernels.values() for p in v.values())
    for a, b in zip(runs[False][1].parameters(), runs[True][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # a checkpoint carries the plans and a resumed run installs them instead of measuring again
    ckpt = tmp_path / "run.pt"
    net = rl.models.build("mnist_small", like=part)

    def stop(record):
        raise KeyboardInterrupt   # the run is interrupted after its first epoch

    with pytest.raises(KeyboardInterrupt):
        rl.train.fit(net, part, objective, epochs=2, batch_size=64, lr=0.05, progress=False, checkpoint=ckpt,
                     callback=stop)
    saved = torch.load(ckpt, weights_only=True)["conv_kernels"]
    forced = {name: {k: ["nhwc", "nhwc", "nhwc"] for k in v} for name, v in saved.items()}
    state = torch.load(ckpt, weights_only=True)
    state["conv_kernels"] = forced
    torch.save(state, ckpt)
    h = rl.train.fit(net, part, objective, epochs=2, batch_size=64, lr=0.05, progress=False, checkpoint=ckpt)
    assert h.conv_kernels == forced



def test_torch_func_transforms_inside_active_see_a_plain_convolution():
    net = _net()
    data = rl.data.ImageData((torch.rand(8, 1, 28, 28) * 255).to(torch.uint8), torch.arange(8) % 10, "random",
                             tuple(str(i) for i in range(10)))
    expected = rl.scores.score("grand", net, data, mode="full")
    ck.tune(net)
    _plan_everywhere(net, data.x(), ("nhwc", "s2d", "nhwc"))
    with ck.active():   # vmap(grad(...)) over a tuned network: the custom kernels step aside
        got = rl.scores.score("grand", net, data, mode="full")
    torch.testing.assert_close(got, expected)


def test_the_onednn_bug_geometry_never_computes_its_weight_gradient_channels_last(monkeypatch):
    """uxlfoundation/oneDNN#6035: a 1×1, stride-2 convolution of fewer than 16 input channels computes wrong weight
    gradients channels-last on x86 CPUs, then crashes or hangs. The tuner must never time that kernel, a saved plan
    that names it is corrected, and the other directions and geometries keep all their variants."""
    broken = nn.Conv2d(4, 8, 1, stride=2, bias=False)
    assert ck.nhwc_weight_grad_broken(broken)
    for fine in (nn.Conv2d(16, 8, 1, stride=2), nn.Conv2d(4, 8, 1, stride=1), nn.Conv2d(4, 8, 3, stride=2),
                 nn.Linear(4, 8)):
        assert not ck.nhwc_weight_grad_broken(fine)
    assert ck._variants(broken, torch.float32, "weight_grad") == ("nchw",)
    assert ck._variants(broken, torch.bfloat16, "weight_grad") == ("nchw", "nchw/fp32")
    assert "nhwc" in ck._variants(broken, torch.float32, "input_grad")
    assert "nhwc" in ck._variants(nn.Conv2d(16, 8, 1, stride=2), torch.float32, "weight_grad")
    called = []
    real = ck.weight_grad_variant

    def record(conv, variant, g, x, w, bias):   # never runs the broken kernel, even if asked to
        called.append(variant)
        return real(conv, "nchw", g, x, w, bias)
    monkeypatch.setattr(ck, "weight_grad_variant", record)
    assert ck.choose(broken, torch.rand(16, 4, 28, 28))[2] == "nchw"
    assert called and set(called) == {"nchw"}
    model = nn.Sequential(broken)
    ck.tune(model)
    ck.install(model, {"0": {"key": ["nhwc", "nhwc", "nhwc"]}})
    assert broken._plans == {"key": ("nhwc", "nhwc", "nchw")}


def test_channels_last_training_keeps_the_onednn_bug_geometry_in_nchw():
    """Inside ``nchw_where_nhwc_breaks`` a channels-last network's broken 1×1 convolution gets the weight gradient of
    the fp64 NCHW reference (channels-last it was off by up to 220 % on an AVX2 CPU, when it returned at all), the
    other convolutions stay channels-last, and leaving the block removes the hooks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 1, stride=2, bias=False),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(16, 3, 28, 28)
    ref = copy.deepcopy(net).double()
    ref_grads = torch.autograd.grad(ref(x.double()).square().sum(), list(ref.parameters()))
    net.to(memory_format=torch.channels_last)
    with ck.nchw_where_nhwc_breaks(net):
        assert net[2].weight.stride() == (4, 1, 1, 1) and len(net[2]._forward_pre_hooks) == 1
        out = net(x.contiguous(memory_format=torch.channels_last))
        grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * r.abs().max().item())
    assert not net[2]._forward_pre_hooks
