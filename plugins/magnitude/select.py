"""Turn importance scores into keep-masks: exact counts, per group, per layer, global, N:M, by rows.

Per-tensor functions work on whole tensors (``kthvalue``/``topk`` plus a cumulative sum to break ties).
Global ranking (:func:`global_lowest`) finds the exact cut over all tensors by counting, a piece at a
time, so it never builds a tensor the size of all the scores together; its scores may be computed on
demand. Either way the cost is a few linear passes over the scores. ``True`` means *keep*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest value (1-based) of a 1-D tensor.

    For large tensors a random sample brackets the answer first, so only the few values inside the
    bracket go through ``kthvalue``; the result is the same as ``flat.kthvalue(k)``, only faster.
    """
    n = flat.numel()
    if n <= 1 << 20:
        return flat.kthvalue(k).values
    gen = torch.Generator(device=flat.device).manual_seed(n + k)
    size = 1 << 16
    sample = flat[torch.randint(n, (size,), generator=gen, device=flat.device)].sort().values
    q = k / n
    margin = 6 * math.sqrt(max(q * (1 - q), 1.0 / n) / size) + 2.0 / size
    lo_idx, hi_idx = math.floor((q - margin) * size), math.ceil((q + margin) * size)
    low = sample[lo_idx] if lo_idx >= 0 else None
    high = sample[hi_idx] if hi_idx < size else None
    inside = torch.ones_like(flat, dtype=torch.bool)
    below = 0
    if low is not None:
        under = flat < low
        below = int(torch.count_nonzero(under))
        inside &= ~under
    if high is not None:
        inside &= flat <= high
    candidates = flat[inside]
    if below < k <= below + candidates.numel():
        return candidates.kthvalue(k - below).values
    return flat.kthvalue(k).values  # the sample missed (vanishingly rare): exact fallback


def prune_lowest(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Keep-mask of a ``[G, n]`` score matrix pruning exactly ``k`` lowest entries of every row.

    ``k`` is an int or a ``[G]`` tensor of per-row counts. Ties at the cut are broken by position,
    so the count is exact even when many scores are equal (e.g. weights already zero).
    """
    groups, n = scores.shape
    k = torch.as_tensor(k, dtype=torch.long).expand(groups).clamp(0, n)
    if n == 0 or int(k.max()) == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if groups == 1:
        flat = scores[0]
        kk = int(k[0])
        cut = kth_smallest(flat, kk)
        prune = flat < cut
        need = kk - int(torch.count_nonzero(prune))
        if need > 0:
            prune[(flat == cut).nonzero().squeeze(1)[:need]] = True
        return (~prune).unsqueeze(0)
    if bool((k == k[0]).all()):
        cut = scores.kthvalue(int(k[0]), dim=1, keepdim=True).values
    else:  # rows need different counts: sort once, read the cut of each row
        ordered = scores.sort(dim=1).values
        cut = ordered.gather(1, (k - 1).clamp_min(0).unsqueeze(1))
    below = scores < cut
    tied = scores == cut
    need = (k - below.sum(1)).unsqueeze(1)
    prune = below | (tied & (tied.cumsum(1) <= need))
    prune &= (k > 0).unsqueeze(1)
    return ~prune


def _count_bounds(sizes: Sequence[int], lo: float, hi: float,
                  keep_one: bool = False) -> tuple[list[int], list[int]]:
    """Per-tensor ``(lowest, highest)`` prune counts; ``keep_one`` leaves at least one entry."""
    high = [math.floor(hi * n + 1e-9) for n in sizes]
    if keep_one:
        high = [min(h, max(n - 1, 0)) for h, n in zip(high, sizes)]
    low = [min(math.ceil(lo * n - 1e-9), h) for n, h in zip(sizes, high)]
    return low, high


#: Scores = a tensor, or a zero-argument callable yielding a tensor's scores flat, in order, in pieces.
Scores = torch.Tensor | Callable[[], Iterable[torch.Tensor]]

#: Elements per piece when a pass walks through scores: bounds the temporaries of counting.
CHUNK = 1 << 18


def global_lowest(scores: Sequence[Scores], fraction: float, lo: float = 0.0,
                  hi: float = 1.0, keep_one: bool = False) -> tuple[list[torch.Tensor], bool]:
    """Keep-masks (flat) pruning ``round(fraction * total)`` lowest scores across all tensors.

    Every tensor keeps its pruned fraction within ``[lo, hi]``: tensors that would fall outside are held
    at the bound and the rest share the remaining count (water-filling; each pass fixes at least one
    tensor, and only on the side the true solution lies). Returns the masks and whether the exact total
    was reachable within the bounds.

    The masks are those :func:`prune_lowest` gives on the concatenation of the tensors (ties at the cut
    go to the earliest positions, tensor by tensor), but nothing of the concatenation's size is built:
    the cut is found by counting, a piece at a time (:func:`global_cut`). An entry of ``scores`` may
    be a zero-argument callable yielding the tensor's scores flat, in order, in pieces of about
    :data:`CHUNK` elements; it is called whenever a pass needs those scores and nothing is kept, so
    beyond the masks the memory used is one piece.
    """
    read = [_reader(s) for s in scores]
    sizes, devices, dtype = [], [], torch.float32
    for r in read:
        size = 0
        for piece in r():
            size += piece.numel()
            device = piece.device
            dtype = torch.promote_types(dtype, _key_dtype(piece))
        sizes.append(size)
        devices.append(device if size else torch.device("cpu"))
    want = round(fraction * sum(sizes))
    low, high = _count_bounds(sizes, lo, hi, keep_one)
    fixed: dict[int, int] = {}
    free = list(range(len(read)))
    cut: Cut | None = None
    while free:
        budget = want - sum(fixed.values())
        capacity = sum(sizes[i] for i in free)
        cut = global_cut([read[i] for i in free], max(0, min(budget, capacity)), dtype)
        counts = dict(zip(free, cut.pruned))
        over = [(i, c - high[i]) for i, c in counts.items() if c > high[i]]
        under = [(i, low[i] - c) for i, c in counts.items() if c < low[i]]
        if not over and not under:
            break
        excess, deficit = sum(e for _, e in over), sum(d for _, d in under)
        if excess >= deficit:
            fixed.update({i: high[i] for i, _ in over})
        else:
            fixed.update({i: low[i] for i, _ in under})
        free = [i for i in free if i not in fixed]
    # all masks are allocated together, before the scores are read again: transients leave no holes
    masks: list[torch.Tensor | None] = [torch.empty(size, dtype=torch.bool, device=device) if i in free else None
                                        for i, (size, device) in enumerate(zip(sizes, devices))]
    for position, i in enumerate(free):
        cut.fill(masks[i], read[i], position)
    for i, count in fixed.items():
        masks[i] = prune_lowest(torch.cat(list(read[i]())).unsqueeze(0), count)[0]
    pruned = sum(sizes[i] - int(torch.count_nonzero(m)) for i, m in enumerate(masks))
    return masks, pruned == want


@dataclass
class Cut:
    """Where pruning the ``k`` lowest scores of several tensors together cuts each of them.

    ``value`` is the ``k``-th smallest score (None when ``k`` is 0); tensor ``i`` loses its scores below
    ``value`` and the first ``ties[i]`` scores equal to it, ``pruned[i]`` in all.
    """

    value: torch.Tensor | None
    ties: list[int]
    pruned: list[int]

    def fill(self, keep: torch.Tensor, read: Callable[[], Iterable[torch.Tensor]], index: int) -> None:
        """Write the keep-mask of tensor ``index`` (its scores from ``read``) into the flat bool ``keep``."""
        if self.value is None:
            keep.fill_(True)
            return
        ties, start = self.ties[index], 0
        for piece in _pieces(read, self.value.dtype):
            out = keep[start:start + piece.numel()]
            start += piece.numel()
            torch.ge(piece, self.value, out=out)
            if ties > 0:
                tied = (piece == self.value).nonzero().squeeze(1)[:ties]
                out[tied] = False
                ties -= tied.numel()


def global_cut(readers: Sequence[Callable[[], Iterable[torch.Tensor]]], k: int,
               dtype: torch.dtype = torch.float32) -> Cut:
    """The :class:`Cut` pruning the ``k`` lowest scores over all tensors that ``readers`` yield.

    Each reader yields one tensor's scores flat, in pieces; they are compared as ``dtype`` (float32 or
    float64). The ``k``-th smallest value is found exactly by a radix select on their bit patterns,
    16 bits per pass (two passes for float32): each pass only counts, a piece at a time.
    """
    if k <= 0:
        return Cut(None, [0] * len(readers), [0] * len(readers))
    width = 64 if dtype == torch.float64 else 32
    prefix: int | None = None
    remaining = k
    for shift in range(width - 16, -1, -16):
        counts = torch.zeros(1 << 16, dtype=torch.long)
        for read in readers:
            for piece in _pieces(read, dtype):
                key = _sortable(piece)
                if prefix is not None:
                    key = key[(key >> (shift + 16)) == prefix]
                key >>= shift
                if prefix is None:
                    key += 1 << 15  # the top digit carries the sign
                else:
                    key &= 0xFFFF
                counts += torch.bincount(key, minlength=1 << 16).cpu()
        total = counts.cumsum(0)
        digit = int(torch.searchsorted(total, remaining))
        remaining -= int(total[digit - 1]) if digit > 0 else 0
        prefix = digit - (1 << 15) if prefix is None else (prefix << 16) | digit
    value = _from_sortable(prefix, width)
    below, equal = [], []
    for read in readers:
        n_below = n_equal = 0
        for piece in _pieces(read, dtype):
            cut = value.to(piece.device)
            n_below += int(torch.count_nonzero(piece < cut))
            n_equal += int(torch.count_nonzero(piece == cut))
        below.append(n_below)
        equal.append(n_equal)
    need, ties = k - sum(below), []
    for count in equal:  # ties at the cut go to the earliest positions, as in the concatenation
        ties.append(min(count, need))
        need -= ties[-1]
    return Cut(value, ties, [b + t for b, t in zip(below, ties)])


def _reader(scores: Scores) -> Callable[[], Iterable[torch.Tensor]]:
    if isinstance(scores, torch.Tensor):
        return lambda: scores.reshape(-1).split(CHUNK)
    return scores


def _key_dtype(scores: torch.Tensor) -> torch.dtype:
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def _pieces(read: Callable[[], Iterable[torch.Tensor]], dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """The pieces ``read`` yields, flat, contiguous and of ``dtype``."""
    for piece in read():
        yield piece.reshape(-1).to(dtype).contiguous()


def _sortable(values: torch.Tensor) -> torch.Tensor:
    """Integers ordered as the floats ``values`` are (float32 -> int32, float64 -> int64), a new tensor.

    Non-negative floats order as their bit patterns; negative ones in reverse, so their magnitude
    bits are flipped. ``-0.0`` lands just below ``0.0``, which leaves every k-th value unchanged.
    """
    ints, width = (torch.int64, 64) if values.dtype == torch.float64 else (torch.int32, 32)
    bits = values.view(ints)
    key = bits >> (width - 1)  # -1 where negative, else 0
    key &= (1 << (width - 1)) - 1
    key ^= bits
    return key


def _from_sortable(key: int, width: int) -> torch.Tensor:
    """The float whose :func:`_sortable` key is ``key``."""
    magnitude = (1 << (width - 1)) - 1
    bits = key ^ magnitude if key < 0 else key
    ints, floats = (torch.int64, torch.float64) if width == 64 else (torch.int32, torch.float32)
    return torch.tensor(bits, dtype=ints).view(floats)


def prune_count(n: int, fraction: float, lo: float = 0.0, hi: float = 1.0, keep_one: bool = False) -> int:
    """How many of ``n`` entries ``fraction`` prunes, within ``[lo, hi]`` (and leaving one with ``keep_one``)."""
    low, high = _count_bounds([n], lo, hi, keep_one)
    return min(max(round(fraction * n), low[0]), high[0])


def layer_lowest(scores: torch.Tensor, fraction: float, lo: float = 0.0, hi: float = 1.0,
                            keep_one: bool = False) -> torch.Tensor:
    """Keep-mask pruning ``fraction`` (clamped to ``[lo, hi]``) of one tensor's lowest scores.

    ``keep_one`` leaves at least one entry (for a fraction below 1 that rounds up to everything).
    """
    flat = scores.reshape(1, -1)
    return prune_lowest(flat, prune_count(flat.shape[1], fraction, lo, hi, keep_one)).reshape(scores.shape)


def row_lowest(scores: torch.Tensor, fraction: float, lo: float = 0.0, hi: float = 1.0,
                          keep_one: bool = False) -> torch.Tensor:
    """Keep-mask pruning ``fraction`` of every output row (dim 0) separately, as Wanda compares."""
    rows = scores.reshape(scores.shape[0], -1) if scores.dim() > 1 else scores.reshape(1, -1)
    return prune_lowest(rows, prune_count(rows.shape[1], fraction, lo, hi, keep_one)).reshape(scores.shape)


def threshold_mask(scores: torch.Tensor, threshold: float, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Keep-mask dropping scores below ``threshold``, moved to the nearest count within ``[lo, hi]``."""
    keep = scores >= threshold
    n = scores.numel()
    low, high = _count_bounds([n], lo, hi)
    pruned = n - int(torch.count_nonzero(keep))
    if low[0] <= pruned <= high[0]:
        return keep
    k = min(max(pruned, low[0]), high[0])
    return prune_lowest(scores.reshape(1, -1), k).reshape(scores.shape)


def n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask keeping the ``n`` highest of every ``m`` consecutive scores along the input dimension.

    The input dimension is dim 1 (``[out, in, *kernel]``); groups run over input channels at each kernel
    position, as sparse tensor-core kernels expect. ``scores.shape[1]`` must be a multiple of ``m``.
    """
    moved = scores.movedim(1, -1)  # [out, *kernel, in]
    groups = moved.reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(moved.shape).movedim(-1, 1)


def row_scores(scores: torch.Tensor, norm: str, normalise: bool) -> torch.Tensor:
    """One score per output row (dim 0): the L1 or L2 norm of its scores, optionally per element."""
    rows = scores.reshape(scores.shape[0], -1)
    if norm == "l1":
        value = rows.abs().sum(1)
        return value / rows.shape[1] if normalise else value
    value = rows.pow(2).sum(1).sqrt()
    return value / math.sqrt(rows.shape[1]) if normalise else value
