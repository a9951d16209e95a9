"""The vectorized objectives against naive loops over trajectories and state pairs."""

import math
import random

import pytest
import torch

from gfnlm.core.objectives import BalanceTerms, balance_loss, batch_log_z, db_loss, subtb_loss, tb_loss


def random_terms(seed: int, batch: int = 6, length: int = 7, with_log_z: bool = True, root_terminable=None):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    lengths = torch.tensor([rng.randint(0, length) for _ in range(batch)])
    lengths[0] = length  # at least one full-width row
    log_pf = -torch.rand(batch, length, generator=g) * 3
    log_stop = -torch.rand(batch, length + 1, generator=g) * 3
    log_reward = torch.randn(batch, length + 1, generator=g) * 4
    terminable = torch.rand(batch, length + 1, generator=g) < 0.6
    for b in range(batch):
        n = int(lengths[b])
        terminable[b, n] = True  # a trajectory ends where it stops
        terminable[b, n + 1:] = False
        if root_terminable is not None:
            terminable[b, 0] = root_terminable and n >= 0
        # garbage where nothing may be read: past the end, and rewards/stops of non-terminable states
        log_pf[b, n:] = math.inf
        log_reward[b][~terminable[b]] = math.nan
        log_stop[b][~terminable[b]] = -math.inf
    log_z = torch.randn(batch, generator=g) if with_log_z else None
    return BalanceTerms(log_pf, log_stop, log_reward, terminable, lengths, log_z)


def endpoints_and_flows(t: BalanceTerms, b: int):
    n = int(t.lengths[b])
    flows = {}
    for i in range(n + 1):
        if t.terminable[b, i]:
            flows[i] = float(t.log_reward[b, i] - t.log_stop[b, i])
    if t.log_z is not None and not t.terminable[b, 0]:
        flows[0] = float(t.log_z[b])
    return n, flows


def path(t: BalanceTerms, b: int, i: int, j: int) -> float:
    return sum(float(t.log_pf[b, k]) for k in range(i, j))


def naive_subtb(t: BalanceTerms, lam: float) -> float:
    num = den = 0.0
    for b in range(t.log_pf.shape[0]):
        n, flows = endpoints_and_flows(t, b)
        for i in range(n + 1):
            for j in range(i + 1, n + 1):
                if i in flows and j in flows:
                    w = lam ** (j - i - 1)
                    d = flows[i] + path(t, b, i, j) - flows[j]
                    num += w * d * d
                    den += w
    return num / den


def naive_db(t: BalanceTerms) -> float:
    residuals = []
    for b in range(t.log_pf.shape[0]):
        _, flows = endpoints_and_flows(t, b)
        points = sorted(flows)
        for i, j in zip(points, points[1:]):
            residuals.append(flows[i] + path(t, b, i, j) - flows[j])
    return sum(r * r for r in residuals) / len(residuals)


def naive_tb(t: BalanceTerms) -> float:
    total = 0.0
    for b in range(t.log_pf.shape[0]):
        n = int(t.lengths[b])
        d = float(t.log_z[b]) + path(t, b, 0, n) + float(t.log_stop[b, n]) - float(t.log_reward[b, n])
        total += d * d
    return total / t.log_pf.shape[0]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("lam", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("with_log_z", [True, False])
def test_subtb_matches_double_loop(seed, lam, with_log_z):
    t = random_terms(seed, with_log_z=with_log_z)
    assert subtb_loss(t, lam).item() == pytest.approx(naive_subtb(t, lam), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("with_log_z", [True, False])
def test_db_matches_loop_over_consecutive_endpoints(seed, with_log_z):
    t = random_terms(seed, with_log_z=with_log_z)
    assert db_loss(t).item() == pytest.approx(naive_db(t), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_tb_matches_loop(seed):
    t = random_terms(seed)
    assert tb_loss(t).item() == pytest.approx(naive_tb(t), rel=1e-5, abs=1e-5)


def test_log_z_serves_as_root_flow_only_when_the_root_cannot_stop():
    with_root = random_terms(3, root_terminable=True)
    without_z = BalanceTerms(with_root.log_pf, with_root.log_stop, with_root.log_reward, with_root.terminable,
                             with_root.lengths, None)
    assert subtb_loss(with_root).item() == pytest.approx(subtb_loss(without_z).item(), rel=1e-6)
    closed = random_terms(3, root_terminable=False)
    changed = BalanceTerms(closed.log_pf, closed.log_stop, closed.log_reward, closed.terminable, closed.lengths,
                           closed.log_z + 1.0)
    assert subtb_loss(closed).item() != pytest.approx(subtb_loss(changed).item(), rel=1e-3)


def test_gradients_are_finite_despite_masked_garbage():
    t = random_terms(5)
    log_pf = t.log_pf.clone().requires_grad_(True)
    log_stop = t.log_stop.clone().requires_grad_(True)
    terms = BalanceTerms(log_pf, log_stop, t.log_reward, t.terminable, t.lengths, t.log_z)
    for name in ("subtb", "db", "tb"):
        log_pf.grad = log_stop.grad = None
        balance_loss(name, terms).backward()
        assert torch.isfinite(log_pf.grad).all() and torch.isfinite(log_stop.grad).all()


def test_perfectly_balanced_trajectories_have_zero_loss():
    # q(z) = R(z) / Z: choose rewards from the policy so every balance holds exactly.
    t = random_terms(7, root_terminable=True)
    lengths = t.lengths
    log_pf = torch.where(torch.isfinite(t.log_pf), t.log_pf, torch.zeros_like(t.log_pf))
    cumulative = torch.cat([torch.zeros_like(log_pf[:, :1]), log_pf.cumsum(-1)], dim=1)
    log_stop = torch.where(t.terminable, t.log_stop, torch.zeros_like(t.log_stop))
    log_z = torch.full_like(t.log_z, 2.5)
    log_reward = log_z[:, None] + cumulative + log_stop
    terms = BalanceTerms(log_pf, log_stop, log_reward, t.terminable, lengths, log_z)
    for name in ("subtb", "db", "tb"):
        assert balance_loss(name, terms).item() == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name,lam", [("subtb", 1.0), ("subtb", 0.7), ("db", 1.0), ("tb", 1.0)])
def test_batch_log_z_minimizes_the_loss_over_one_value_per_prompt(seed, name, lam):
    terms = random_terms(seed, batch=9)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 2])
    estimate = batch_log_z(name, terms, groups, lam)
    assert torch.equal(estimate, estimate[torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 2])])  # one value per group
    values = torch.stack([estimate[list(groups).index(g)] for g in range(3)]).double().requires_grad_()

    def loss_at(v):
        t = BalanceTerms(terms.log_pf.double(), terms.log_stop.double(), terms.log_reward.double(),
                         terms.terminable, terms.lengths, v[groups])
        return balance_loss(name, t, lam)

    loss = loss_at(values)
    (grad,) = torch.autograd.grad(loss, values)
    assert grad.abs().max() < 1e-6  # stationary, and the loss is a convex quadratic in log Z
    for g in range(3):
        for delta in (-0.3, 0.3):
            moved = values.detach().clone()
            moved[g] += delta
            assert float(loss_at(moved)) >= float(loss) - 1e-9
