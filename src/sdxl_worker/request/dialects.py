"""Requests written for other SDXL APIs, turned into this worker's input before validation.

Replicate cog-sdxl (also in camelCase), Stability REST v1 / Amazon Bedrock and Segmind
requests run unchanged. ``translate(raw)`` returns the canonical input and remembers the
name the user sent for each field it filled, so ``explain`` can put every later error back
in the user's words ('samples', not 'num_images'). The response shape stays this worker's.
"""

from __future__ import annotations

import logging
import re

from sdxl_worker.errors import InputError, quoted

log = logging.getLogger(__name__)

# Same meaning, same units, another name: theirs -> ours.
RENAMES = {
    # Replicate cog-sdxl
    "num_outputs": "num_images",
    "refine_steps": "refiner_inference_steps",
    "number_of_inference_steps": "num_inference_steps",  # camelCase numberOfInferenceSteps
    # Stability REST v1 / Bedrock
    "cfg_scale": "guidance_scale",
    "steps": "num_inference_steps",
    "samples": "num_images",  # also Segmind's
    "sampler": "scheduler",
    "init_image": "image",
    # Segmind
    "img_width": "width",
    "img_height": "height",
}
REPLICATE_ONLY = {"num_outputs", "refine_steps", "lora_scale", "lora_weights", "replicate_weights",
                  "disable_safety_checker"}
STABILITY_ONLY = {"text_prompts", "cfg_scale", "steps", "sampler", "init_image", "init_image_mode",
                  "image_strength", "step_schedule_start", "step_schedule_end"}
SEGMIND_ONLY = {"img_width", "img_height", "base64"}
# Segmind's scheduler names, where this worker has the same sampler.
SEGMIND_SCHEDULERS = {"DPM Multi": "DPMSolverMultistep", "DPM Single": "DPMSolverSinglestep",
                      "Euler a": "K_EULER_ANCESTRAL", "Euler": "K_EULER", "LMS": "KLMS"}
STABILITY_DEFAULT_IMAGE_STRENGTH = 0.35  # Stability's default: keep 35% of the init image


class Translation:
    """A request in this worker's names, and the names the user sent for the fields renamed."""

    def __init__(self, input, sent_as: dict[str, str] | None = None):
        self.input = input
        self.sent_as = sent_as or {}

    def explain(self, message: str) -> str:
        """An error message with each renamed field called by the name the user sent."""
        for ours in sorted(self.sent_as, key=len, reverse=True):  # 'loras[0].scale' before 'loras'
            theirs = self.sent_as[ours]
            # Replacements as functions: a name the user sent is text, never a regex template.
            message = re.sub(rf"'{re.escape(ours)}(?=['\[.])", lambda _, name=theirs: f"'{name}", message)
            message = re.sub(rf"(?<![\w.'\[]){re.escape(ours)}=", lambda _, name=theirs: f"{name}=", message)
        return message


AS_SENT = Translation(None)


def translate(raw) -> Translation:
    """``raw`` in this worker's names; InputError naming the user's fields for what cannot map."""
    if not isinstance(raw, dict):
        return Translation(raw)  # validate() says what is wrong with it
    sent_raw, raw = raw, {}
    for key, value in sent_raw.items():  # snake_case names, keeping each name as sent
        if _snake(key) in raw:
            raise InputError(f"'{raw[_snake(key)][0]}' and '{key}' are the same input; give only one.")
        raw[_snake(key)] = (key, value)
    keys = set(raw)
    stability = bool(keys & STABILITY_ONLY)
    segmind = bool(keys & SEGMIND_ONLY) or ("samples" in keys and not stability)
    replicate = bool(keys & REPLICATE_ONLY) or any(sent != key for key, (sent, _) in raw.items())
    out: dict = {}
    sent_as: dict[str, str] = {}

    given: dict[str, str] = {}  # ours -> the name it came from

    def put(ours: str, value, sent: str, shown: str | None = None) -> None:
        if ours in out:
            raise InputError(f"'{given[ours]}' and '{sent}' are two names for one input ({ours}); give only one.")
        out[ours], given[ours] = value, sent
        if (shown or sent) != ours:
            sent_as[ours] = shown or sent

    special = {"text_prompts", "init_image_mode", "image_strength", "step_schedule_start", "step_schedule_end",
               "lora_scale", "lora_weights", "replicate_weights", "disable_safety_checker", "base64"}
    for key, (sent, value) in raw.items():
        if key in special:
            continue
        if key == "strength" and segmind:
            put("prompt_strength", value, sent)  # Segmind's strength is img2img strength
        elif key == "sampler" or (key == "scheduler" and segmind):
            put("scheduler", SEGMIND_SCHEDULERS.get(value, value) if segmind else value, sent)
        else:
            put(RENAMES.get(key, key), value, sent)

    if stability:
        _stability(raw, out, put, sent_as)
    if "base64" in raw:
        _segmind_base64(raw["base64"], put)
    _replicate(raw, out, put, sent_as, replicate)
    dialect = ", ".join(name for name, used in
                        (("Stability", stability), ("Segmind", segmind), ("Replicate", replicate)) if used)
    if dialect:
        log.info("request written for %s; renamed %s", dialect, sent_as or "nothing")
    return Translation(out, sent_as)


def _stability(raw: dict, out: dict, put, sent_as: dict) -> None:
    if "text_prompts" in raw:
        sent, prompts = raw["text_prompts"]
        positive, negative = _split_prompts(prompts, sent)
        put("prompt", positive, sent)
        if negative:
            put("negative_prompt", negative, sent)
    if out.get("seed") == 0:
        del out["seed"]  # Stability: 0 = a random seed
    mode_sent, mode = raw.get("init_image_mode", ("init_image_mode", "IMAGE_STRENGTH"))
    if mode not in ("IMAGE_STRENGTH", "STEP_SCHEDULE"):
        raise InputError(f"'{mode_sent}' must be IMAGE_STRENGTH or STEP_SCHEDULE; got {quoted(mode)}.")
    if "step_schedule_end" in raw and raw["step_schedule_end"][1] not in (None, 1, 1.0):
        raise InputError(f"'{raw['step_schedule_end'][0]}' is not supported: the schedule always runs to its end (1).")
    other = "step_schedule_start" if mode == "IMAGE_STRENGTH" else "image_strength"
    if other in raw:
        raise InputError(f"'{raw[other][0]}' does not apply with init_image_mode {mode}.")
    if mode == "IMAGE_STRENGTH":
        # image_strength is how much of the init image to KEEP: the inverse of diffusers' strength.
        sent, keep = raw.get("image_strength", ("image_strength", STABILITY_DEFAULT_IMAGE_STRENGTH))
        if not _number(keep) or not 0 <= keep < 1:
            raise InputError(f"'{sent}' must be a number from 0 to less than 1, got {quoted(keep)}.")
        if "image_strength" in raw or ("image" in out and "prompt_strength" not in out):
            put("prompt_strength", round(1 - keep, 6), sent, shown=f"1 - {sent}")
    elif "step_schedule_start" in raw or ("image" in out and "prompt_strength" not in out):
        # Where the schedule starts, 1 being pure noise: exactly diffusers' strength.
        sent, start = raw.get("step_schedule_start", ("step_schedule_start", 1 - STABILITY_DEFAULT_IMAGE_STRENGTH))
        if not _number(start) or not 0 < start <= 1:
            raise InputError(f"'{sent}' must be a number greater than 0 and at most 1, got {quoted(start)}.")
        put("prompt_strength", start, sent)


def _split_prompts(prompts, sent: str) -> tuple[str, str]:
    """Stability's [{text, weight}]: positive weights -> prompt, negative -> negative prompt.

    Weights other than 1 are written in the weighted-prompt syntax ``(text:1.3)``.
    """
    if not isinstance(prompts, list) or not prompts:
        raise InputError(f"'{sent}' must be a non-empty list of {{\"text\", \"weight\"}} objects.")
    positive, negative = [], []
    for index, item in enumerate(prompts):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or set(item) - {"text", "weight"}:
            raise InputError(f"'{sent}[{index}]' must be an object with a string 'text' and an optional 'weight'.")
        weight = item.get("weight", 1.0)
        if not _number(weight):
            raise InputError(f"'{sent}[{index}].weight' must be a number, got {quoted(weight)}.")
        text = item["text"].strip()
        if not text or weight == 0:
            continue
        (positive if weight > 0 else negative).append(_weighted(text, abs(weight)))
    return ", ".join(positive), ", ".join(negative)


def _weighted(text: str, weight: float) -> str:
    if weight == 1:
        return text
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"({escaped}:{weight:g})"


def _segmind_base64(entry: tuple, put) -> None:
    from sdxl_worker.request.schema import INPUT_SCHEMA

    sent, inline = entry
    if not isinstance(inline, bool):
        raise InputError(f"'{sent}' must be true or false.")
    if "upload" in INPUT_SCHEMA["properties"]:
        # true: always inline base64; false: URLs when storage is configured (upload's default).
        put("upload", False if inline else None, sent)
    # Without an 'upload' input this worker always returns inline base64, what either value accepts.


def _replicate(raw: dict, out: dict, put, sent_as: dict, replicate: bool) -> None:
    if "replicate_weights" in raw:
        raise InputError(
            f"'{raw['replicate_weights'][0]}' (a Replicate training archive) is not supported; "
            "give the LoRA's .safetensors URL in 'loras'."
        )
    # disable_safety_checker: this worker runs no safety checker, so there is nothing to disable.
    if "lora_weights" in raw:
        sent, url = raw["lora_weights"]
        if url not in (None, ""):
            put("loras", [{"path": url}], sent)
            sent_as.update({"loras[0]": sent, "loras[0].path": sent})  # one URL, not a list
    if "lora_scale" in raw:
        sent, scale = raw["lora_scale"]
        loras = out.get("loras")
        if isinstance(loras, list) and len(loras) == 1 and isinstance(loras[0], dict):
            if "scale" in loras[0]:
                raise InputError(f"'{sent}' and 'loras[0].scale' both set the LoRA's scale; give only one.")
            out["loras"] = [dict(loras[0], scale=scale)]
            sent_as["loras[0].scale"] = sent
        elif isinstance(loras, list) and len(loras) > 1:
            raise InputError(f"'{sent}' applies to a single LoRA; give each LoRA its own 'scale' in 'loras'.")
        # No LoRA: cog-sdxl sends lora_scale with every request; it has nothing to scale.
    if replicate:
        # cog-sdxl's defaults: no refiner, and an empty negative prompt (encoded, not zeroed).
        # A high_noise_frac outside the ensemble is ignored by the plan, with a warning.
        out.setdefault("refine", "no_refiner")
        out.setdefault("negative_prompt", "")


def _snake(key) -> str:
    """numberOfInferenceSteps -> number_of_inference_steps; other keys unchanged."""
    if not isinstance(key, str) or key.lower() == key:
        return key
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
