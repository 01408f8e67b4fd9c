"""A1111's prompt syntax, parsed in plain Python: emphasis `(word:1.3)`, `BREAK`, prompt editing `[from:to:when]`
and alternation `[a|b]`.

The semantics follow AUTOMATIC1111's `modules/prompt_parser.py` (so a prompt copied from A1111 means the same
here), with one deliberate difference: where A1111 silently guesses (an unclosed or stray bracket, a weight that is
not a number, a `when` beyond the run), we raise a `UserError` that names the character position. Steps of a
schedule are A1111's: 1-based, and a `when` written with a decimal point is a fraction of the steps.
"""

import re
from dataclasses import dataclass

from sdplay.runtime.errors import UserError

# A1111's multipliers: each ( ) pair multiplies by 1.1, each [ ] pair divides by 1.1.
UP = 1.1
DOWN = 1 / 1.1

# One lexical piece of an emphasis prompt, in the order A1111 tries them: escapes first, then brackets, a
# `:weight)` closer, other closers, plain text, a lone colon.
_EMPHASIS_PIECE = re.compile(
    r"""
    \\[()\[\]\\]            # an escaped bracket or backslash: the literal character
    | \\                    # a lone backslash: dropped, as A1111 does
    | [(\[]                 # an opener
    | :\s*([+-]?[.\d]+)\s*\)  # `:1.3)`: closes a ( with an explicit weight
    | [)\]]                 # a closer
    | [^\\()\[\]:]+         # plain text
    | :                     # a colon that is just text ("style: anime")
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
# Brackets nested deeper than this are refused: nobody means 100 levels, and the schedule's tree is walked
# recursively.
MAX_NESTING = 100
# A `when` of prompt editing: a whole step number, or a fraction with a decimal point.
_WHEN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight, or a `BREAK` (which starts a new 75-token chunk; text is empty)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


@dataclass(frozen=True)
class ScheduledPrompt:
    """A plain prompt (emphasis syntax kept) that applies up to and including step `end_at_step` (1-based)."""

    end_at_step: int
    text: str


def parse_emphasis(text: str, label: str = "prompt") -> list[Fragment]:
    """Split `text` into runs of equal weight, as A1111's `parse_prompt_attention` does.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.3)` multiplies by 1.3; nesting multiplies; `\\(` `\\)`
    `\\[` `\\]` `\\\\` are literal characters; `BREAK` (capitals, as a word) outside brackets starts a new chunk.
    Adjacent runs of exactly equal weight merge, so `a (red:1.0) circle` is the single run `a red circle`.
    `UserError` (naming the character) for an unclosed or stray bracket, a weight that is not a number, or a
    `BREAK` inside brackets (A1111 would encode it as the word "break" with a negative weight).
    """
    parsed = _Emphasis(label)
    for match in _EMPHASIS_PIECE.finditer(text):
        piece, weight, position = match.group(0), match.group(1), match.start()
        if piece.startswith("\\"):
            parsed.runs.append([piece[1:], 1.0, False])
        elif piece in ("(", "["):
            parsed.open(piece, position)
        elif weight is not None:
            parsed.close_weighted(weight, position, position + len(piece) - 1)
        elif piece == ")":
            parsed.close(")", position, UP)
        elif piece == "]":
            parsed.close("]", position, DOWN)
        else:
            parsed.add_text(piece)
    return parsed.fragments()


class _Emphasis:
    """One `parse_emphasis` under way: the runs so far, as [text, weight, is_break] lists whose weights change as
    brackets close, and the brackets still open, as (bracket, character position, first run it covers)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.runs: list[list] = []
        self.brackets: list[tuple[str, int, int]] = []

    def open(self, bracket: str, position: int) -> None:
        self.brackets.append((bracket, position, len(self.runs)))
        if len(self.brackets) > MAX_NESTING:
            raise UserError(
                f"The {self.label} has brackets nested more than {MAX_NESTING} deep at character {position + 1}."
            )

    def close(self, closer: str, position: int, factor: float) -> None:
        """Close the last open bracket with `closer` (at `position`), multiplying the runs it covers by `factor`."""
        for run in self.runs[self._opened(closer, position) :]:
            run[1] *= factor

    def close_weighted(self, weight: str, position: int, closer_position: int) -> None:
        """Close a `(` with `:weight)` (the colon at `position`, the `)` at `closer_position`)."""
        first = self._opened(")", closer_position)  # a stray `)` is the first thing to say
        try:
            factor = float(weight)
        except ValueError:
            raise UserError(
                f"The {self.label} has the weight ':{weight}' at character {position + 2}, which is not a number: "
                "write it like (word:1.3)."
            ) from None
        for run in self.runs[first:]:
            run[1] *= factor

    def _opened(self, closer: str, position: int) -> int:
        """Pop the bracket that `closer` closes and return the first run it covers; `UserError` if it closes
        nothing or the wrong kind."""
        opener = "(" if closer == ")" else "["
        if not self.brackets:
            raise UserError(
                f"The {self.label} has a '{closer}' at character {position + 1} that closes nothing: remove it, or "
                f"write '\\{closer}' for the character itself."
            )
        bracket, start, first = self.brackets.pop()
        if bracket != opener:
            raise UserError(
                f"The {self.label} has a '{closer}' at character {position + 1} where the '{bracket}' at character "
                f"{start + 1} needs its '{')' if bracket == '(' else ']'}'."
            )
        return first

    def add_text(self, piece: str) -> None:
        """Plain text, split at each `BREAK` (refused inside brackets)."""
        for i, part in enumerate(_BREAK.split(piece)):
            if i > 0:
                if self.brackets:
                    bracket, start, _ = self.brackets[-1]
                    raise UserError(
                        f"The {self.label} has BREAK inside the '{bracket}' at character {start + 1}: BREAK starts "
                        "a new chunk of the prompt, so put it outside brackets."
                    )
                self.runs.append(["", 1.0, True])
            self.runs.append([part, 1.0, False])

    def fragments(self) -> list[Fragment]:
        """The finished runs, adjacent ones of equal weight merged; `UserError` for a bracket never closed."""
        if self.brackets:
            bracket, start, _ = self.brackets[-1]
            closer = ")" if bracket == "(" else "]"
            raise UserError(
                f"The {self.label} has a '{bracket}' at character {start + 1} that is never closed: add a "
                f"'{closer}', or write '\\{bracket}' for the character itself."
            )
        merged: list[list] = [self.runs[0] if self.runs else ["", 1.0, False]]
        for run in self.runs[1:]:
            last = merged[-1]
            # Weights compare exactly, as in A1111: (a)(b) merge, ((a)) and (a:1.21) do not (1.1 * 1.1 != 1.21).
            if not run[2] and not last[2] and run[1] == last[1]:
                last[0] += run[0]
            else:
                merged.append(run)
        return [Fragment(t, w, b) for t, w, b in merged]


# Prompt editing and alternation: a small tree of the prompt, then one plain prompt per step.


@dataclass
class _Bracket:
    """A bracketed part of the prompt; inside `[ ]`, the top-level ':' and '|' are kept as separators."""

    opener: str
    position: int
    children: list  # str (verbatim text), _Bracket, or _Separator


@dataclass(frozen=True)
class _Separator:
    char: str  # ":" or "|"


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`: `before` up to step `when`, `after` from the next step on."""

    before: list
    after: list
    when: int


@dataclass(frozen=True)
class _Alternate:
    """`[a|b|...]`: option (step - 1) mod n at each step."""

    options: list[list]


def _tree(text: str) -> list:
    """The prompt as nested brackets. Escaped characters stay verbatim (with their backslash) for the emphasis
    parser; `parse_emphasis` has already checked that brackets balance."""
    root: list = []
    stack: list[_Bracket] = []
    i = 0
    while i < len(text):
        char = text[i]
        children = stack[-1].children if stack else root
        if char == "\\":
            children.append(text[i : i + 2])
            i += 2
            continue
        if char in "([":
            bracket = _Bracket(char, i, [])
            children.append(bracket)
            stack.append(bracket)
        elif char in ")]" and stack:
            stack.pop()
        elif char in ":|" and stack and stack[-1].opener == "[":
            children.append(_Separator(char))
        else:
            children.append(char)
        i += 1
    return root


def _split(children: list, char: str) -> list[list]:
    parts: list[list] = [[]]
    for child in children:
        if isinstance(child, _Separator) and child.char == char:
            parts.append([])
        else:
            parts[-1].append(child)
    return parts


def _verbatim(children: list) -> str:
    out = []
    for child in children:
        if isinstance(child, _Bracket):
            out.append(child.opener + _verbatim(child.children) + (")" if child.opener == "(" else "]"))
        elif isinstance(child, _Separator):
            out.append(child.char)
        else:
            out.append(child)
    return "".join(out)


def _when(text: str, position: int, steps: int, label: str) -> int | None:
    """The last step of `before` for a `when` text, or None when `text` is not a number (then `[...]` is emphasis)."""
    text = text.strip()
    if not _WHEN.fullmatch(text):
        return None
    value = float(text)
    where = f"The {label} has prompt editing at character {position + 1} that switches at"
    if value < 0:
        raise UserError(f"{where} {text}: use a step from 0 to {steps}, or a fraction like 0.5.")
    if "." in text:
        if value > 1:
            raise UserError(
                f"{where} {text}: a number with a decimal point is a fraction of the steps (0 to 1); write a whole "
                "number for a step."
            )
        return int(value * steps)
    if value > steps:
        raise UserError(f"{where} step {text}, but the run has {steps} steps.")
    return int(value)


def _resolve(children: list, steps: int, label: str) -> list:
    """Turn `[ ]` brackets that are prompt editing or alternation into `_Edit`/`_Alternate`; the rest stay."""
    out: list = []
    for child in children:
        if not isinstance(child, _Bracket):
            out.append(child)
            continue
        inner = _resolve(child.children, steps, label)
        if child.opener == "[":
            parts = _split(inner, ":")
            when = _when(_verbatim(parts[-1]), child.position, steps, label) if len(parts) in (2, 3) else None
            if when is not None:
                # A '|' inside an edit is text (A1111: "[{b|d{:.5]" edits in "{b|d{").
                before, after = (parts[0], parts[1]) if len(parts) == 3 else ([], parts[0])
                out.append(_Edit(_separators_as_text(before), _separators_as_text(after), when))
                continue
            options = _split(inner, "|")
            if len(parts) == 1 and len(options) > 1:
                out.append(_Alternate(options))
                continue
        out.append(_Bracket(child.opener, child.position, _separators_as_text(inner)))
    return out


def _separators_as_text(children: list) -> list:
    return [child.char if isinstance(child, _Separator) else child for child in children]


def _steps_of(nodes: list, steps: int) -> set[int]:
    """The steps at which some part of the prompt changes (A1111 collects them from every branch)."""
    found: set[int] = set()
    for node in nodes:
        if isinstance(node, _Edit):
            if node.when >= 1:
                found.add(node.when)
            found |= _steps_of(node.before, steps) | _steps_of(node.after, steps)
        elif isinstance(node, _Alternate):
            found |= set(range(1, steps + 1))
            for option in node.options:
                found |= _steps_of(option, steps)
        elif isinstance(node, _Bracket):
            found |= _steps_of(node.children, steps)
    return found


def _text_at(nodes: list, step: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Edit):
            out.append(_text_at(node.before if step <= node.when else node.after, step))
        elif isinstance(node, _Alternate):
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step))
        elif isinstance(node, _Bracket):
            closer = ")" if node.opener == "(" else "]"
            out.append(node.opener + _text_at(node.children, step) + closer)
        else:
            out.append(node)
    return "".join(out)


def prompt_schedule(text: str, steps: int, label: str = "prompt") -> list[ScheduledPrompt]:
    """Which plain prompt applies up to which step, as A1111's `get_learned_conditioning_prompt_schedules`.

    `[from:to:when]` uses `from` up to step `when` and `to` after it; `[to:when]` adds `to` after `when`;
    `[from::when]` removes `from` after `when`; a `when` with a decimal point is a fraction of `steps` (rounded
    down). `[a|b]` alternates a, b, a, ... one step each. The plain prompts keep their emphasis syntax.
    `UserError` for unbalanced brackets or a `when` outside the run, naming the character.
    """
    parse_emphasis(text, label)  # checks brackets and weights, with positions in the text as typed
    nodes = _resolve(_tree(text), steps, label)
    ends = sorted(_steps_of(nodes, steps) | {steps})
    return [ScheduledPrompt(end, _text_at(nodes, end)) for end in ends]


def prompt_at(schedule: list[ScheduledPrompt], call: int) -> str:
    """The prompt for the denoiser call `call` (0-based), as A1111 picks it: the first entry with call <= end.

    A1111 counts its denoiser calls from 0 against 1-based ends, so `[a:b:3]` uses `a` for calls 0 to 3.
    """
    for entry in schedule:
        if call <= entry.end_at_step:
            return entry.text
    return schedule[-1].text
