"""Every list the API answers has one envelope, ``{"items": [...], "next": ...}``
(:class:`orchestrator.api_models.Page`): a route cannot answer a bare list
or a list under its own key."""

from __future__ import annotations

from typing import Any

from orchestrator.api import describe_api


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return dict(document["components"]["schemas"][ref.rsplit("/", 1)[-1]])


def test_every_list_answer_is_a_page() -> None:
    document = describe_api()
    lists = {}
    for path, methods in document["paths"].items():
        get = methods.get("get")
        if get is None or "200" not in get["responses"]:
            continue
        content = get["responses"]["200"].get("content", {}).get("application/json")
        if content is None:
            continue
        schema = _resolve(document, content["schema"])
        assert schema.get("type") != "array", f"GET {path} answers a bare list"
        properties = schema.get("properties", {})
        arrays = [name for name, p in properties.items() if p.get("type") == "array"]
        # One list and nothing but (maybe) a link on: that is a page.
        if len(arrays) == 1 and set(properties) <= {arrays[0], "next"}:
            lists[path] = set(properties)
    assert "/api/v1/runs" in lists and "/api/v1/alerts" in lists
    wrong = {path: keys for path, keys in lists.items() if keys != {"items", "next"}}
    assert wrong == {}
