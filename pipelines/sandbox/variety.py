"""Heterogeneous CareCloud `extended_data` (`SandboxConfig.extended_data_variety`).

Hand-typed CRM extensions are not uniform: the same key is spelled several ways ("purchase_value",
"Purchase Value", "PurchaseValue"; "poznámka", "Poznámka "), sometimes twice in one record with different values,
a key changes its JSON type between records, objects nest, keys carry accents and emoji, values are null or "",
and a few strings are not JSON at all. `vary(rng, text)` turns one record's regular `extended_data` into one of
those shapes and names it (the truth's `anomaly` column), so tests can count what to expect.

Only called when the switch is on, with its own random stream per customer: every other field of every record
is the same as with the switch off, so the uniform and the heterogeneous datasets differ only in `extended_data`.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import orjson

# Other spellings of the generator's keys that dlt's snake_case maps to the same column name.
SPELLINGS: dict[str, list[str]] = {
    "purchase_value": ["Purchase Value", "purchase value", "PurchaseValue", "PURCHASE_VALUE"],
    "external_purchase_id": ["externalPurchaseId", "External Purchase ID"],
    "date_of_points_expiration": ["Date of points expiration", "DATE_OF_POINTS_EXPIRATION"],
    "campaign_id": ["Campaign ID", "campaignId"],
    "voucher_value": ["Voucher Value", "voucherValue"],
    "voucher_id": ["Voucher ID"],
    "expired_batch_id": ["Expired Batch ID"],
    "reason": ["Reason", "REASON"],
    "transfer_id": ["Transfer ID", "transferId"],
    "purchase_items": ["Purchase Items", "purchaseItems"],  # a list: its child table gets the items either way
}
# A hand-typed note key: all spellings normalise to one column (dlt drops the accent: `pozn_mka`).
NOTE_KEYS = ["poznámka", "Poznámka ", "Poznámka", "POZNÁMKA"]
NOTES = ["Zákazník volal", "reklamace 🙏", "VIP – nezapomenout", "", "ověřeno", "Čeká na schválení"]
# No two of these normalise to one column (that is the note keys' and the spellings' job, counted apart).
UNICODE_KEYS = ["Značka 🏷", "věrnostní_úroveň", "ÚČET", "Ünïcödé Key", "店舗コード"]
CITIES = ["Brno", "Praha", "Ostrava", "České Budějovice", "Plzeň"]

# kind -> (weight, anomaly tag). Tags are what the truth's `anomaly` column carries for a varied record.
KINDS: dict[str, int] = {
    "respelled": 16,    # every known key in another spelling (a column must still get the value)
    "twin": 10,         # two spellings of one key in one record, same value (no conflict)
    "conflict": 10,     # two spellings of one key in one record, different values (exactly one conflict)
    "type_change": 14,  # `loyalty_score` as a number, numeric string, word or bool; purchase value as a string
    "nested": 12,       # nested objects (one deeper than the pipeline flattens), with colliding nested keys
    "unicode": 12,      # accented, upper-case, emoji and CJK keys; the note key in random spellings
    "nulls": 12,        # values null or "", an extra empty key
    "empty": 6,         # extended_data null, "" or "{}"
    "not_object": 3,    # valid JSON that is not an object
    "invalid_json": 5,  # not JSON: cut in half, or Python's repr of the object
}
_NAMES = list(KINDS)
_CUM: list[float] = []
for _w in KINDS.values():
    _CUM.append((_CUM[-1] if _CUM else 0) + _w)


def tag(kind: str) -> str:
    """The `anomaly` tag of a kind: `invalid_json` as for the default data, else `ext_<kind>`."""
    return kind if kind == "invalid_json" else f"ext_{kind}"


def _pick(rng: random.Random, seq: list) -> Any:
    return seq[int(rng.random() * len(seq))]


def _other(value: Any, rng: random.Random) -> Any:
    """A value different from `value`, of the same JSON type."""
    if type(value) is bool:
        return not value
    if isinstance(value, (int, float)):
        return round(value + 1 + rng.random() * 50, 2)
    return f"{value}-B" if value else "jiná hodnota"


def _respelled(rng: random.Random, obj: dict) -> dict:
    out = {(_pick(rng, SPELLINGS[k]) if k in SPELLINGS else k): v for k, v in obj.items()}
    out[_pick(rng, NOTE_KEYS)] = _pick(rng, NOTES)
    return out


def _second_spelling(rng: random.Random, obj: dict, same: bool) -> dict:
    """Adds another spelling of one key that has a non-null value (or a note key pair) to the record."""
    out = dict(obj)
    keys = [k for k in obj if k in SPELLINGS and obj[k] is not None and type(obj[k]) is not list]
    if keys and rng.random() < 0.7:
        k = _pick(rng, keys)
        value = obj[k] if same else _other(obj[k], rng)
        spelling = _pick(rng, SPELLINGS[k])
        # the second spelling before or after the first: key order must not decide which value a column gets
        if rng.random() < 0.5:
            out[spelling] = value
        else:
            out = {spelling: value, **out}
    elif rng.random() < 0.5:
        first, second = rng.sample(NOTE_KEYS, 2)
        note = _pick(rng, NOTES[:3])
        out[first] = note
        out[second] = note if same else note + " (2)"
    else:  # nested: the colliding keys are one level down
        city = _pick(rng, CITIES)
        out["address"] = {"city": city, "zip": "602 00"}
        out["Address"] = {"City ": city if same else city + " 2"}
    return out


def _type_change(rng: random.Random, obj: dict) -> dict:
    out = dict(obj)
    out["loyalty_score"] = _pick(rng, [7, 12.5, "12.5", "vysoké", True, 0, "", -3])
    if "purchase_value" in out and rng.random() < 0.5:
        out["purchase_value"] = f"{out['purchase_value']:.2f}" if isinstance(out["purchase_value"], float) \
            else str(out["purchase_value"])
    return out


def _nested(rng: random.Random, obj: dict) -> dict:
    out = dict(obj)
    segment = _pick(rng, ["A", "B", "VIP", "Zlatý"])
    out["customer"] = {"segment": segment, "address": {"city": _pick(rng, CITIES), "zip": "110 00"},
                       "flags": {"newsletter": rng.random() < 0.5, "sms": None}}
    if rng.random() < 0.5:  # the same nested key spelled another way, same value
        out["Customer"] = {"Segment ": segment}
    out["deep"] = {"l1": {"l2": {"l3": {"l4": {"l5": _randint(rng, 1, 9)}}}}}  # beyond the flattening depth
    return out


def _unicode(rng: random.Random, obj: dict) -> dict:
    out = dict(obj)
    for key in rng.sample(UNICODE_KEYS, 2):
        out[key] = _pick(rng, ["zlatá", "Ř", "🎁 dárek", "東京", 42, "", None])
    out[_pick(rng, NOTE_KEYS)] = _pick(rng, NOTES)
    return out


def _nulls(rng: random.Random, obj: dict) -> dict:
    out = {k: (_pick(rng, [None, ""]) if rng.random() < 0.5 else v) for k, v in obj.items()}
    out["note"] = ""
    out["Poznámka "] = None
    return out


def _randint(rng: random.Random, lo: int, hi: int) -> int:
    return lo + int(rng.random() * (hi - lo + 1))


_OBJECT_KINDS: dict[str, Callable[[random.Random, dict], dict]] = {
    "respelled": _respelled,
    "twin": lambda rng, obj: _second_spelling(rng, obj, same=True),
    "conflict": lambda rng, obj: _second_spelling(rng, obj, same=False),
    "type_change": _type_change,
    "nested": _nested,
    "unicode": _unicode,
    "nulls": _nulls,
}


def vary(rng: random.Random, text: str | None) -> tuple[str | None, str]:
    """(new `extended_data` string, anomaly tag) for one record whose regular `extended_data` is `text`."""
    roll = rng.random() * _CUM[-1]
    kind = next(name for name, cum in zip(_NAMES, _CUM) if roll < cum)
    try:
        base = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        base = {}
    if type(base) is not dict:
        base = {}
    if kind == "empty":
        return _pick(rng, [None, "", "{}"]), tag(kind)
    if kind == "not_object":
        return _pick(rng, ["null", "[]", "42", '"text"', "[1, 2]"]), tag(kind)
    if kind == "invalid_json":
        full = orjson.dumps(base or {"poznámka": _pick(rng, NOTES)}).decode()
        if rng.random() < 0.5:
            return full[: max(1, len(full) // 2)], tag(kind)
        return repr(base or {"a": 1}), tag(kind)  # single quotes: a Python dict pasted as text
    return orjson.dumps(_OBJECT_KINDS[kind](rng, base)).decode(), tag(kind)
