"""Content checks for load-test responses: a 200 with a wrong body is a failure too.

Each check returns None when the body is what a client relies on, else what is wrong.
"""

from typing import Any

_SCORE_SLACK = 1e-3  # float32 probabilities and cosines can overshoot their bounds slightly


def classification_problem(body: Any, top_k: int) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("predictions"), list):
        return "no predictions list"
    predictions = body["predictions"]
    if not 1 <= len(predictions) <= top_k:
        return f"{len(predictions)} predictions for top_k={top_k}"
    scores = []
    for prediction in predictions:
        label, score = prediction.get("label"), prediction.get("score")
        if not isinstance(label, str) or not label:
            return f"prediction without a label: {prediction}"
        if not isinstance(score, int | float) or not 0 <= score <= 1 + _SCORE_SLACK:
            return f"score outside [0, 1]: {prediction}"
        scores.append(score)
    if scores != sorted(scores, reverse=True):
        return f"scores not in descending order: {scores}"
    if sum(scores) > 1 + _SCORE_SLACK:
        return f"top-{top_k} probabilities sum to {sum(scores):.4f} > 1"
    return None


def search_problem(body: Any, k: int) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        return "no results list"
    results = body["results"]
    if len(results) > k:
        return f"{len(results)} results for k={k}"
    scores = []
    for result in results:
        score = result.get("score")
        if not isinstance(result.get("id"), str) or not isinstance(score, int | float):
            return f"result without an id or score: {result}"
        if not -1 - _SCORE_SLACK <= score <= 1 + _SCORE_SLACK:
            return f"cosine outside [-1, 1]: {result}"
        scores.append(score)
    if scores != sorted(scores, reverse=True):
        return f"results not ranked by score: {scores}"
    return None


def item_problem(body: Any, item_id: str) -> str | None:
    if not isinstance(body, dict) or body.get("id") != item_id:
        return f"response is not item {item_id!r}"
    return None
