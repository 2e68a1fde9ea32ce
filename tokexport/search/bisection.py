"""The binary search both searches share: :class:`Bisection` (the smallest feasible index, one evaluation
per step, its possible next steps listable ahead so they can be evaluated in parallel) and
:func:`bisect_smallest` (the smallest feasible value of an ascending grid, within an evaluation budget)."""

from __future__ import annotations

from collections.abc import Callable


class Bisection:
    """The binary search for the smallest feasible index in ``[lo, hi]`` (``hi`` feasible), one evaluation per
    step, at most ``max_n`` steps. Its state is small, so the steps it may take next can be listed ahead
    (:meth:`frontier`) and evaluated in parallel: replaying the search over those results takes exactly
    the path the sequential search takes, so both pick the same index."""

    def __init__(self, lo: int, hi: int, max_n: int | None = None):
        self.lo, self.hi, self.n, self.max_n = lo, hi, 0, max_n

    @property
    def done(self) -> bool:
        return not (self.lo < self.hi and (self.max_n is None or self.n < self.max_n))

    def next(self) -> int:
        return (self.lo + self.hi) // 2

    def step(self, feasible: bool) -> None:
        mid = self.next()
        self.n += 1
        if feasible:
            self.hi = mid
        else:
            self.lo = mid + 1

    def frontier(self, width: int) -> list[int]:
        """Up to ``width`` indices the search may evaluate next, breadth-first over its decision tree (the
        next step first): what to evaluate in parallel in one round."""
        out, queue = [], [(self.lo, self.hi, self.n)]
        while queue and len(out) < width:
            lo, hi, n = queue.pop(0)
            if not lo < hi or (self.max_n is not None and n >= self.max_n):
                continue
            mid = (lo + hi) // 2
            if mid not in out:
                out.append(mid)
            queue += [(lo, mid, n + 1), (mid + 1, hi, n + 1)]
        return out


def bisect_smallest(
    grid: list,
    start: int,
    evaluate: Callable[[object], bool],
    max_evals: int,
    prefetch: Callable[[list], None] | None = None,
    width: int = 1,
) -> tuple[int, bool]:
    """Index of the smallest feasible value of ascending ``grid``, assuming feasibility is monotone (more never
    hurts): ``grid[start]`` is feasible (evaluated by the caller); values below are bisected with at most
    ``max_evals`` evaluations. Returns (index, converged): when the evaluations run out, the smallest feasible
    value evaluated (every smaller value evaluated was infeasible). ``prefetch`` (with ``width`` > 1): called
    before each step with the up to ``width`` values the search may need next (:meth:`Bisection.frontier`),
    to evaluate them in parallel; ``evaluate`` must then answer from what was prefetched. The path, and so
    the index, is the sequential search's."""
    b = Bisection(0, start, max_evals)
    while not b.done:
        if prefetch is not None and width > 1:
            prefetch([grid[i] for i in b.frontier(width)])
        b.step(evaluate(grid[b.next()]))
    return b.hi, b.lo >= b.hi
