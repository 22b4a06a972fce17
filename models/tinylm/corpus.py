"""The tiny decoder's training text: planner transcripts in Kestrel's prompt format.

Rendered with :mod:`kestrel.agent.prompt`, so the model learns the exact format
the planner sends. Deterministic for a given seed. ``DEMO_TOOLS`` are the action
schemas the transcripts use; the end-to-end tests register the same ones.
"""

from __future__ import annotations

import json
import random

from kestrel.agent.actions import builtin
from kestrel.agent.prompt import Turn, observed_denial, observed_result, render

DEVICES = ("fan", "pump", "light", "heater")
PEOPLE = {"alice": "alice@example.com", "bob": "bob@example.com", "carol": "carol@example.com"}
TOPICS = ("report", "meeting", "alarm")
OTHER = ("water the plants", "open the garage door", "feed the cat", "check the weather", "lock the door")

DEMO_TOOLS = builtin("gpio.write", "send_email")
TOOLS_TEXT = "\n".join(f"- {t.signature()}" for t in DEMO_TOOLS)


def _call(action: str, args: dict) -> str:
    return json.dumps({"action": action, "args": args}, separators=(",", ":"))


def goals(rng: random.Random) -> tuple[str, str]:
    """One (goal, call) pair."""
    if rng.random() < 0.6:
        device = rng.choice(DEVICES)
        on = rng.random() < 0.5
        form = rng.choice(("turn {s} the {d}", "switch the {d} {s}", "please turn {s} the {d}"))
        goal = form.format(s="on" if on else "off", d=device)
        return goal, _call("gpio.write", {"actuator": device, "value": 1 if on else 0})
    name, addr = rng.choice(sorted(PEOPLE.items()))
    topic = rng.choice(TOPICS)
    goal = rng.choice(("email {n} about the {t}", "send {n} a mail about the {t}")).format(n=name, t=topic)
    return goal, _call("send_email", {"to": addr, "subject": topic})


def transcripts(*, seed: int, count: int = 800) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.12:  # goals no tool here serves: hand them to the rule planner
            goal = rng.choice(OTHER)
            prompt = render(tools=TOOLS_TEXT, memory=[], goal=goal, history=[])
            out.append(prompt + " " + json.dumps({"handoff": "rules"}) + "\n")
            continue
        goal, call = goals(rng)
        memory = (
            []
            if rng.random() < 0.7
            else [
                f"the {d} is wired to {p}" for d, p in zip(rng.sample(DEVICES, 2), ("GPIO17", "GPIO27"), strict=False)
            ]
        )
        allowed = rng.random() < 0.7
        observed = (
            observed_result("actions[0]", True, json.dumps(json.loads(call)["args"]))
            if allowed
            else observed_denial("default-deny", "action not permitted")
        )
        final = json.dumps({"final": "done" if allowed else "refused"})
        transcript = render(tools=TOOLS_TEXT, memory=memory, goal=goal, history=[Turn(call, observed)])
        out.append(transcript + " " + final + "\n")
    return out
