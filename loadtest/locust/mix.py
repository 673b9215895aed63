"""The Mixed scenario's traffic profile: weights per action, parsed from `--mix`.

Kept apart from the locustfile: importing locust monkey-patches the process with gevent.
"""

ACTIONS = ("classify_unique", "classify_repeated", "search", "add_item")
DEFAULT_MIX = "classify_unique=6,classify_repeated=3,search=2,add_item=1"


def parse_mix(text: str) -> dict[str, float]:
    """`name=weight,...` to weights; unknown names, negative or all-zero weights are errors."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in ACTIONS:
            raise ValueError(f"--mix: unknown action {name!r}; known: {', '.join(ACTIONS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--mix: {part!r} is not name=number") from None
        if weights[name] < 0:
            raise ValueError(f"--mix: negative weight in {part!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"--mix: no positive weight in {text!r}")
    return weights
