"""The enforcement feedback step (enforcement.feedback_weights / feedback_step): pure, state carried by the caller."""
from __future__ import annotations

import math

import pytest

from metasched.enforcement import AgentReport, Feedback, feedback_caps, feedback_step, feedback_weights

FB = Feedback()


def kernel(written: dict[str, float], bias: dict[str, float]) -> dict[str, float]:
    """A node whose scheduler favours some groups over their weights (what fork-heavy jobs cause)."""
    eff = {g: w * bias.get(g, 1.0) for g, w in written.items()}
    return {g: 100.0 * v / sum(eff.values()) for g, v in eff.items()}


@pytest.mark.parametrize("targets, bias", [
    ({"sge": 70.0, "slurm": 30.0}, {"sge": 1.8}),                       # 70/30 measured ~81/19 without feedback
    ({"sge": 50.0, "slurm": 30.0, "spark": 20.0}, {"sge": 2.0, "spark": 0.7}),
    ({"a": 90.0, "b": 10.0}, {"b": 0.3}),
])
def test_a_biased_split_converges_to_the_target_in_bounded_steps(targets, bias):
    written, state = dict(targets), {}
    before = kernel(written, bias)
    assert max(abs(before[g] - targets[g]) for g in targets) > 5
    for _ in range(40):
        measured = kernel(written, bias)
        new, state = feedback_weights(targets, measured, set(targets), state)
        for g in targets:   # never more than one step per cycle (two groups move against each other)
            assert abs(math.log(new[g] / written[g])) <= 4 * FB.step + 1e-9
        assert sum(new.values()) == pytest.approx(sum(targets.values()), abs=0.01)
        written = new
    after = kernel(written, bias)
    assert max(abs(after[g] - targets[g]) for g in targets) <= FB.deadband + 0.5, (after, written)


def test_the_correction_is_bounded_when_a_group_does_not_respond():
    targets, state = {"a": 30.0, "b": 70.0}, {}
    for _ in range(100):   # a stays at 5 % whatever it is given (it cannot use more)
        written, state = feedback_weights(targets, {"a": 5.0, "b": 95.0}, {"a", "b"}, state)
    ratio = (written["a"] / written["b"]) / (30 / 70)
    assert ratio == pytest.approx(FB.bound ** 2, rel=0.01)     # each side at most bound times its target


def test_no_correction_without_two_busy_groups_and_old_corrections_fade():
    targets = {"a": 70.0, "b": 30.0}
    written, state = feedback_weights(targets, {"a": 100.0}, {"a"}, {})
    assert (written, state) == (targets, {})
    _, state = feedback_weights(targets, {"a": 90.0, "b": 10.0}, {"a", "b"}, {})
    assert state["a"] < 0 < state["b"]
    for _ in range(10):
        written, state = feedback_weights(targets, {}, set(), state)
    assert (written, state) == (targets, {})


def wound_up(targets, measured, cycles=60):
    state = {}
    for _ in range(cycles):
        written, state = feedback_weights(targets, measured, set(targets), state)
    return written, state


def test_new_weights_are_learnt_from_no_correction_not_from_the_last_splits():
    """90/10 stuck at 80/20 winds the weights up to their bound; when the admin asks for 50/30/20, the first
    weights written are the new targets moved by one step, not 90/10's wound-up correction carried over (main
    wrote 81/10/9 for 50/30/20 that way)."""
    written, state = wound_up({"a": 90.0, "b": 10.0, "c": 0.0}, {"a": 80.0, "b": 20.0, "c": 0.0})
    assert written["a"] > 95 and state["a"] > 0                  # wound up
    targets = {"a": 50.0, "b": 30.0, "c": 20.0}
    written, state = feedback_weights(targets, {"a": 50.0, "b": 30.0, "c": 20.0}, set(targets), state)
    assert written == targets and not state                     # on target: nothing to correct, nothing carried
    _, state = wound_up({"a": 70.0, "b": 30.0}, {"a": 80.0, "b": 20.0})
    written, _ = feedback_weights({"a": 40.0, "b": 60.0}, {"a": 45.0, "b": 55.0}, {"a", "b"}, state)
    assert 37.0 < written["a"] < 40.0                           # one step from the new targets, the right way


def test_a_slow_drift_of_the_targets_keeps_what_was_learnt_and_a_new_set_of_busy_groups_does_not():
    targets, measured = {"a": 70.0, "b": 30.0, "c": 30.0}, {"a": 80.0, "b": 20.0, "c": 0.0}
    _, state = wound_up({"a": 70.0, "b": 30.0}, {"a": 80.0, "b": 20.0})
    for k in range(8):                                          # the dynamic policy moves a's target by 0.5 a cycle
        drift = {"a": 70.0 - 0.5 * k, "b": 30.0 + 0.5 * k}
        prev = dict(state)
        _, state = feedback_weights(drift, {"a": 80.0, "b": 20.0}, {"a", "b"}, state)
        assert state["a"] <= prev["a"] + 1e-9 and state["a"] < -0.5     # still corrected, never started over
    _, state = wound_up({"a": 70.0, "b": 30.0}, {"a": 80.0, "b": 20.0})
    written, state = feedback_weights(targets, measured, {"a", "b", "c"}, state)
    assert abs(state.get("a", 0.0)) <= FB.step + 1e-9           # c joined: learnt again, one step at most


def test_within_the_deadband_nothing_moves():
    targets = {"a": 50.0, "b": 50.0}
    assert feedback_weights(targets, {"a": 50.8, "b": 49.2}, {"a", "b"}, {}) == (targets, {})


def report(mechanism="cgroup_v1", source="cgroup", pids=(3, 2)) -> AgentReport:
    return AgentReport(True, mechanism=mechanism, groups={
        "a": {"pids": pids[0], "usage_source": source}, "b": {"pids": pids[1], "usage_source": source}})


def test_feedback_step_takes_busy_groups_and_the_split_from_the_cycles_accounting():
    targets = {"a": 70.0, "b": 30.0}
    step = {"a": 900_000, "b": 100_000}          # one second, 2 cores: a got 90 %
    written, state = feedback_step(targets, report(), step, 1.0, {})
    assert written["a"] < 70 and written["b"] > 30 and state
    # a group without processes, or using (almost) no CPU, is not busy: nothing to correct
    assert feedback_step(targets, report(pids=(3, 0)), step, 1.0, {}) == (targets, {})
    assert feedback_step(targets, report(), {"a": 900_000, "b": 10_000}, 1.0, {}) == (targets, {})
    # renice and /proc-summed usage are never corrected
    assert feedback_step(targets, report(mechanism="nice"), step, 1.0, {}) == (targets, {})
    assert feedback_step(targets, report(source="procs"), step, 1.0, {}) == (targets, {})


def test_the_feedback_measures_the_last_few_seconds_of_accounting():
    from metasched.enforcement import UsageWindow
    w = UsageWindow()
    for i, (a, b) in enumerate([(0, 0), (10, 0), (20, 0), (30, 10), (40, 20), (50, 30), (60, 40), (70, 50)]):
        w.add(1, float(i), {"a": a, "b": b})
    seconds, usec = w.recent(1, 5.0)
    assert seconds == 5.0 and usec == {"a": 50, "b": 50}
    assert w.recent(1, 100.0) == (7.0, {"a": 70, "b": 50})     # all there is
    assert UsageWindow().recent(1) == (0.0, {})


# -- caps: where weights no longer move the split (fork-heavy jobs at 90/10) ------------------------------------

def floored(written, caps, floor=22.0, cores=1.84, a_takes=True):
    """A node where b gets at least ``floor`` percent of the cores whatever its weight (fork-heavy wake-ups),
    unless capped; a takes what a cap frees (or not: then the CPU is left idle). Returns (percent, cores used)."""
    b = max(floor, 100.0 * written["b"] / (written["a"] + written["b"])) / 100.0 * cores
    a = cores - b
    if "b" in caps and b > caps["b"]:
        a, b = (a + b - caps["b"] if a_takes else a), caps["b"]
    used = a + b
    return {"a": 100.0 * a / used, "b": 100.0 * b / used}, used


def run_capped(targets, cycles, fb=FB, **plant):
    written, state, caps, seen = dict(targets), {}, {}, []
    for _ in range(cycles):
        measured, used = floored(written, caps, **plant)
        written, state = feedback_weights(targets, measured, {"a", "b"}, state, fb)
        state = feedback_caps(targets, measured, {"a", "b"}, used, state, fb)
        caps = dict(state.caps)
        seen.append((measured, caps))
    return seen, state


def test_a_group_over_its_target_with_its_weight_at_the_bound_is_capped_and_the_split_follows():
    targets = {"a": 90.0, "b": 10.0}
    seen, state = run_capped(targets, 40)
    first_cap = next(i for i, (_, caps) in enumerate(seen) if caps)
    assert first_cap >= FB.cap_after                          # weights first, a cap only once they are at the bound
    assert all(abs(m["b"] - 22.0) < 0.01 for m, _ in seen[:first_cap])    # weights alone could not move it
    measured, caps = seen[-1]
    assert caps == {"b": pytest.approx(0.184, abs=0.001)} and abs(measured["b"] - 10.0) <= FB.deadband
    _, off = run_capped(targets, 40, fb=Feedback(caps=False))
    assert not off.caps


def test_a_cap_whose_cpu_no_one_takes_is_lifted_and_not_tried_again():
    seen, state = run_capped({"a": 90.0, "b": 10.0}, 40, a_takes=False)
    capped = [i for i, (_, caps) in enumerate(seen) if caps]
    assert capped and capped[-1] < 39 and not state.caps and state.no_caps
    assert len(capped) == 1                                   # lifted at the first cycle that showed the loss


def test_caps_go_with_the_group_that_is_no_longer_busy_and_with_new_weights():
    targets = {"a": 90.0, "b": 10.0}
    _, state = run_capped(targets, 40)
    assert state.caps
    measured, used = floored({"a": 90.0, "b": 10.0}, state.caps)
    _, idle = feedback_weights(targets, measured, {"a"}, state)
    assert not feedback_caps(targets, measured, {"a"}, used, idle).caps
    new = {"a": 50.0, "b": 50.0}
    _, fresh = feedback_weights(new, measured, {"a", "b"}, state)
    assert not feedback_caps(new, measured, {"a", "b"}, used, fresh).caps


def test_with_three_groups_the_ones_over_their_targets_are_capped_once_the_weights_are_spent():
    """50/30/20 where b and c keep a floor of 35 % and 25 % whatever their weights: a's weight goes to the bound
    while b's and c's are held near the middle by the re-centring; both are capped and the split follows."""
    targets, floors, cores = {"a": 50.0, "b": 30.0, "c": 20.0}, {"b": 35.0, "c": 25.0}, 1.85
    written, state, caps = dict(targets), {}, {}
    for _ in range(60):
        w = sum(written.values())
        use = {g: max(floors.get(g, 0.0), 100.0 * written[g] / w) / 100.0 * cores for g in ("b", "c")}
        use = {g: min(u, caps.get(g, u)) for g, u in use.items()}
        use["a"] = cores - use["b"] - use["c"]
        measured = {g: 100.0 * u / cores for g, u in use.items()}
        written, state = feedback_weights(targets, measured, set(targets), state)
        state = feedback_caps(targets, measured, set(targets), cores, state)
        caps = dict(state.caps)
    assert set(caps) == {"b", "c"} and all(abs(measured[g] - targets[g]) <= FB.deadband for g in targets), \
        (measured, caps)
