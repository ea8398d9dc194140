"""Framework-free pieces of the ADIOS objective.

Notation: ``x`` is a batch of images ``(B, C, H, W)``; ``masks`` are the masker's output
``(B, N, H, W)`` (each pixel's N values sum to 1). A masked view is ``x * (1 - m_k)``: mask k
hides the pixels it covers (normalised pixels go to 0, the dataset's mean colour).

The encoder minimises ``sum_k L(f(x_a), f(x_b * (1 - m_k)))`` for an SSL loss ``L``; the masker
maximises the same sum minus the sparsity penalty (plus the optional entropy term), see
:func:`masker_objective`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, List, Sequence

import torch
from torch import nn

#: Added to sin(pi * fraction) before the reciprocal, as in the official code.
SPARSITY_EPS = 1e-10


def apply_masks(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """All N masked copies of ``x`` as one batch.

    ``x`` (B, C, H, W), ``masks`` (B, N, H, W) -> (N * B, C, H, W), ordered mask-major:
    rows ``k * B : (k + 1) * B`` are ``x * (1 - masks[:, k])``.
    """
    _check_masks(x, masks)
    keep = 1.0 - masks.transpose(0, 1).unsqueeze(2)  # (N, B, 1, H, W)
    return (x.unsqueeze(0) * keep).flatten(0, 1)


def apply_one_mask_per_image(x: torch.Tensor, masks: torch.Tensor,
                             generator: torch.Generator | None = None,
                             choice: torch.Tensor | None = None) -> torch.Tensor:
    """ADIOS-s: each image is hidden by one of its N masks, drawn uniformly at random.

    ``x`` (B, C, H, W), ``masks`` (B, N, H, W) -> (B, C, H, W) = ``x[i] * (1 - masks[i, c_i])``
    with ``c_i ~ U{0..N-1}`` independent per image (one encoder pass instead of N). ``choice``:
    the indices ``c`` (B,) to use instead of a draw (:func:`draw_mask_choice`).
    """
    _check_masks(x, masks)
    if choice is None:
        choice = draw_mask_choice(masks.shape[0], masks.shape[1], generator)
    choice = choice.to(masks.device)
    picked = masks[torch.arange(masks.shape[0], device=masks.device), choice]  # (B, H, W)
    return x * (1.0 - picked.unsqueeze(1))


def draw_mask_choice(batch: int, num_masks: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """ADIOS-s's mask index per image, ``c ~ U{0..N-1}`` (B,), drawn on the CPU as the official
    ``torch.randint(low=0, high=N, size=(batch_size,))``."""
    return torch.randint(num_masks, (batch,), generator=generator, device="cpu")


def mask_fractions(masks: torch.Tensor) -> torch.Tensor:
    """Fraction of the image each mask covers: (B, N, H, W) -> (B, N), values in [0, 1].

    Computed in float32 at least (float64 stays float64), with autocast off: in bfloat16 a
    fraction of 0.999 already rounds to 1."""
    with _full_precision(masks):
        return _at_least_float32(masks).mean(dim=(-1, -2))


def sparsity_penalty(masks: torch.Tensor) -> torch.Tensor:
    """``sum_k mean_b 1 / sin(pi * fraction_bk)`` (scalar).

    Each term is 1 for a mask covering half the image and grows without bound as a mask
    covers nothing or everything, so the masker cannot make a mask empty or full. Equals the
    official code's ``(1 / (sin(frac * pi) + 1e-10)).mean(0).sum(0)``. Computed in float32 at
    least, with autocast off (in float16, ``1e-10`` is 0 and ``1 / sin`` overflows above
    65504 for a mask covering less than 0.0005 % of the image).
    """
    frac = mask_fractions(masks)
    with _full_precision(frac):
        return (1.0 / (torch.sin(frac * math.pi) + SPARSITY_EPS)).mean(0).sum()


def fraction_neg_entropy(masks: torch.Tensor) -> torch.Tensor:
    """``sum_b sum_k p_bk log p_bk`` with ``p_b = softmax_k(fraction_b)`` (scalar).

    The official code's optional ``alpha_entropy`` term (``Entropy()`` of the stacked mask
    fractions; it returns the negative entropy summed over the batch). Float32 at least,
    autocast off.
    """
    frac = mask_fractions(masks)
    with _full_precision(frac):
        return (torch.softmax(frac, dim=1) * torch.log_softmax(frac, dim=1)).sum()


def masker_objective(ssl_loss: torch.Tensor, masks: torch.Tensor, alpha_sparsity: float,
                     alpha_entropy: float = 0.0, entropy_groups: int = 1) -> torch.Tensor:
    """What the masker maximises: ``ssl_loss - alpha_sparsity * sparsity_penalty(masks)
    + alpha_entropy * fraction_neg_entropy(masks)``. Minimise its negative. Float32 at least
    (under mixed precision the SSL loss may come in bfloat16/float16), autocast off.

    ``entropy_groups``: the mask axis is split into this many equal groups (one per view: the
    views' masks are concatenated along it) and the entropy term is summed over the groups, each
    with its own softmax, as the official SimSiam-ADIOS-s does; 1 = one softmax over all masks
    (the official full ADIOS)."""
    penalty = sparsity_penalty(masks)
    with _full_precision(penalty):
        objective = _at_least_float32(ssl_loss) - alpha_sparsity * penalty
        if alpha_entropy:
            entropy = sum(fraction_neg_entropy(group)
                          for group in masks.chunk(entropy_groups, dim=1))
            objective = objective + alpha_entropy * entropy
    return objective


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextlib.contextmanager
def _full_precision(x: torch.Tensor) -> Iterator[None]:
    """Autocast off for ``x``'s device type (a no-op where that device has no autocast)."""
    try:
        context = torch.autocast(device_type=x.device.type, enabled=False)
    except RuntimeError:
        context = contextlib.nullcontext()
    with context:
        yield


@contextlib.contextmanager
def per_view_batch_norm(modules: Iterable[nn.Module], num_views: int) -> Iterator[None]:
    """Make every BatchNorm layer in ``modules`` normalise each of ``num_views`` equal chunks of
    its input separately, exactly as if the chunks had been forwarded one after the other.

    Batching the N masked views into one forward pass changes nothing but speed: outputs,
    gradients and running statistics are those of N separate passes (each chunk calls the
    layer's own forward). Layers in eval mode are left alone (they use running statistics).
    """
    patched: List[nn.Module] = []
    if num_views > 1:
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(layer):
                    layer.forward = _chunked_forward(layer, num_views)
                    patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.forward


def _chunked_forward(layer: nn.Module, num_views: int) -> Callable[[torch.Tensor], torch.Tensor]:
    forward = type(layer).forward

    def chunked(x: torch.Tensor) -> torch.Tensor:
        if not layer.training or x.shape[0] % num_views:
            return forward(layer, x)
        return torch.cat([forward(layer, chunk) for chunk in x.chunk(num_views)])

    return chunked


def split_outputs(outputs: Any, num_views: int) -> List[Any]:
    """Split a forward's outputs (a tensor, or a dict/list/tuple of them, batch first) into
    ``num_views`` equal chunks along the batch. Non-tensor leaves are shared."""
    if isinstance(outputs, torch.Tensor):
        return list(outputs.chunk(num_views))
    if isinstance(outputs, dict):
        parts = {key: split_outputs(value, num_views) for key, value in outputs.items()}
        return [{key: parts[key][i] for key in outputs} for i in range(num_views)]
    if isinstance(outputs, (list, tuple)):
        parts = [split_outputs(value, num_views) for value in outputs]
        return [type(outputs)(p[i] for p in parts) for i in range(num_views)]
    return [outputs] * num_views


def encode_views(encode: Callable[[torch.Tensor], Any], views: Sequence[torch.Tensor],
                 modules: Iterable[nn.Module], batched: bool = True) -> List[Any]:
    """Encode several equally sized image batches.

    ``batched=True``: one forward over ``torch.cat(views)`` with per-view BatchNorm
    statistics (:func:`per_view_batch_norm`), outputs split back per view. ``batched=False``:
    one forward per view (the official code's order). Both give the same outputs.
    """
    if not batched or len(views) == 1:
        return [encode(view) for view in views]
    with per_view_batch_norm(modules, len(views)):
        outputs = encode(torch.cat(list(views)))
    return split_outputs(outputs, len(views))


def _check_masks(x: torch.Tensor, masks: torch.Tensor) -> None:
    if x.dim() != 4 or masks.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W) and masks (B, N, H, W), got "
                         f"{tuple(x.shape)} and {tuple(masks.shape)}")
    if masks.shape[0] != x.shape[0] or masks.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(x.shape)}: "
                         "same batch size and height/width needed")


#: Which (view, view) pairs enter the loss for every mask k, with v1/v2 the two augmented
#: views and v1m/v2m their masked copies: ``masked`` = (v1, v2m) [and (v1m, v2) when both
#: views are masked], ``none`` = (v1, v2), ``both`` = (v1m, v2m) (both views masked only).
#: ``MASKED_VIEWS``: which crops are masked; ``SINGLE_MASK_CHOICES``: ADIOS-s with both views
#: masked, one mask index per image for both views or one per view (all in adios_ssl.choices).
from .choices import MASKED_VIEWS, PAIR_KINDS, SINGLE_MASK_CHOICES  # noqa: E402,F401


def adios_ssl_loss(encode: Callable[[torch.Tensor], Any],
                   pair_loss: Callable[[Any, Any], torch.Tensor],
                   views: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                   modules: Iterable[nn.Module], pairs: Sequence[str] = ("masked",),
                   single_mask: bool = False, batched: bool = True,
                   grad_through_views: bool = True,
                   directional_loss: Callable[[Any, Any], torch.Tensor] | None = None,
                   single_mask_choice: str = "shared",
                   ) -> tuple[torch.Tensor, List[torch.Tensor]]:
    """The SSL part of the ADIOS objective, ``sum_k mean_pairs L(a, b)``.

    Args:
        encode: images (B', C, H, W) -> outputs with batch-first tensors (any pytree).
        pair_loss: ``L(outputs_a, outputs_b)`` -> scalar, the SSL loss of one pair of views.
        views: the two augmented views ``(x1, x2)``, each (B, C, H, W).
        masks: per view, its masks (B, N, H, W) or None when that view is not masked.
        modules: the modules ``encode`` runs (their BatchNorm layers get per-view statistics).
        pairs: kinds of pairs per mask, see :data:`PAIR_KINDS`.
        single_mask: ADIOS-s, one random mask per image (one masked view per masked input).
        single_mask_choice: ADIOS-s with both views masked: ``shared`` = one mask index per
            image for both views (the official SimSiam-ADIOS-s), ``per_view`` = one draw per view.
        batched: encode each unmasked view once and all masked views in one forward pass;
            ``False`` is the official order (unmasked views re-encoded for every mask, masked
            views one at a time). Both give the same loss.
        grad_through_views: whether the unmasked views' outputs need gradients (the encoder
            step); the masker step passes False (they do not depend on the masker).
        directional_loss: for predictor methods whose ``pair_loss`` is the mean of two
            directional terms (SimSiam): ``D(masked_outputs, unmasked_outputs)``, the single
            term in which the masked view is predicted. When given, each ``masked`` pair
            contributes only that term and the per-mask loss is the mean over terms (other pairs
            count as two), as the official SimSiam-ADIOS without ``use_symmetry_mask``.

    Returns:
        ``(total, per_mask)`` with ``per_mask[k]`` the loss for mask k (one entry for ADIOS-s).
    """
    x1, x2 = views
    masked_idx = [i for i, m in enumerate(masks) if m is not None]
    if not masked_idx:
        raise ValueError("adios_ssl_loss needs masks for at least one view")
    modules = list(modules)
    bad = set(pairs) - set(PAIR_KINDS)
    if bad or not pairs:
        raise ValueError(f"pairs {list(pairs)}: choose a non-empty subset of {PAIR_KINDS}")
    if "both" in pairs and len(masked_idx) < 2:
        raise ValueError("pairs 'both' needs both views masked (masked_views: both)")

    if single_mask:
        if single_mask_choice not in SINGLE_MASK_CHOICES:
            raise ValueError(f"single_mask_choice={single_mask_choice!r}: choose one of "
                             f"{SINGLE_MASK_CHOICES}")
        first = masks[masked_idx[0]]
        choice = (draw_mask_choice(first.shape[0], first.shape[1])
                  if single_mask_choice == "shared" else None)
        masked = {i: [apply_one_mask_per_image(views[i], masks[i], choice=choice)]
                  for i in masked_idx}
    else:
        masked = {i: list(apply_masks(views[i], masks[i]).chunk(masks[i].shape[1]))
                  for i in masked_idx}
    num_masks = len(masked[masked_idx[0]])

    def encode_plain() -> List[Any]:
        with torch.set_grad_enabled(grad_through_views and torch.is_grad_enabled()):
            return encode_views(encode, [x1, x2] if _needs_both(masked_idx, pairs) else [x1],
                                modules, batched)

    if batched:
        plain = encode_plain()
        flat = [masked[i][k] for i in masked_idx for k in range(num_masks)]
        out = encode_views(encode, flat, modules, batched=True)
        enc_masked = {i: out[j * num_masks:(j + 1) * num_masks] for j, i in enumerate(masked_idx)}

    per_mask = []
    for k in range(num_masks):
        if batched:
            plain_k = plain
            masked_k = {i: enc_masked[i][k] for i in masked_idx}
        else:
            plain_k = encode_plain()
            masked_k = {i: encode(masked[i][k]) for i in masked_idx}
        terms, weights = [], []
        for a, b in _pair_list(masked_idx, pairs):
            out_a, out_b = _pick(a, plain_k, masked_k), _pick(b, plain_k, masked_k)
            if directional_loss is not None and a[1] != b[1]:
                masked_out, plain_out = (out_a, out_b) if a[1] else (out_b, out_a)
                terms.append(directional_loss(masked_out, plain_out))
                weights.append(1.0)
            else:
                terms.append(pair_loss(out_a, out_b))
                weights.append(1.0 if directional_loss is None else 2.0)
        if len(terms) == 1:
            per_mask.append(terms[0])
        else:
            w = torch.tensor(weights, dtype=terms[0].dtype, device=terms[0].device)
            per_mask.append((torch.stack(terms) * w).sum() / w.sum())
    return torch.stack(per_mask).sum(), per_mask


def _needs_both(masked_idx: Sequence[int], pairs: Sequence[str]) -> bool:
    return "none" in pairs or masked_idx != [1]


def _pair_list(masked_idx: Sequence[int], pairs: Sequence[str]) -> List[tuple]:
    """Pairs as (view, masked?) tuples, first view first."""
    out = []
    if "masked" in pairs:
        if 1 in masked_idx:
            out.append(((0, False), (1, True)))
        if 0 in masked_idx:
            out.append(((0, True), (1, False)))
    if "none" in pairs:
        out.append(((0, False), (1, False)))
    if "both" in pairs:
        out.append(((0, True), (1, True)))
    return out


def _pick(view: tuple, plain: List[Any], masked: dict) -> Any:
    index, is_masked = view
    return masked[index] if is_masked else plain[index]
