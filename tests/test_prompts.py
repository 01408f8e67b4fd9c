"""The A1111 prompt parser: emphasis, BREAK, prompt editing and alternation, against A1111's own examples.

The tables restate the examples of A1111's `modules/prompt_parser.py` docstrings (the expected values are A1111's),
plus the cases where we deliberately refuse what A1111 guesses.
"""

import pytest

from sdplay.runtime.errors import UserError
from sdplay.runtime.prompts import Fragment, parse_emphasis, prompt_at, prompt_schedule


def runs(text: str) -> list[tuple[str, float]]:
    return [("BREAK", -1) if f.is_break else (f.text, f.weight) for f in parse_emphasis(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A1111's docstring examples.
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        # A1111's long example leaves its third '(' open, which applies ×1.1 to the rest; closed at the end, it is
        # the same prompt, and the weights are A1111's to the last bit (same multiplications in the same order).
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).)",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        # More cases of the same rules.
        ("[word]", [("word", 1 / 1.1)]),
        ("(word:1.3)", [("word", 1.3)]),
        ("( word : 0.5 )", [(" word ", 0.5)]),  # A1111 allows spaces around the weight
        ("((a))", [("a", 1.1 * 1.1)]),
        ("a (red:1.0) circle", [("a red circle", 1.0)]),  # weight 1 merges away: the same text as no syntax
        ("a [(red)] circle", [("a red circle", 1.0)]),  # 1.1 / 1.1 is exactly 1 again
        ("style: anime", [("style: anime", 1.0)]),  # a colon outside a weight is text
        ("(a:b)", [("a:b", 1.1)]),
        ("a\\\\b", [("a\\b", 1.0)]),
        ("", [("", 1.0)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
        ("aBREAK b", [("aBREAK b", 1.0)]),  # a word, not BREAK
        ("BREAK", [("", 1.0), ("BREAK", -1), ("", 1.0)]),
    ],
)
def test_emphasis_matches_a1111(text, expected):
    assert runs(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A1111's "(unbalanced" example gives [['unbalanced', 1.1]]: we name the bracket instead of guessing.
        ("(unbalanced", "'(' at character 1 that is never closed"),
        ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "'(' at character 3 that is never closed"),
        ("a [unbalanced", "'[' at character 3 that is never closed"),
        ("smile :)", "')' at character 8 that closes nothing"),
        ("((a][:b:c [d:3]", "']' at character 4 where the '(' at character 2 needs its ')'"),
        ("(a:1.2.3)", "weight ':1.2.3' at character 4, which is not a number"),
        ("(a BREAK b)", "BREAK inside the '(' at character 1"),
        ("(" * 101 + "a" + ")" * 101, "nested more than 100 deep at character 101"),
    ],
)
def test_emphasis_errors_name_the_position(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_emphasis(text)
    with pytest.raises(UserError):
        prompt_schedule(text, 10)


def test_a_negative_prompt_is_named_in_its_errors():
    with pytest.raises(UserError, match="^The negative prompt has a '\\(' at character 2"):
        parse_emphasis("a(b", label="negative prompt")


ALTERNATING = [[s, "a" if s % 2 else "(b:1.1)"] for s in range(1, 11)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A1111's docstring examples, at 10 steps.
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("a [{b|d{:.5] c", [[5, "a  c"], [10, "a {b|d{ c"]]),
        ("[a|(b:1.1)]", ALTERNATING),
        ("[fe|]male", [[s, "female" if s % 2 else "male"] for s in range(1, 11)]),
        ("[fe|||]male", [[s, "female" if s % 4 == 1 else "male"] for s in range(1, 11)]),
        # A1111's comment example, at 100 steps.
        (
            "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
            "[ in background:0.25] [shoddy:masterful:0.5]",
            [
                [25, "fantasy landscape with a mountain and an oak in foreground shoddy"],
                [50, "fantasy landscape with a lake and an oak in foreground in background shoddy"],
                [60, "fantasy landscape with a lake and an oak in foreground in background masterful"],
                [75, "fantasy landscape with a lake and an oak in background masterful"],
                [100, "fantasy landscape with a lake and a christmas tree in background masterful"],
            ],
        ),
        # More cases.
        ("a [red:blue:0.5] circle", [[5, "a red circle"], [10, "a blue circle"]]),
        ("[red:blue:1.0]", [[10, "red"]]),  # a fraction of 1 is the whole run
        ("[red:blue:0]", [[10, "blue"]]),  # step 0: `to` from the first step
        ("[a:b:0.25]", [[2, "a"], [10, "b"]]),  # 2.5 steps round down
        ("(x [a:b:5]:1.2)", [[5, "(x a:1.2)"], [10, "(x b:1.2)"]]),
        ("\\[a:b:5\\]", [[10, "\\[a:b:5\\]"]]),  # escaped brackets are text
        ("a | b", [[10, "a | b"]]),  # a '|' outside brackets is text
        ("[a:b]", [[10, "[a:b]"]]),  # no number: emphasis of "a:b", as A1111 reads it
    ],
)
def test_schedules_match_a1111(text, expected):
    if text.startswith("fantasy"):
        steps = 100
    else:
        steps = 10
    assert [[e.end_at_step, e.text] for e in prompt_schedule(text, steps)] == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a [b:c:11]", "prompt editing at character 3 that switches at step 11, but the run has 10 steps"),
        ("a [b:c:-1]", "switches at -1: use a step from 0 to 10"),
        ("[b:c:1.5]", "switches at 1.5: a number with a decimal point is a fraction of the steps"),
        ("x [b:c:5", "'[' at character 3 that is never closed"),
    ],
)
def test_schedule_errors_name_the_position(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        prompt_schedule(text, 10)


def test_the_prompt_of_each_call_is_picked_as_a1111_does():
    schedule = prompt_schedule("[a:b:3]", 10)
    # A1111 compares its 0-based denoiser call with the 1-based ends: calls 0..3 use `a`.
    assert [prompt_at(schedule, call) for call in range(6)] == ["a", "a", "a", "a", "b", "b"]
    alternating = prompt_schedule("[a|b]", 4)
    assert [prompt_at(alternating, call) for call in range(5)] == ["a", "a", "b", "a", "b"]


def test_a_fragment_is_plain_data():
    assert parse_emphasis("a BREAK b")[1] == Fragment("", 1.0, is_break=True)
