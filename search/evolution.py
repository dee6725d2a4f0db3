"""EvoPress-style refinement of an allocation on a true loss (e.g. KL to the unquantized model), within budget.

Each generation mutates the parent with min(U{1..3}, U{1..3}) one-level moves on tie groups, repairs every child
back into the budget (lower the item with the least proxy increase per unit of cost saved; then spend slack on
the best proxy gain per unit of cost, never undoing the mutated items), rejects duplicates, and selects in stages
on growing token counts. The parent survives unless a child beats it on the last stage's tokens (elitism), so
the result is never worse than the seed on that fitness.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from matq_compile.search.problem import Problem, Solution

log = logging.getLogger(__name__)

# fitness(allocation {layer: bits}, n_tokens) -> loss to minimise (deterministic for the same arguments).
Fitness = Callable[[Mapping[str, int], int], float]


@dataclass(frozen=True)
class EvolutionConfig:
    """Small defaults sized for a 2-core CPU; MatGPTQ uses 64 offspring, stages 16/4/1 on 2k/16k/131k tokens."""

    generations: int = 8
    offspring: int = 6  # children per generation
    stages: tuple[tuple[int, int], ...] = ((2, 256), (1, 1024))  # (survivors, tokens) per selection stage
    max_moves: int = 3  # a child makes min(U{1..max}, U{1..max}) one-level moves
    patience: int | None = None  # stop after this many generations without improvement
    seed: int = 0
    tries_per_child: int = 50  # attempts to draw a new unique child before giving up on it

    def __post_init__(self) -> None:
        if self.generations < 0 or self.offspring < 1 or self.max_moves < 1:
            raise ValueError("generations >= 0, offspring >= 1 and max_moves >= 1 are required")
        if not self.stages:
            raise ValueError("at least one selection stage is needed")
        survivors = [s for s, _ in self.stages]
        tokens = [t for _, t in self.stages]
        if any(s < 1 for s in survivors) or survivors != sorted(survivors, reverse=True) or survivors[-1] != 1:
            raise ValueError(f"stage survivors must be non-increasing and end at 1, got {survivors}")
        if any(t < 1 for t in tokens) or tokens != sorted(tokens):
            raise ValueError(f"stage token counts must be positive and non-decreasing, got {tokens}")


@dataclass(frozen=True)
class EvolutionResult:
    solution: Solution
    seed_fitness: float
    history: list[float] = field(default_factory=list)  # parent fitness after each generation
    evaluations: int = 0  # fitness calls made (cache misses)


def _step(problem: Problem, g: int, level: int, direction: int) -> int | None:
    """Next allowed level of item g one step up (+1) or down (-1), or None at the end of the range."""
    nxt = level + direction
    while 0 <= nxt < problem.proxy.shape[1]:
        if problem.allowed[g, nxt]:
            return nxt
        nxt += direction
    return None


def _moves(problem: Problem, choice: np.ndarray, direction: int, items: np.ndarray) -> list[tuple[int, int]]:
    out = []
    for g in items:
        nxt = _step(problem, int(g), int(choice[g]), direction)
        if nxt is not None:
            out.append((int(g), nxt))
    return out


def _lower_until_feasible(problem: Problem, choice: np.ndarray, frozen: np.ndarray) -> bool:
    """Lower the item with the least proxy increase per normalised cost saved until every budget holds."""
    limits = problem.limits
    while True:
        over = problem.totals(choice) > limits
        if not over.any():
            return True
        for pool in (np.flatnonzero(~frozen), np.flatnonzero(frozen)):
            best, best_ratio = None, np.inf
            for g, nxt in _moves(problem, choice, -1, pool):
                saved = ((problem.costs[:, g, choice[g]] - problem.costs[:, g, nxt]) / limits)[over].sum()
                if saved <= 0:
                    continue
                ratio = (problem.proxy[g, nxt] - problem.proxy[g, choice[g]]) / saved
                if ratio < best_ratio:
                    best, best_ratio = (g, nxt), ratio
            if best is not None:
                choice[best[0]] = best[1]
                break
        else:
            return False


def _spend_slack(problem: Problem, choice: np.ndarray, frozen: np.ndarray) -> None:
    """Raise the item with the best proxy gain per normalised cost while every budget still holds."""
    limits = problem.limits
    while True:
        totals = problem.totals(choice)
        best, best_ratio = None, 0.0
        for g, nxt in _moves(problem, choice, +1, np.flatnonzero(~frozen)):
            delta = problem.costs[:, g, nxt] - problem.costs[:, g, choice[g]]
            gain = problem.proxy[g, choice[g]] - problem.proxy[g, nxt]
            if gain <= 0 or np.any(totals + delta > limits):
                continue
            ratio = gain / max(float((delta / limits).max()), 1e-300)
            if ratio > best_ratio:
                best, best_ratio = (g, nxt), ratio
        if best is None:
            return
        choice[best[0]] = best[1]


def mutate_and_repair(problem: Problem, parent: np.ndarray, rng: np.random.Generator,
                      max_moves: int = 3) -> np.ndarray | None:
    """One child within budget, or None when the moves cannot be repaired."""
    child = parent.copy()
    frozen = np.zeros(problem.n_items, dtype=bool)
    n_moves = int(min(rng.integers(1, max_moves + 1), rng.integers(1, max_moves + 1)))
    for _ in range(n_moves):
        g = int(rng.integers(problem.n_items))
        direction = 1 if rng.random() < 0.5 else -1
        nxt = _step(problem, g, int(child[g]), direction)
        if nxt is None:
            nxt = _step(problem, g, int(child[g]), -direction)
        if nxt is not None:
            child[g] = nxt
            frozen[g] = True
    if not _lower_until_feasible(problem, child, frozen):
        return None
    _spend_slack(problem, child, frozen)
    return child if problem.feasible(child) else None


def _children(problem: Problem, parent: np.ndarray, rng: np.random.Generator,
              config: EvolutionConfig) -> list[np.ndarray]:
    seen = {parent.tobytes()}
    out: list[np.ndarray] = []
    for _ in range(config.offspring * config.tries_per_child):
        if len(out) == config.offspring:
            break
        child = mutate_and_repair(problem, parent, rng, config.max_moves)
        if child is not None and child.tobytes() not in seen:
            seen.add(child.tobytes())
            out.append(child)
    return out


def evolve(problem: Problem, seed_choice: np.ndarray, fitness: Fitness,
           config: EvolutionConfig = EvolutionConfig()) -> EvolutionResult:
    """Refine `seed_choice` (item-level, within budget) on `fitness`; every candidate stays within budget."""
    from matq_compile._log import progress

    parent = np.asarray(seed_choice, dtype=np.int64).copy()
    if parent.shape != (problem.n_items,) or not problem.feasible(parent):
        raise ValueError("the evolution seed must be an item-level choice within every budget")
    rng = np.random.default_rng(config.seed)
    cache: dict[tuple[bytes, int], float] = {}

    def score(choice: np.ndarray, tokens: int) -> float:
        key = (choice.tobytes(), tokens)
        if key not in cache:
            cache[key] = float(fitness(problem.allocation(choice), tokens))
        return cache[key]

    final_tokens = config.stages[-1][1]
    seed_fit = parent_fit = score(parent, final_tokens)
    history: list[float] = []
    stale = 0
    for gen in progress(range(config.generations), desc="evolution", total=config.generations):
        candidates = _children(problem, parent, rng, config)
        for survivors, tokens in config.stages:
            scores = [score(c, tokens) for c in candidates]
            candidates = [candidates[i] for i in np.argsort(scores, kind="stable")[:survivors]]
        best_fit = score(candidates[0], final_tokens) if candidates else np.inf
        if best_fit < parent_fit:
            parent, parent_fit, stale = candidates[0], best_fit, 0
        else:
            stale += 1
        history.append(parent_fit)
        log.info("generation %d: fitness %.6g (seed %.6g)", gen + 1, parent_fit, seed_fit)
        if config.patience is not None and stale >= config.patience:
            break
    return EvolutionResult(Solution(problem, parent, "milp+evolution", parent_fit), seed_fit, history, len(cache))
