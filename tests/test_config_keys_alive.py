"""Every key of the shipped stacks changes the rendered deployment, is refused, or is informational.

A key nobody reads is worse than a missing one: an operator changes it, `pulumi up` reports nothing,
and the site silently keeps the old behaviour. The one list of keys meant to do nothing is
aiinfn/config/informational.py. How keys are mutated: tests/config_mutation.py (markers for all
strings and numbers of a stack in two renders, then one render per remaining key path in the
cheapest stack that has it; a list item path that renders the same is retried on up to two other
items before it is called dead).
"""

from __future__ import annotations

import time

from aiinfn.config.informational import INFORMATIONAL_KEYS

from .config_mutation import CHEAPEST_FIRST, Verdict, baseline, candidates, leaves, marked, try_leaves, values_seen

BUDGET_SECONDS = 90  # all three stacks, in CPU seconds of this process and its workers
SAMPLES = 3  # list items tried per key path with [] before calling it dead


def test_every_key_changes_the_render_or_is_refused() -> None:
    started, cpu_started = time.monotonic(), time.process_time()
    skip = set(INFORMATIONAL_KEYS)
    alive: set[str] = set()
    renders = 0
    for stack in CHEAPEST_FIRST:
        found, n = marked(stack, skip, alive)
        alive |= found
        renders += n + 1  # and its baseline
    by_marker = len(alive)

    seen = values_seen()
    pending = {}  # general path -> the leaves that have it, cheapest stack first
    for stack in CHEAPEST_FIRST:
        for leaf in leaves(stack):
            if leaf.general not in skip and leaf.general not in alive:
                pending.setdefault(leaf.general, []).append(leaf)
    verdicts: dict[str, Verdict] = {}
    for round_ in range(SAMPLES):
        tasks = [(group[round_], candidates(group[round_], seen)) for g, group in pending.items()
                 if len(group) > round_ and (round_ == 0 or ("[]" in g and verdicts[g].outcome in ("dead", "crash")))]
        for v in try_leaves(tasks):
            verdicts[v.leaf.general] = v
            renders += v.renders
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
    outcome = {o: sorted(g for g, v in verdicts.items() if v.outcome == o) for o in ("alive", "dead", "refused", "crash")}
    print(f"\n{by_marker + len(outcome['alive'])} key paths alive ({by_marker} by marker), "
          f"{len(outcome['refused'])} refused for every other value ({', '.join(outcome['refused'])}), "
          f"{len(skip)} informational; {renders} renders in {elapsed:.0f} s ({cpu:.0f} s CPU in this process)")
    bad = [f"{verdicts[g].leaf.key} ({verdicts[g].leaf.stack}): {verdicts[g].detail}" for g in outcome["dead"] + outcome["crash"]]
    assert not bad, ("dead config keys (make them change the render, or list them in "
                     "aiinfn/config/informational.py):\n" + "\n".join(bad))
    assert baseline("cnaf").digest != baseline("recas").digest
