"""What the loss is: JEPA latent prediction, the EMA target, SIGReg, and collapse monitors.

- `target_features`: the target encoder's tokens, layer-normed over D without affine (V-JEPA 2).
- `jepa_loss`: L1 (default, V-JEPA 2) or L2 between predicted and target features, averaged over the
  valid (non-padding) target tokens only.
- `ema_update`: target <- m * target + (1 - m) * online, parameters by foreach lerp, buffers copied.
- `sigreg`: LeJEPA's Sketched Isotropic Gaussian Regularisation, an alternative (or complement) to the
  EMA target against collapse.
- `collapse_stats`, `copy_context_loss`, `CollapseMonitor`: cheap health checks to log during training.

Nothing here synchronises with the host (no `.item()`, no data-dependent shapes), so all of it can run
every step on an accelerator; only `CollapseMonitor.check` reads values back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from worldmodel.models.layers import take_tokens

LOSS_KINDS = ("l1", "l2")


def target_features(tokens: Tensor) -> Tensor:
    """Per-token layer norm over the feature dim, no affine: the regression target of V-JEPA 2.

    tokens (..., D) -> (..., D), same dtype.
    """
    return F.layer_norm(tokens, tokens.shape[-1:])


def gather_tokens(tokens: Tensor, idx: Tensor) -> Tensor:
    """Pick tokens by index per sample: tokens (B, N, D), idx (B, K) int64 -> (B, K, D).

    Padding positions (index 0) gather token 0; mask them out with the matching `valid`.
    """
    return take_tokens(tokens, idx)


def _token_errors(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """(B, M, D) x2 -> (B, M) float32 per-token error, averaged over D."""
    diff = pred.float() - target.float()
    if kind == "l1":
        return diff.abs().mean(dim=-1)
    if kind == "l2":
        return diff.square().mean(dim=-1)
    raise ValueError(f"objectives.py: loss kind must be one of {LOSS_KINDS}, got {kind!r}")


def _per_clip_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over each clip's valid entries, then over clips: every clip weighs the same whatever its
    target count, so the loss of a batch split across DDP ranks averages to the loss of the whole batch."""
    if valid is None:
        return values.mean()
    per_clip = torch.where(valid, values, torch.zeros_like(values)).sum(1) / valid.sum(1).clamp(min=1)  # (B,)
    return per_clip.mean()


def jepa_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None, kind: str = "l1") -> Tensor:
    """Latent prediction loss (float32 scalar): averaged over each clip's valid target tokens and the
    feature dims, then over clips.

    pred, target: (B, M, D); valid: (B, M) bool (None = all valid). kind "l1": mean |pred - target|
    (V-JEPA 2's loss_exp=1); "l2": mean squared error (note: V-JEPA's loss_exp=2 would halve this).
    Padded tokens contribute nothing, whatever their values.
    """
    return _per_clip_mean(_token_errors(pred, target, kind), valid)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, in place; buffers are copied from online.

    Pass the unwrapped online module (not its DDP wrapper). `momentum` is a constant or the value of a
    schedule at this step (see schedules.py); V-JEPA 2 uses 0.99925.
    """
    if target is online:
        raise ValueError("objectives.py: ema_update got the same module as target and online; pass a copy as target")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"objectives.py: EMA momentum must be in [0, 1], got {momentum}")
    target_params = dict(target.named_parameters())
    online_params = dict(online.named_parameters())
    if target_params.keys() != online_params.keys():
        missing = sorted(set(online_params) ^ set(target_params))[:5]
        raise ValueError(f"objectives.py: ema_update: target and online modules differ in parameters (e.g. {missing})")
    names = list(online_params)
    if any(target_params[n].shape != online_params[n].shape for n in names):
        raise ValueError(f"objectives.py: ema_update: {ema_layout_problem(target, online)}")
    torch._foreach_lerp_(
        [target_params[n] for n in names], [online_params[n] for n in names], 1.0 - momentum
    )
    target_buffers = dict(target.named_buffers())
    for name, buffer in online.named_buffers():
        if name in target_buffers:
            target_buffers[name].copy_(buffer)


def ema_layout_problem(target: nn.Module, online: nn.Module, sharded: bool = False) -> str | None:
    """Why `ema_update(target, online, m)` cannot run right here, or None.

    sharded: the model is split across processes (FSDP). Each process then holds a slice of every
    parameter, and the two encoders get the same slices only when each is an FSDP unit of its own
    (their blocks nested in them): with one unit per block alone, their other weights (tubelet
    embedding, final norm) share one flat buffer with the rest of the model and are cut at different
    places, so the update would mix mismatched pieces of the two (or crash where the pieces' sizes
    differ). Otherwise every parameter must have the same shape in both."""
    if sharded and not _both_fsdp_units(target, online):
        return (
            "with FSDP, the EMA needs each encoder to be a unit of its own, so that both are split alike across "
            "processes: trainer.strategy.init_args.auto_wrap_policy [worldmodel.models.layers.Block, "
            "worldmodel.models.vit.VideoViT] (as the shipped vit_giant_fsdp config has it)"
        )
    target_params = dict(target.named_parameters())
    for name, param in online.named_parameters():
        other = target_params.get(name)
        if other is None or other.shape != param.shape:
            got = "missing" if other is None else f"of shape {tuple(other.shape)}"
            return f"the EMA target encoder's {name} is {got}, the online encoder's of {tuple(param.shape)}"
    return None


def _both_fsdp_units(*modules: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel  # (only when sharding: some builds lack it)

    return all(isinstance(m, FullyShardedDataParallel) for m in modules)


# --------------------------------------------------------------------------------------------------
# SIGReg


def _ep_quadrature(t_max: float, num_knots: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Knots t (K,), standard normal CF exp(-t^2/2) at them (K,), and trapezoid weights (K,) that
    integrate over [-t_max, t_max] (by symmetry: [0, t_max], doubled) against w(t) = exp(-t^2/2)."""
    t = torch.linspace(0.0, t_max, num_knots, device=device)  # (K,)
    gaussian_cf = torch.exp(-0.5 * t.square())  # (K,)
    step = t_max / (num_knots - 1)
    weights = torch.full_like(t, 2.0 * step)
    weights[0] = weights[-1] = step
    return t, gaussian_cf, weights * gaussian_cf


def sigreg(
    embeddings: Tensor,
    num_slices: int = 256,
    generator: torch.Generator | None = None,
    *,
    seed: int | None = None,
    t_max: float = 5.0,
    num_knots: int = 17,
) -> Tensor:
    """SIGReg, Sketched Isotropic Gaussian Regularisation (LeJEPA: Balestriero & LeCun, "LeJEPA: Provable
    and Scalable Self-Supervised Learning Without the Heuristics", arXiv:2511.08544, 2025).

    Pushes the distribution of embeddings towards the isotropic Gaussian N(0, I):

        SIGReg = mean over a in A of EP({a . z_n}),   A = `num_slices` random unit directions,
        EP(u) = N * integral |phi_N(t) - exp(-t^2/2)|^2 w(t) dt,   w(t) = exp(-t^2/2),

    where phi_N(t) = mean_n exp(i t u_n) is the empirical characteristic function of the N projections
    and exp(-t^2/2) that of N(0, 1): the Epps-Pulley test statistic of each 1-D projection. The
    integrand is even in t, so it is integrated on [0, t_max] with the trapezoid rule on `num_knots`
    knots and doubled. For N(0, I) embeddings its expectation is about 1.06 whatever N
    (`sigreg_null_level`: pure sampling noise); any departure from N(0, I) adds a term that grows
    like N, so a healthy regularised encoder sits near the null level.

    embeddings: (N, D) or (..., D) (leading dims are flattened into samples); computed in float32, with
    memory O(N * num_slices * num_knots): pass pooled embeddings or a subset of tokens.
    Directions are fresh on every call: from `generator` if given (on its device), else from `seed`
    (a CPU generator: pass the global step to use the same directions on every rank), else from
    torch's global RNG. The statistic is computed on this rank's N embeddings.
    """
    if num_slices < 1 or num_knots < 2:
        raise ValueError(
            f"objectives.py: sigreg needs num_slices >= 1 and num_knots >= 2, got {num_slices} and {num_knots}"
        )
    z = rearrange(embeddings, "... d -> (...) d").float()  # (N, D)
    with torch.autocast(z.device.type, enabled=False):  # bf16 projections would blur cos(t u) at large t
        return _sigreg(z, num_slices, generator, seed, t_max, num_knots)


def _sigreg(
    z: Tensor, num_slices: int, generator: torch.Generator | None, seed: int | None, t_max: float, num_knots: int
) -> Tensor:
    num, dim = z.shape
    if seed is not None and generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    rng_device = generator.device if generator is not None else z.device
    directions = torch.randn(dim, num_slices, generator=generator, device=rng_device).to(z.device)  # (D, S)
    directions = directions / directions.norm(dim=0, keepdim=True)
    t, gaussian_cf, weights = _ep_quadrature(t_max, num_knots, z.device)
    projected = z @ directions  # (N, S)
    angles = projected.unsqueeze(-1) * t  # (N, S, K)
    ecf_real = torch.cos(angles).mean(dim=0)  # (S, K)
    ecf_imag = torch.sin(angles).mean(dim=0)  # (S, K)
    gap = (ecf_real - gaussian_cf).square() + ecf_imag.square()  # (S, K) |phi_N(t) - phi(t)|^2
    statistic = num * (gap @ weights)  # (S,) Epps-Pulley per slice
    return statistic.mean()


def sigreg_null_level(t_max: float = 5.0, num_knots: int = 17) -> float:
    """Expected SIGReg value for N(0, I) embeddings (the level a healthy regularised encoder sits at):
    E N |phi_N(t) - phi(t)|^2 = 1 - exp(-t^2), integrated with the same quadrature."""
    t, _, weights = _ep_quadrature(t_max, num_knots, torch.device("cpu"))
    return float(((1.0 - torch.exp(-t.square())) * weights).sum())


# --------------------------------------------------------------------------------------------------
# Collapse statistics


def _effective_rank(rows: Tensor) -> Tensor:
    """exp(entropy of the normalised singular values) of the centred (M, D) matrix (Roy & Vetterli 2007).

    1 for a rank-1 (or constant) matrix, min(M - 1, D) for a perfectly spread one. Computed from the
    eigenvalues of the smaller Gram matrix, so (B*N, D) token matrices stay cheap.
    """
    # float64 (on the CPU for MPS, which has none): float32 round-off in the Gram matrix would show up
    # as sqrt(eps)-sized singular values and inflate the rank of a low-rank matrix
    x = rows.detach().to("cpu" if rows.device.type == "mps" else rows.device, torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x  # (min(M, D), min(M, D))
    singular = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()  # (min(M, D),)
    p = singular / singular.sum().clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -torch.special.xlogy(p, p).sum()
    return torch.exp(entropy).float().to(rows.device)


@torch.no_grad()
def collapse_stats(features: Tensor, gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Health statistics of target features (B, N, D) (pass `target_features(...)` of the full clip).

    - "feature_std": per-dimension std over all B*N tokens, averaged over D, of the tokens scaled to
      norm sqrt(D) (L2-normalised times sqrt(D)). About 1 for isotropic features, 0 at collapse,
      whatever D or the feature scale; for layer-normed features it equals the raw per-dim std.
    - "effective_rank": effective rank of the centred (B, D) matrix of mean-pooled clip features
      (at most B - 1: small with a small batch, compare runs at the same batch size).
    - "token_effective_rank": the same over the (B*N, D) token matrix.
    All values are 0-dim float32 tensors on the features' device.

    gather: in a multi-process run, a function that collects a tensor from every process, stacked
    (W, ...) (a LightningModule's `all_gather`): then "feature_std" and "effective_rank" are those of
    every process's clips together (the pooled features, (W*B, D), are gathered; the token moments are
    summed), and "token_effective_rank" is the mean of the processes' own values (the token matrices
    stay where they are). Every process must call it, and gets the same values.
    """
    if features.dim() != 3:
        raise ValueError(f"objectives.py: collapse_stats expects features (B, N, D), got shape {tuple(features.shape)}")
    x = features.float()
    tokens = rearrange(x, "b n d -> (b n) d")  # (B*N, D)
    scaled = F.normalize(tokens, dim=-1) * math.sqrt(tokens.shape[-1])
    pooled = x.mean(dim=1)  # (B, D)
    if gather is None:
        return {
            "feature_std": scaled.std(dim=0, correction=0).mean(),
            "effective_rank": _effective_rank(pooled),
            "token_effective_rank": _effective_rank(tokens),
        }
    # float64 moments (multi-process runs are on CUDA or CPU, which have it): E[x^2] - E[x]^2 in float32
    # left a std of ~1e-4 for collapsed features, where one process computes 0
    wide = scaled.double()
    count = torch.tensor([float(wide.shape[0])], dtype=torch.float64, device=wide.device)
    moments = gather(torch.cat([wide.sum(dim=0), wide.square().sum(dim=0), count])).sum(dim=0)  # (2D + 1,)
    dim = wide.shape[1]
    mean, mean_square = moments[:dim] / moments[-1], moments[dim : 2 * dim] / moments[-1]
    return {
        "feature_std": (mean_square - mean.square()).clamp(min=0).sqrt().mean().float(),
        "effective_rank": _effective_rank(gather(pooled).flatten(0, 1)),  # (W*B, D)
        "token_effective_rank": gather(_effective_rank(tokens).reshape(1)).mean(),
    }


@torch.no_grad()
def copy_context_loss(
    target_full: Tensor,
    context_idx: Tensor,
    context_valid: Tensor,
    target_idx: Tensor,
    target_valid: Tensor,
    kind: str = "l1",
    grid: tuple[int, int, int] | None = None,
) -> Tensor:
    """The loss of a predictor that copies context features instead of predicting: a floor to beat.

    target_full: target features of the whole clip (B, N, D) (already `target_features`-normed);
    indices and valid flags as in `MaskBatch`; measured with `jepa_loss(kind)`.

    - grid=None: every target token is predicted by the mean of its sample's valid context features.
    - grid=(t, h, w): every target token is predicted by the context token at the same spatial position
      nearest in time (the earlier one on a tie); for `FutureMask` this is "repeat the last seen frame".
      Target positions whose spatial column holds no context token at all (multi-block tubes span all
      time) fall back to the context mean.
    """
    batch, num_tokens, dim = target_full.shape
    context = gather_tokens(target_full, context_idx).float()  # (B, Nc, D)
    weights = context_valid.float().unsqueeze(-1)  # (B, Nc, 1)
    context_mean = (context * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)  # (B, D)
    prediction = context_mean.unsqueeze(1).expand(-1, target_idx.shape[1], -1)  # (B, Nt, D)
    if grid is not None:
        t_grid, h_grid, w_grid = grid
        if t_grid * h_grid * w_grid != num_tokens:
            raise ValueError(
                f"objectives.py: grid {grid} has {t_grid * h_grid * w_grid} tokens, target_full has {num_tokens}"
            )
        # dense (B, N) context mask, invalid (padding) entries scattered to nowhere
        is_context = torch.zeros(batch, num_tokens + 1, dtype=torch.bool, device=target_full.device)
        scatter_idx = torch.where(context_valid, context_idx, torch.full_like(context_idx, num_tokens))
        is_context.scatter_(1, scatter_idx, True)
        is_context = rearrange(is_context[:, :num_tokens], "b (t s) -> b t s", t=t_grid)  # (B, T, HW)
        times = torch.arange(t_grid, device=target_full.device)
        # cost of copying time c into time q: 2|q - c|, +1 if c is later (ties go to the earlier frame)
        cost = (2 * (times[:, None] - times[None, :]).abs() + (times[None, :] > times[:, None])).int()  # (Tq, Tc)
        big = 4 * t_grid
        cost = torch.where(is_context[:, None, :, :], cost[None, :, :, None], big)  # (B, Tq, Tc, HW)
        best_cost, best_time = cost.min(dim=2)  # (B, Tq, HW)
        spatial = torch.arange(h_grid * w_grid, device=target_full.device)
        source = best_time * (h_grid * w_grid) + spatial  # (B, Tq, HW) token to copy from
        has_source = rearrange(best_cost < big, "b t s -> b (t s)")  # (B, N)
        source = rearrange(source, "b t s -> b (t s)")  # (B, N)
        copied = gather_tokens(target_full, torch.gather(source, 1, target_idx)).float()  # (B, Nt, D)
        use_copy = torch.gather(has_source, 1, target_idx).unsqueeze(-1)  # (B, Nt, 1)
        prediction = torch.where(use_copy, copied, prediction)
    target = gather_tokens(target_full, target_idx)
    return jepa_loss(prediction, target, target_valid, kind)


@dataclass
class CollapseMonitor:
    """Turns `collapse_stats` into warnings. Thresholds are absolute; None disables a check.

    Defaults flag clear collapse, not mild drift: feature_std (about 1 when healthy) below 0.05, pooled
    effective rank below 1.5 (all clips alike), token effective rank below 4.
    """

    min_feature_std: float | None = 0.05
    min_effective_rank: float | None = 1.5
    min_token_effective_rank: float | None = 4.0

    def check(self, stats: dict[str, Tensor | float], batch_size: int | None = None) -> list[str]:
        """Warnings (empty when healthy). Reads values back to the host: call it every few hundred steps.

        batch_size: clips behind the pooled effective rank, which cannot exceed batch_size - 1; that check
        is skipped when the batch is too small for the limit to tell collapse from batch size.
        """
        limits = {
            "feature_std": self.min_feature_std,
            "effective_rank": self.min_effective_rank,
            "token_effective_rank": self.min_token_effective_rank,
        }
        if batch_size is not None and limits["effective_rank"] is not None and batch_size - 1 < 2 * limits["effective_rank"]:
            limits["effective_rank"] = None
        warnings = []
        for name, limit in limits.items():
            if limit is None or name not in stats:
                continue
            value = float(stats[name])
            if not math.isfinite(value) or value < limit:
                warnings.append(
                    f"possible representation collapse: {name}={value:.4g} is below {limit:.4g}; "
                    "try a lower learning rate, a higher EMA momentum (>= 0.999 for video), or SIGReg"
                )
        return warnings
