"""The customers a Capillary event names, read from its payload (api-notes §2.8).

The vendor publishes the envelopes (flat `data`, or `attributes.data`) but not every event's exact shape, so the
payload is walked for identifiers instead of read at one path: every object under a `customerIdentifiers` key (the
event's own customer, `transferredFrom` and `transferredTo` of a transfer, wherever they sit) names one customer. An
object that holds `customerId` beside `instore`, or beside the identifier keys themselves, counts too: some
samples flatten the identifiers into the party object.

Each customer is mapped to the configured `identifier_name`, the identifier the customer list holds:
- `id` -> `customerId`;
- `mobile` / `email` / `externalId` -> `instore.<name>`, else the same key at the object's own level.
A customer whose object lacks that identifier (e.g. a transfer's outside party that carries only a `customerId`
while the list holds mobiles) is not resolved here: it is returned in `unresolved` (its `customerId`, for the run
report), and the rolling sweep loads that customer within `sweep_days` like any customer no event named. Nothing
is looked up in the API for it: that would cost a request per event on the tighter API, to learn what the sweep
gets anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

IDENTIFIER_KEYS = ("mobile", "email", "externalId")
# depth guard: the receiver accepts any JSON up to the parser's nesting limit
_MAX_DEPTH = 64


@dataclass
class NamedCustomers:
    """`ids`: the customers an event names, as the configured identifier, in payload order without repeats;
    `unresolved`: the `customerId`s (or a short description) of customers whose object lacks that identifier."""
    ids: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    text = str(value).strip()
    return text or None


def _identifier_objects(node: Any, depth: int = 0) -> Iterator[dict]:
    """Every object in the payload that identifies one customer, outermost first, each once."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, dict):
        ids = node.get("customerIdentifiers")
        if isinstance(ids, dict):
            yield ids
        elif "customerId" in node and ("instore" in node or any(k in node for k in IDENTIFIER_KEYS)):
            yield node
        for key, value in node.items():
            if key != "customerIdentifiers":
                yield from _identifier_objects(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _identifier_objects(item, depth + 1)


def payload_data(event: dict) -> Any:
    """The event's `data`, in either documented envelope."""
    if "data" in event:
        return event["data"]
    attributes = event.get("attributes")
    return attributes.get("data") if isinstance(attributes, dict) else None


def resolve(ids: dict, identifier_name: str) -> str | None:
    """One identifier object mapped to `identifier_name`; None when it does not carry it."""
    if identifier_name == "id":
        return _text(ids.get("customerId"))
    instore = ids.get("instore")
    if isinstance(instore, dict) and _text(instore.get(identifier_name)):
        return _text(instore.get(identifier_name))
    return _text(ids.get(identifier_name))


def named_customers(event: Any, identifier_name: str) -> NamedCustomers:
    """The customers a parsed event body names (see the module's docstring)."""
    out = NamedCustomers()
    if not isinstance(event, dict):
        return out
    seen: set[str] = set()
    for ids in _identifier_objects(event):
        value = resolve(ids, identifier_name)
        if value is not None:
            if value not in seen:
                seen.add(value)
                out.ids.append(value)
            continue
        who = _text(ids.get("customerId")) or "(no customerId)"
        if who not in out.unresolved:
            out.unresolved.append(who)
    return out


def own_customer_id(event: Any) -> str | None:
    """The Capillary `customerId` of the event's own customer: `data.customerIdentifiers`, else `data.customerId`,
    else the first identifier object in the payload (for the `customer_id` column of `capillary_events`)."""
    data = payload_data(event) if isinstance(event, dict) else None
    if isinstance(data, dict):
        ids = data.get("customerIdentifiers")
        if isinstance(ids, dict) and _text(ids.get("customerId")):
            return _text(ids.get("customerId"))
        if _text(data.get("customerId")):
            return _text(data.get("customerId"))
    for ids in _identifier_objects(event):
        if _text(ids.get("customerId")):
            return _text(ids.get("customerId"))
    return None
