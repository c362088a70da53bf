"""Muon's Newton–Schulz against the SVD, Lion's update rule, zero-LR steps, and which parameters Muon owns."""

import copy
import math

import pytest
import torch
from torch import nn

from models import ModelConfig, build_model
from optim import (
    OPTIMIZERS,
    AdamWConfig,
    Lion,
    LionConfig,
    Muon,
    MuonConfig,
    build_optimizer,
    config_class,
    muon_params,
    zeropower_newton_schulz,
)
from optim.muon import NS_COEFFICIENTS, adjusted_lr

SHAPES = [(64, 64), (128, 32), (32, 128), (96, 160), (200, 200)]


def model(tied: bool = False):
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=2, ffn_hidden=64, vocab_size=50, tie_embeddings=tied, qk_norm=True)
    return build_model(cfg)


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_matches_svd_orthogonalisation(shape):
    """NS(G) = U p(S) V^T: the same singular vectors as G = U S V^T, and p(s) in the quintic's band (about
    [0.68, 1.2] after 5 steps, not exactly 1) for every direction that is not nearly null."""
    torch.manual_seed(sum(shape))
    g = torch.randn(*shape, dtype=torch.float64).float() * 3.0
    x = zeropower_newton_schulz(g, steps=5, dtype=torch.float32)
    assert x.shape == g.shape and x.dtype == torch.float32
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = (u @ vh).float()  # the exact orthogonalisation U V^T
    d = (u.T @ x.double() @ vh.T).float()  # U^T NS(G) V: diagonal when the singular vectors are kept
    off = d - torch.diag(torch.diag(d))
    assert off.norm() / d.norm() < 1e-4
    p = torch.diag(d)
    resolved = s / s.norm() > 5e-3  # square Gaussians have near-null directions that 5 steps cannot lift
    assert resolved.sum() >= min(shape) // 2
    assert ((p[resolved] > 0.6) & (p[resolved] < 1.25)).all(), p
    assert (p.abs() < 1.25).all()
    cosine = (x * polar).sum() / (x.norm() * polar.norm())
    assert cosine > 0.97, cosine
    rect = shape[0] != shape[1]  # well-conditioned: every singular value in the band
    if rect:
        sv = torch.linalg.svdvals(x)
        assert sv.min() > 0.6 and sv.max() < 1.25, sv


def test_more_newton_schulz_steps_stay_in_the_band_and_bf16_matches_torch():
    g = torch.randn(48, 80)
    for steps in (5, 10):
        sv = torch.linalg.svdvals(zeropower_newton_schulz(g, steps=steps, dtype=torch.float32))
        assert 0.6 < sv.min() and sv.max() < 1.25
    torch_ns = pytest.importorskip("torch.optim._muon")._zeropower_via_newtonschulz
    ours = zeropower_newton_schulz(g, 5, NS_COEFFICIENTS, dtype=torch.bfloat16)
    ref = torch_ns(g, NS_COEFFICIENTS, 5, 1e-7)
    assert torch.allclose(ours.float(), ref.float(), atol=2e-2)


def test_lr_adjustment_matches_torch_muon():
    torch_muon = pytest.importorskip("torch.optim._muon")
    for shape in [(64, 16), (16, 64), (32, 32)]:
        shape = torch.Size(shape)
        assert adjusted_lr(0.02, shape, "original") == pytest.approx(torch_muon._adjust_lr(0.02, "original", shape))
        assert adjusted_lr(0.02, shape, "match_rms_adamw") == pytest.approx(
            torch_muon._adjust_lr(0.02, "match_rms_adamw", shape)
        )
    assert adjusted_lr(0.02, torch.Size([64, 16]), "none") == 0.02
    with pytest.raises(ValueError, match="muon_adjust_lr"):
        adjusted_lr(0.02, torch.Size([4, 4]), "bogus")


def test_lion_update_rule_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    g1, g2 = torch.tensor([0.3, -0.2, 0.0]), torch.tensor([-1.0, 0.1, 2.0])
    expected, m = p.detach().clone(), torch.zeros(3)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        update = torch.sign(0.9 * m + 0.1 * g)
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * update
        m = 0.99 * m + 0.01 * g
        assert torch.allclose(p.detach(), expected, atol=1e-7)
        assert torch.allclose(opt.state[p]["exp_avg"], m, atol=1e-7)


def test_lion_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(20)
    p = nn.Parameter(torch.zeros(20))
    opt = Lion([p], lr=0.01, betas=(0.9, 0.99))
    for _ in range(600):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        opt.step()
    assert (p.detach() - target).abs().max() < 0.05  # sign updates settle within a few lr of the optimum


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("tied", [False, True])
def test_a_zero_lr_step_changes_no_parameter(name, tied):
    """DCP initialises optimizer state by a step with lr = 0: decay and Muon's update must vanish with it."""
    m = model(tied)
    extra = {"muon_weight_decay": 0.5} if name == "muon" else {}
    opt = build_optimizer(config_class(name)(weight_decay=0.5, **extra), m)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    for g in opt.param_groups:
        g["lr"] = 0.0
    opt.step()
    assert opt.state  # the step did initialise the state
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    for g in opt.param_groups:  # and with a real lr, everything moves
        g["lr"] = 1e-3
    opt.step()
    assert all(not torch.equal(p.detach(), before[n]) for n, p in m.named_parameters())


def _names(m, params):
    ids = {id(p) for p in params}
    return {n for n, p in m.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tied", [False, True])
def test_muon_routing(tied):
    m = model(tied)
    opt = build_optimizer(MuonConfig(lr=1e-3, muon_lr=0.05, weight_decay=0.1), m)
    assert isinstance(opt, Muon)
    muon_group, *adam_groups = opt.param_groups
    assert muon_group["use_muon"] and muon_group["lr"] == 0.05 and not any(g["use_muon"] for g in adam_groups)
    assert all(g["lr"] == 1e-3 for g in adam_groups)
    in_muon = _names(m, muon_group["params"])
    expected = {
        f"layers.{i}.{mod}.weight"
        for i in range(2)
        for mod in (
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        )
    }
    assert in_muon == expected
    adam = set().union(*(_names(m, g["params"]) for g in adam_groups))
    assert "tok_embeddings.weight" in adam and ("output.weight" in adam) != tied  # tied: one table, counted once
    assert not in_muon & adam and len(in_muon) + len(adam) == len(list(m.parameters()))
    decayed = _names(m, adam_groups[0]["params"]) if adam_groups[0]["weight_decay"] else set()
    assert decayed == (set() if tied else {"output.weight"})  # an untied head decays; norms and embeddings never


def test_muon_exclusion_by_module_name_and_wrappers():
    m = model()
    names = _names(m, muon_params(m, ["output", "wq"]))
    assert not any(".wq." in n for n in names) and len(names) == 12
    wrapped = nn.Module()
    wrapped.module = m  # DDP's naming: "module.output"
    assert _names(m, muon_params(wrapped, ["output"])) == _names(m, muon_params(m, ["output"]))
    with pytest.raises(ValueError, match="muon_exclude names no nn.Linear module.*'lm_head'"):
        muon_params(m, ["lm_head"])


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match=r"optim.name must be one of \('adamw', 'lion', 'muon'\), got 'sophia'"):
        config_class("sophia")
    with pytest.raises(ValueError, match="optim.name='lion' does not match"):
        build_optimizer(AdamWConfig(name="lion"), model())


@pytest.mark.parametrize(
    "cfg, says",
    [
        (MuonConfig(muon_ns_dtype="fp8"), "muon_ns_dtype"),
        (MuonConfig(muon_lr=0.0), "muon_lr must be positive"),
        (MuonConfig(muon_adjust_lr="sqrt"), "muon_adjust_lr"),
        (AdamWConfig(lr=-1.0), "optim.lr must be positive"),
        (AdamWConfig(weight_decay=-0.1), "optim.weight_decay must be >= 0"),
        (LionConfig(grad_clip=-1.0), "optim.grad_clip must be >= 0"),
        (LionConfig(betas=[0.9]), "optim.betas must be two values"),
        (AdamWConfig(eps=0.0), "optim.eps must be positive"),
    ],
)
def test_each_optimizer_checks_its_own_fields_without_a_model(cfg, says):
    with pytest.raises(ValueError, match=says):
        cfg.validate()


def test_each_optimizer_has_its_own_fields():
    assert not hasattr(LionConfig(), "eps") and not hasattr(AdamWConfig(), "muon_lr")
    assert [config_class(n)().name for n in OPTIMIZERS] == list(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name):
    """A copy that loads the state dict takes the same next step (what a resume relies on)."""
    torch.manual_seed(0)
    a, b = model(), model()
    b.load_state_dict(a.state_dict())
    cfg = config_class(name)(lr=1e-3)
    opt_a, opt_b = build_optimizer(cfg, a), build_optimizer(cfg, b)
    x = torch.randint(0, 50, (2, 9))
    for _ in range(2):
        opt_a.zero_grad()
        a(x[:, :-1], x[:, 1:]).backward()
        opt_a.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        pb.data.copy_(pa.data)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # loading shares tensors of equal dtype/device
    for m, o in ((a, opt_a), (b, opt_b)):
        o.zero_grad()
        m(x[:, :-1], x[:, 1:]).backward()
        o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not math.isnan(sum(p.sum().item() for p in a.parameters()))
