import pytest

from treesearch.bstar import Sample, balance_score, bstar_metrics, samples_from_tree
from treesearch.tree import Tree


def test_metrics_on_known_samples():
    problem_a = [Sample("x=1", 0.9, True), Sample("x=1 ", 0.8, True), Sample("y", 0.7, False), Sample("z=2", 0.2, True)]
    problem_b = [Sample("w", 0.95, False), Sample("v", 0.1, True)]
    m = bstar_metrics([problem_a, problem_b], threshold=0.5, n_star=2)
    assert m["pass_at_k"] == 1.0
    # distinct correct solutions: a has "x=1" (twice, modulo whitespace) and "z=2"; b has "v"
    assert m["distinct_correct"] == pytest.approx((2 + 1) / 2)
    # critic's pick: a picks 0.9 (correct), b picks 0.95 (wrong)
    assert m["exploitation"] == pytest.approx(0.5)
    # balance over unique responses: a selects "x=1" (twice, counted once) and "y", 1 of
    # them correct: min(1/2, 1) * 1/2; b selects 1, 0 correct: 0
    assert m["balance_score"] == pytest.approx((1 / 4 + 0) / 2)


def test_balance_score_counts_unique_responses():
    # hand-computed with the paper's n* = 8 (the default)
    assert balance_score([Sample("a", 0.1, True)], threshold=0.5) == 0.0
    # 8 copies of one correct solution: one unique correct response, 1/8 * 1/1
    assert balance_score([Sample("a", 0.9, True)] * 8, threshold=0.5) == pytest.approx(0.125)
    # two correct solutions sampled four times each: 2/8 * 2/2
    two = [Sample("a", 0.9, True)] * 4 + [Sample("b", 0.8, True)] * 4
    assert balance_score(two, threshold=0.5) == pytest.approx(0.25)
    # plus a wrong one selected three times: 2/8 * 2/3
    assert balance_score(two + [Sample("c", 0.7, False)] * 3, threshold=0.5) == pytest.approx(0.25 * 2 / 3)
    # eight distinct correct ones reach 1; n* = 4 caps exploration at 4
    eight = [Sample(f"s{i}", 0.9, True) for i in range(8)]
    assert balance_score(eight, threshold=0.5) == 1.0
    assert balance_score(eight[:2], threshold=0.5, n_star=4) == pytest.approx(0.5)
    # the same text from two nodes: selected by its best value
    assert balance_score([Sample("a", 0.2, True), Sample("a ", 0.9, True)], threshold=0.5, n_star=1) == 1.0
    with pytest.raises(ValueError, match="n_star"):
        bstar_metrics([], n_star=0)


def test_samples_from_tree_count_duplicates_and_skip_ungraded():
    tree = Tree()
    a, b, c = tree.add_children(
        0, ["The answer is 1.", "The answer is 2.", "The answer is 3."], terminal=[True, True, True],
        answers=["1", "2", "3"], duplicates=[2, 0, 0],
    )
    tree.reward[[a, b]] = [1.0, 0.0]  # c was never graded (NaN)
    tree.critic_value[[a, b, c]] = [0.7, 0.4, 0.9]
    samples = samples_from_tree(tree)
    assert len(samples) == 4 and sum(s.correct for s in samples) == 3
    assert sorted(s.value for s in samples) == pytest.approx([0.4, 0.7, 0.7, 0.7])


def test_a_relative_threshold_still_selects_when_the_critic_scores_sit_far_below_one_half():
    from treesearch.bstar import best_balanced

    # a PRM whose scores are all small but still rank: correct answers 0.15-0.2, wrong 0.02-0.05
    problems = [
        [Sample("right 1", 0.2, True), Sample("right 2", 0.15, True), Sample("wrong", 0.05, False)],
        [Sample("right", 0.18, True), Sample("wrong 1", 0.03, False), Sample("wrong 2", 0.02, False)],
    ]
    absolute = bstar_metrics(problems, threshold=0.5, n_star=2)
    assert absolute["balance_score"] == 0.0  # nothing reaches 0.5: the monitor is blind
    # the median of the six unique values is 0.1: only the correct ones are selected
    relative = bstar_metrics(problems, threshold=None, n_star=2, quantile=0.5)
    assert relative["threshold"] == pytest.approx(0.1)
    assert relative["balance_score"] == pytest.approx((1.0 * 1.0 + 0.5 * 1.0) / 2)
    best = best_balanced(problems, thresholds=[0.5], quantiles=[0.5, 0.9], n_star=2)
    assert best["quantile"] == 0.5 and best["balance_score"] == relative["balance_score"]
    assert [c["balance_score"] for c in best["candidates"]][0] == 0.0 and len(best["candidates"]) == 3
    with pytest.raises(ValueError, match="quantile must be in"):
        bstar_metrics(problems, threshold=None, quantile=1.5)


def test_the_sample_count_is_the_smallest_near_the_best_balance():
    from treesearch.bstar import choose_sample_count

    right = [Sample(f"right {i}", 0.9, True) for i in range(4)]
    wrong = [Sample(f"wrong {i}", 0.1, False) for i in range(4)]
    # problem A: its first 2 samples hold both right ones, later samples are wrong;
    # problem B: right answers keep coming up to the 8th sample
    a = [right[0], right[1], wrong[0], wrong[1], wrong[2], wrong[3], wrong[0], wrong[1]]
    b = [right[0], wrong[0], right[1], wrong[1], right[2], wrong[2], right[3], wrong[3]]
    out = choose_sample_count([a, b], [2, 4, 8], thresholds=[0.5], n_star=4)
    # by hand (threshold 0.5 selects the right ones only, so n' = n):
    # c=2: A 2/4, B 1/4 -> 0.375; c=4: A 2/4, B 2/4 -> 0.5; c=8: A 2/4, B 4/4 -> 0.75
    assert [out["by_count"][c]["balance_score"] for c in (2, 4, 8)] == [0.375, 0.5, 0.75]
    assert out["chosen_sample_count"] == 8
    assert choose_sample_count([a, b], [2, 4, 8], thresholds=[0.5], n_star=4, tolerance=0.6)["chosen_sample_count"] == 4
    assert choose_sample_count([a, b], [2, 4, 8], thresholds=[0.5], n_star=4, tolerance=0.5)["chosen_sample_count"] == 2
    # nothing right anywhere: sample the most
    assert choose_sample_count([wrong, wrong], [2, 4], thresholds=[0.5])["chosen_sample_count"] == 4
    with pytest.raises(ValueError, match="sample counts"):
        choose_sample_count([a], [0, 4], thresholds=[0.5])


def test_sample_counts_from_a_tree_are_drawn_in_a_random_order():
    """`samples_from_tree` puts a merged duplicate's copies side by side; with
    `shuffle_seed` a count takes a random subset of the draws instead of one solution's
    copies, the same subset every time, nested across counts."""
    from treesearch.bstar import check_sample_counts, choose_sample_count

    right = [Sample("right", 0.9, True)] * 6  # one solution sampled 6 times, merged
    others = [Sample(f"wrong {i}", 0.1, False) for i in range(2)] + [Sample("right too", 0.9, True)] * 2
    problem = right + others
    as_given = choose_sample_count([problem], [2, 4], thresholds=[0.5], n_star=2)
    assert as_given["by_count"][4]["distinct_correct"] == 1  # only copies of "right"
    draws = [choose_sample_count([problem], [2, 4, 10], thresholds=[0.5], n_star=2, shuffle_seed=s) for s in range(20)]
    assert draws[0] == choose_sample_count([problem], [2, 4, 10], thresholds=[0.5], n_star=2, shuffle_seed=0)
    assert any(d["by_count"][4]["distinct_correct"] == 2 for d in draws)  # "right too" can be among 4 draws
    for d in draws:  # nested: a count's distinct solutions never drop as the count grows
        figures = [d["by_count"][c]["distinct_correct"] for c in (2, 4, 10)]
        assert figures == sorted(figures) and figures[-1] == 2  # all 10 hold both
    with pytest.raises(ValueError, match=r"sample counts \[16\] exceed the 8 samples"):
        check_sample_counts([4, 16], 0.9, k=8)
    with pytest.raises(ValueError, match="tolerance must be in"):
        check_sample_counts([4], 1.5)
