"""The frame memo: at inference, frames seen in the previous call are not encoded again.

A control loop hands the encoder the last ``n_obs_steps`` frames of every camera at each call;
all but the newest were in the previous call. :class:`FrameMemo` remembers, per camera, the frames
(with their object masks) of the previous inference call and the head outputs computed for them;
:meth:`FrameMemo.lookup` matches a new batch against them (a random-projection fingerprint,
confirmed by exact equality) and returns a :class:`MemoLookup`: which rows are remembered, and the
distinct rows still to encode (a frame repeated within one call, as at the start of an episode, is
encoded once). Remembered outputs are tied to the weights and the autocast state they were
computed with (:meth:`FrameMemo.tie`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["FrameMemo", "MemoLookup", "memo_rows"]


class MemoLookup:
    """How a camera batch is served: rows seen in the previous call, and the distinct rows to encode.

    ``missing`` are the rows to encode: one row per distinct frame that the previous call did not
    see (at the start of an episode the queue repeats the first frame ``n_obs_steps`` times: it is
    encoded once). Every other row is a copy of a remembered output (``hits``) or of the encoded
    output of an equal row of this call (``owners``).
    """

    def __init__(
        self,
        x: torch.Tensor,
        fingerprints: torch.Tensor,
        hits: torch.Tensor,
        sources: torch.Tensor,
        previous: torch.Tensor | None,
    ) -> None:
        self.n = n = len(x)
        self.fingerprints = fingerprints
        self.hits = hits  # (n,) bool
        self.sources = sources  # (n,) row of the previous call for each hit
        self.previous = previous  # (m, D) outputs of the previous call
        self.new = (~hits).nonzero().squeeze(1)  # rows the previous call did not see
        # equal rows among the new ones: the first row with the same fingerprint, confirmed by exact
        # equality (a fingerprint collision or a NaN leaves a row on its own)
        prints = fingerprints[self.new]
        same = prints[:, None] == prints[None, :]
        first = same.to(torch.uint8).argmax(dim=1) if len(prints) else self.new
        own = torch.arange(len(prints), device=x.device)
        copy = (first != own) & same[own, first]
        if bool(copy.any()):
            rows = x[self.new]
            cand = copy.nonzero().squeeze(1)
            copy[cand] = (rows[cand] == rows[first[cand]]).reshape(len(cand), -1).all(dim=1)
        first = torch.where(copy, first, own)
        encode = ~copy  # a row is encoded when it copies no earlier row; the rows it copies are encoded
        self.missing = self.new[encode]
        self.owners = (encode.cumsum(0) - 1)[first]  # (len(new),) row of ``missing`` serving each new row
        self.plain = len(self.missing) == n  # every row encoded, in order: the encoded outputs as they are

    def merge(self, fresh: torch.Tensor | None) -> torch.Tensor:
        """``(n, D)``: remembered outputs for hits, ``fresh`` (rows of ``missing``) for the rest."""
        if fresh is not None and self.plain:
            return fresh
        like = self.previous if fresh is None else fresh
        dtype = like.dtype if self.previous is None else self.previous.dtype
        out = like.new_empty(self.n, like.shape[1], dtype=dtype)
        if self.previous is not None:
            out[self.hits] = self.previous[self.sources[self.hits]]
        if fresh is not None:
            out[self.new] = fresh.to(out.dtype)[self.owners]
        return out


class FrameMemo:
    """The frames of the previous inference call per camera, with their head outputs.

    Rows are matched by a random projection fingerprint, then confirmed by exact equality.
    Remembered outputs are tied to the weights and the autocast state they were computed with
    (:meth:`tie`): any change of a parameter or buffer of the module (in place, by
    ``load_state_dict``, an optimizer step, ``.to()`` or a replaced ``Parameter``), or entering or
    leaving ``torch.autocast`` (or changing its dtype), forgets them.
    """

    def __init__(self) -> None:
        self.frames: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.prints: dict[str, torch.Tensor] = {}
        self._weights: dict[str, torch.Tensor] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._tree: tuple[int, tuple[int, ...], list[nn.Module]] | None = None  # (root id, children, modules)
        self._held: list[torch.Tensor] = []

    def clear(self) -> None:
        self.frames.clear()
        self.outputs.clear()
        self.prints.clear()
        self._stamp = None
        self._held = []

    def tie(self, module: nn.Module, device_type: str) -> bool:
        """Forget remembered frames if the weights or the autocast state changed since the last call.

        Outputs computed under ``torch.autocast`` differ from fp32 ones (and between autocast
        dtypes), so the autocast state of ``device_type`` (the frames' device) is part of the stamp.

        The stamp of a tensor is its identity, storage address and version counter (which every
        in-place operation increments, ``load_state_dict``'s copies included). The module tree is
        walked once and re-walked only when a submodule is replaced (e.g. by LoRA): about 0.2 ms
        per call for two cameras at 224 px instead of 1 ms for ``parameters()`` / ``buffers()``.

        Returns:
            ``False`` when the weights cannot be stamped (inference-mode tensors have no version
            counter): the memo is then not used for this call.
        """
        tree = self._tree
        if tree is None or tree[0] != id(module) or tree[1] != _children(tree[2]):
            modules = list(module.modules())
            tree = self._tree = (id(module), _children(modules), modules)
        tensors = [t for m in tree[2] for d in (m._parameters, m._buffers) for t in d.values() if t is not None]
        try:
            weights = tuple((id(t), t.data_ptr(), t._version) for t in tensors)
        except RuntimeError:  # inference tensors do not track versions
            self.clear()
            return False
        autocast = torch.is_autocast_enabled(device_type)
        stamp = (device_type, autocast, torch.get_autocast_dtype(device_type) if autocast else None, weights)
        if stamp != self._stamp:
            self.clear()
            self._stamp = stamp
            self._held = tensors  # stamped tensors stay alive: their ids cannot be reused while compared
        return True

    def _fingerprint(self, key: str, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1)
        weights = self._weights.get(key)
        if weights is None or weights.shape[0] != flat.shape[1] or weights.device != flat.device:
            g = torch.Generator().manual_seed(0)
            weights = torch.rand(flat.shape[1], generator=g, dtype=torch.float64).to(flat.device)
            self._weights[key] = weights
        # an elementwise product reduced per row (not a matmul, whose blocking can differ between
        # rows) gives equal rows bit-equal fingerprints wherever they sit in the batch
        return (flat.to(torch.float64) * weights).sum(dim=1)

    def lookup(self, key: str, x: torch.Tensor) -> MemoLookup:
        """Match ``x`` (``(n, ...)``, see :func:`memo_rows`) against camera ``key``'s remembered rows."""
        n = len(x)
        prints = self._fingerprint(key, x)
        old = self.frames.get(key)
        if old is None or old.shape[1:] != x.shape[1:] or old.dtype != x.dtype or old.device != x.device:
            none = torch.zeros(n, dtype=torch.bool, device=x.device)
            return MemoLookup(x, prints, none, torch.zeros(n, dtype=torch.long, device=x.device), None)
        equal = prints[:, None] == self.prints[key][None, :]
        sources = equal.to(torch.uint8).argmax(dim=1)
        hits = equal.any(dim=1) & (x == old[sources]).reshape(n, -1).all(dim=1)
        return MemoLookup(x, prints, hits, sources, self.outputs[key])

    def store(self, key: str, x: torch.Tensor, outputs: torch.Tensor, lookup: MemoLookup) -> None:
        """Remember this call's rows ``x`` of camera ``key`` and their outputs ``(n, D)``."""
        self.frames[key] = x.detach().clone()
        self.outputs[key] = outputs.detach()
        self.prints[key] = lookup.fingerprints


def memo_rows(x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """What a memo entry must match: ``(N, ...)`` frames, and their object masks when there are any."""
    if masks is None:
        return x
    dtype = torch.promote_types(x.dtype, masks.dtype)
    return torch.cat([x.reshape(len(x), -1).to(dtype), masks.reshape(len(masks), -1).to(dtype)], dim=1)


def _children(modules: list[nn.Module]) -> tuple[int, ...]:
    """Identities of every child of each module: changes when a submodule is replaced."""
    return tuple(id(c) for m in modules for c in m._modules.values())
