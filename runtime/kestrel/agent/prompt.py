"""The planner's prompt format (pure). Specified in docs/planner.md.

::

    <HEADER>
    tools:
    - gpio.write {"pin": string, "value": 0|1}: set an output pin
    memory:
    - the fan is on pin FAN
    goal: turn on the fan
    > {"action":"gpio.write","args":{"pin":"FAN","value":1}}
    < allowed (actions[0]); result: {"pin": "FAN", "value": 1}
    >

The prompt ends with ``>`` (no space: byte-level BPE tokenizers attach the space
to the next token, so a trailing space would be a token never seen in training).
The model continues after it and its reply ends at the first newline.
The tiny test model (models/tinylm) is trained on transcripts rendered by this
module, so changing the format means rebuilding it (its recipe digest covers this file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["HEADER", "STOP", "Turn", "render", "fit", "observed_result", "observed_denial", "observed_invalid"]

HEADER = (
    "You are the planner of a Kestrel agent. Reply with one JSON object on one line: "
    '{"action": NAME, "args": {...}} to call a tool, {"final": TEXT} when the goal is met, '
    '{"handoff": "rules"} to let the rule planner act. The owner\'s policy decides every call.'
)
STOP = "\n"


@dataclass(frozen=True)
class Turn:
    """One exchange: what the model said, and what the runtime answered."""

    said: str
    observed: str


def _one_line(text: str) -> str:
    return " ".join(text.split())


def observed_result(rule: str, ok: bool, summary: str) -> str:
    return f"allowed ({rule}); {'result' if ok else 'failed'}: {summary}"


def observed_denial(rule: str, reason: str) -> str:
    return f"denied by policy ({rule}): {reason}"


def observed_invalid(code: str, message: str) -> str:
    return f"invalid ({code}): {message}; reply with one valid JSON object"


def render(*, tools: str, memory: Sequence[str], goal: str, history: Sequence[Turn]) -> str:
    mem = "".join(f"- {_one_line(m)}\n" for m in memory) or "- (none)\n"
    turns = "".join(f"> {_one_line(t.said)}\n< {_one_line(t.observed)}\n" for t in history)
    return f"{HEADER}\ntools:\n{tools}\nmemory:\n{mem}goal: {_one_line(goal)}\n{turns}>"


def fit(
    *,
    tools: str,
    memory: Sequence[str],
    goal: str,
    history: Sequence[Turn],
    budget: int,
    count: Callable[[str], int],
) -> tuple[str, int, int]:
    """The longest prompt within ``budget`` tokens.

    Memory items are kept best-first while they fit; then the oldest turns are
    dropped (the newest turn is always kept). Returns (prompt, memory kept,
    turns dropped). Raises ValueError if even the bare prompt does not fit.
    """
    hist = list(history)
    dropped = 0
    while True:
        bare = render(tools=tools, memory=[], goal=goal, history=hist)
        if count(bare) <= budget or len(hist) <= 1:
            break
        hist.pop(0)
        dropped += 1
    if count(bare) > budget:
        raise ValueError(f"the prompt needs {count(bare)} tokens without memory; the budget is {budget}")
    kept: list[str] = []
    for item in memory:
        candidate = render(tools=tools, memory=kept + [item], goal=goal, history=hist)
        if count(candidate) > budget:
            break
        kept.append(item)
    return render(tools=tools, memory=kept, goal=goal, history=hist), len(kept), dropped
