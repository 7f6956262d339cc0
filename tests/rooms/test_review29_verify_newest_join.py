"""Review 29: `edge verify` checks that every sealed segment is in *some* joined file of its source (the
union over all `joined` entries), not in the newest one, which is the one room_products and so the disc
carry once the products are re-made from a completed manifest (review 28). A re-made join that drops a
segment the stop's join held (a joiner bug, a manifest read back wrong) is named by nothing.
edge/verify/joined.py left_out_problems: `named` is taken over every join."""

from edge.verify.joined import left_out_problems

A, B, C = "seg-a", "seg-b", "seg-c"
SEALED = [(1, A), (2, B), (15, C)]  # C sealed at the next start (the stop's disk was full)


def _join(*items):
    return {"segments": [{"item": i} for i in items]}


def test_control_a_segment_sealed_after_the_only_join_is_named():
    problems = left_out_problems([(10, _join(A, B))], SEALED)
    assert len(problems) == 1 and C in problems[0].what


def test_a_remade_join_that_drops_a_segment_the_first_join_held_is_named():
    # The stop's join held A and B; the re-made join (the disc's) holds B and C only.
    problems = left_out_problems([(10, _join(A, B)), (20, _join(B, C))], SEALED)
    assert problems, "the newest join (on the disc) lacks seg-a; verify says nothing"
