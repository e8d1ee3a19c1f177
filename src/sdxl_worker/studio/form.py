"""The studio's form, described from the input schema: one entry per field the page can edit.

The schema stays the one source of truth: labels come from the field names, defaults, ranges,
choices and help text from the schema. The page draws the fields it is given in this order, the
first ones (what a user tries first) in the open, the others under "More".
"""

from __future__ import annotations

import re

from sdxl_worker.request.schema import INPUT_SCHEMA

MAIN = ("prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed",
        "scheduler", "refine", "num_images", "preview_steps")
IMAGES = ("image", "mask")  # picked, dropped or pasted files, sent as data URLs
LONG_TEXT = ("prompt", "negative_prompt")
# Left out: lists and objects (loras, controlnets, ip_adapter, hires, s3Config) have their own JSON box,
# and image_url (the refiner-only path) is an image field too.
STRUCTURED = ("loras", "controlnets", "ip_adapter", "hires")
# The studio's own defaults where the API's would make a first run show nothing for a minute:
# previews on. Sent with every job (the API's default is another), and shown as the field's value.
STUDIO_DEFAULTS = {"preview_steps": 2}


def _types(spec: dict) -> list[str]:
    kinds = spec.get("type", "string")
    return [kinds] if isinstance(kinds, str) else list(kinds)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _plain(text: str) -> str:
    return text.replace("`", "")


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


def _range(spec: dict) -> str:
    """The accepted range as the page shows it: "From 256 to 2048.", "Above 0 below 1.", "Up to 5."."""
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    above, below = "exclusiveMinimum" in spec, "exclusiveMaximum" in spec
    if low is not None and high is not None:
        return f"{'Above' if above else 'From'} {low} {'below' if below else 'to'} {high}."
    if low is not None:
        return f"Above {low}." if above else f"From {low} up."
    if high is not None:
        return f"Below {high}." if below else f"Up to {high}."
    return ""


def _unset(description: str) -> str | None:
    """What the worker does with the field unset, from its description ("Unset: 1024, or ..." -> "1024")."""
    match = re.search(r"Unset: ([^,.;]+)", description)
    return match.group(1).strip() if match else None


def _field(name: str, spec: dict) -> dict:
    kinds = [kind for kind in _types(spec) if kind != "null"]
    description = _plain(spec.get("description", ""))
    entry = {"name": name, "label": _label(name), "help": _first_sentence(description), "details": description,
             "group": "main" if name in MAIN else "more", "optional": "null" in _types(spec),
             "default": STUDIO_DEFAULTS.get(name, spec.get("default")), "always_send": name in STUDIO_DEFAULTS,
             "unset": _unset(description), "required": name == "prompt"}
    if name in IMAGES or name == "image_url":
        entry["kind"] = "image"
    elif name in STRUCTURED:
        entry["kind"] = "json"
    elif "enum" in spec:
        entry.update(kind="choice", options=[value for value in spec["enum"] if value is not None])
    elif kinds[0] == "boolean":
        entry["kind"] = "boolean"
    elif kinds[0] in ("integer", "number"):
        entry["kind"] = "number"
        entry["step"] = spec.get("multipleOf", 1 if kinds[0] == "integer" else "any")
        for bound in ("minimum", "maximum"):
            if bound in spec:
                entry[bound[:3]] = spec[bound]
        for bound, key in (("exclusiveMinimum", "min"), ("exclusiveMaximum", "max")):
            if bound in spec:
                entry[key] = spec[bound]
        words = _range(spec)
        entry["help"] += f" {words}" if words else ""
        if entry["unset"]:
            entry["help"] += f" Unset: {entry['unset']}."
    else:
        entry["kind"] = "long_text" if name in LONG_TEXT else "text"
    return entry


def fields() -> list[dict]:
    """Every field the page shows: the main ones first, in MAIN's order, then the rest in the schema's."""
    properties = INPUT_SCHEMA["properties"]
    hidden = {"upload"}  # the studio shows images inline; a bucket belongs to the server (s3Config is no input)
    order = [*MAIN, *(name for name in properties if name not in MAIN)]
    return [_field(name, properties[name]) for name in order if name in properties and name not in hidden]
