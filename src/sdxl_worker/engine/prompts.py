"""Prompts to embeddings, with weights and without a 77-token cut, for the base and the refiner.

Compel does the work: its weighted syntax (``(red fox)1.3``, ``fox++``), and prompts longer than
CLIP's 77 tokens encoded in chunks of 75 and concatenated instead of silently cut. A1111's
``(word:1.3)``, the form users paste from other UIs, is rewritten to compel's first. SDXL's
conditioning is each encoder's penultimate hidden states (not normalised) side by side, plus
text_encoder_2's pooled output; the refiner has text_encoder_2 alone. Positive and negative are
padded to the same length (a long prompt makes a long conditioning).

Each text goes through each encoder once per job (``each_text_once``): compel asks an encoder
for hidden states and again for the pooled output of the same tokens, and the refiner asks
text_encoder_2 (shared with the base) for what the base already had; an unset negative prompt the
base zeroes is not encoded at all. The same numbers come out, so the same pixels.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from compel import Compel, ReturnedEmbeddingsType
from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment, PromptParser

from sdxl_worker.errors import InputError

# A1111's explicit weight at the end of a parenthesised group: "(text:1.3)", "(text: .8)".
_A1111_WEIGHT = re.compile(r":\s*(\d+(?:\.\d*)?|\.\d+)\s*$")
# Characters compel's syntax is made of; a prompt without any of them has no weights.
_SYNTAX = frozenset('()[]"+-\\<>')
# Ten chunks of 75 tokens. Every token is a key in every cross-attention layer at every step, so
# this bounds what a long prompt costs the GPU; it also bounds compel's parser (pyparsing, about
# 1 s of CPU per 1,000 characters with weights).
MAX_PROMPT_TOKENS = 750


@dataclass
class Conditioning:
    """What an SDXL pipeline takes instead of ``prompt`` and ``negative_prompt``."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor

    def as_kwargs(self) -> dict:
        return dict(vars(self))


def from_a1111(text: str) -> str:
    """Rewrite A1111's ``(text:weight)`` groups, nested or not, as compel's ``(text)weight``.

    Everything else is left alone, so compel's own syntax passes through unchanged. A1111's
    bare ``(text)`` (x1.1) is not rewritten: in compel it is plain grouping, and a prompt cannot
    say which of the two its author meant.
    """
    out: list[str] = []
    opened: list[int] = []  # positions in ``out`` of the unclosed "("
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text):  # an escaped bracket is a literal one
            out.append(text[index : index + 2])
            index += 2
            continue
        if char == "(":
            opened.append(len(out))
            out.append(char)
        elif char == ")" and opened:
            start = opened.pop()
            inner = "".join(out[start + 1 :])
            weight = _A1111_WEIGHT.search(inner)
            if weight:
                out[start:] = ["(" + inner[: weight.start()] + ")" + weight.group(1)]
            else:
                out.append(char)
        else:
            out.append(char)
        index += 1
    return "".join(out)


@contextmanager
def each_text_once(*encoders):
    """Within the block, an encoder given tokens it has seen returns what it returned then: one
    forward pass per text and encoder for the whole job, its hidden states and pooled output both
    kept. Whatever stood in for the encoders' forward before (accelerate's offload hook) is put back."""
    wrapped = []
    for encoder in dict.fromkeys(encoder for encoder in encoders if encoder is not None):
        own = encoder.__dict__.get("forward")  # an instance attribute (a hook), or None: the class's
        forward, seen = encoder.forward, {}

        def remembered(input_ids, attention_mask=None, *args, forward=forward, seen=seen, **kwargs):
            if attention_mask is not None and bool(attention_mask.all()):
                # compel masks nothing out (it pads with a mask of ones) for the hidden states and
                # passes no mask for the pooled output: one pass, as diffusers encodes, unmasked.
                attention_mask = None
            key = (tuple(input_ids.shape), input_ids.cpu().numpy().tobytes(),
                   None if attention_mask is None else attention_mask.cpu().numpy().tobytes(), args)
            if key not in seen:
                seen[key] = forward(input_ids, attention_mask, *args,
                                    **dict(kwargs, output_hidden_states=True, return_dict=True))
            return seen[key]

        encoder.forward = remembered
        wrapped.append((encoder, own))
    try:
        yield
    finally:
        for encoder, own in wrapped:
            if own is None:
                del encoder.forward
            else:
                encoder.forward = own


def encode_for_base(pipe, prompt: str, negative_prompt: str | None) -> Conditioning:
    """Conditioning for the SDXL base (text_encoder and text_encoder_2)."""
    texts, conjunctions = _parsed(pipe.tokenizer_2, prompt, negative_prompt)
    zeroed = negative_prompt is None and pipe.config.force_zeros_for_empty_prompt
    if zeroed:  # SDXL base's rule: an unset negative prompt is zeros, so it is not encoded
        texts, conjunctions = texts[:1], conjunctions[:1]
    first = _compel(pipe.tokenizer, pipe.text_encoder, pooled=False, pipe=pipe)
    second = _compel(pipe.tokenizer_2, pipe.text_encoder_2, pooled=True, pipe=pipe)
    with torch.inference_mode():
        hidden_1 = _hidden_states(first, conjunctions)
        hidden_2 = _hidden_states(second, conjunctions)
        pooled = _pooled(second, texts)
        hidden_1, hidden_2 = _same_length(first, hidden_1, second, hidden_2)
        embeds = torch.cat([hidden_1, hidden_2], dim=-1)
    return _split(embeds, pooled, zeroed)


def encode_for_refiner(pipe, prompt: str, negative_prompt: str | None) -> Conditioning:
    """Conditioning for the SDXL refiner (text_encoder_2 only). The refiner does not zero an unset
    negative prompt: it encodes "" (diffusers' rule for it)."""
    texts, conjunctions = _parsed(pipe.tokenizer_2, prompt, negative_prompt)
    second = _compel(pipe.tokenizer_2, pipe.text_encoder_2, pooled=True, pipe=pipe)
    with torch.inference_mode():
        embeds = _hidden_states(second, conjunctions)
        pooled = _pooled(second, texts)
    return _split(embeds, pooled, zeroed=negative_prompt is None and pipe.config.force_zeros_for_empty_prompt)


def check_prompts(tokenizer, prompt: str | None, negative_prompt: str | None) -> None:
    """InputError naming the field for a prompt too long or with syntax that cannot be read: the
    encoders' own checks, run by the check pass (runtime/checks.py) before any download.
    ``tokenizer``: the base's second tokenizer, whose count is the limit's."""
    _parsed(tokenizer, prompt, negative_prompt)


@functools.lru_cache(maxsize=32)
def _parsed(tokenizer, prompt: str | None, negative_prompt: str | None) -> tuple[tuple[str, ...], tuple[Conjunction, ...]]:
    """Both prompts in compel's syntax and parsed; InputError naming the field if too long or unreadable.

    Cached: the check pass parses a job's prompts, and the base's and the refiner's encoding reuse
    that parse (weighted syntax costs about a tenth of a second per 100 characters); what is
    returned is never changed. An InputError is not cached."""
    texts, conjunctions = [], []
    for field, sent in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        text = from_a1111(sent or "")
        tokens = len(tokenizer(text, truncation=False).input_ids) - 2  # without the start and end markers
        if tokens > MAX_PROMPT_TOKENS:
            raise InputError(
                f"'{field}' is {tokens:,} tokens long; the limit is {MAX_PROMPT_TOKENS} tokens "
                f"(about {MAX_PROMPT_TOKENS * 4:,} characters of English)."
            )
        texts.append(text)
        conjunctions.append(_conjunction(text, field, rewritten=text != (sent or "")))
    return tuple(texts), tuple(conjunctions)


def _conjunction(text: str, field: str, rewritten: bool = False) -> Conjunction:
    as_written = Conjunction([FlattenedPrompt([Fragment(" ".join(text.split()), 1.0)])])
    if not _SYNTAX.intersection(text):
        # No weights possible: what compel's parser would return, without its cost (it is
        # pyparsing: about a tenth of a second per 100 characters).
        return as_written
    try:
        parsed = _parser().parse_conjunction(text)
    except Exception as error:
        raise InputError(
            f"'{field}' has weighting syntax that cannot be read ({type(error).__name__}): check its "
            "brackets and any .blend()/.and() weights, or escape literal brackets as \\( and \\)."
        ) from None
    if not rewritten and "\\" not in text and _unweighted(parsed):
        # No weight but 1 anywhere: the text as written, brackets and quotes included, exactly as
        # diffusers encodes it (compel's parser would drop "(", ")" and '"' from the tokens).
        return as_written
    return parsed


def _unweighted(conjunction: Conjunction) -> bool:
    return (conjunction.weights == [1.0] and len(conjunction.prompts) == 1
            and isinstance(conjunction.prompts[0], FlattenedPrompt)
            and all(fragment.weight == 1.0 for fragment in conjunction.prompts[0].children))


@functools.cache
def _parser() -> PromptParser:
    return PromptParser()  # building the grammar is a cost of its own: once per process


def _compel(tokenizer, text_encoder, pooled: bool, pipe) -> Compel:
    dtype = text_encoder.dtype
    return Compel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=pooled,
        truncate_long_prompts=False,  # chunk, never cut
        dtype_for_device_getter=lambda device: dtype,
        device=pipe._execution_device,
    )


def _hidden_states(compel: Compel, conjunctions: list[Conjunction]) -> torch.Tensor:
    """One row per conjunction, padded to the longest (a long prompt makes a long conditioning)."""
    rows = [compel.build_conditioning_tensor_for_conjunction(conjunction)[0] for conjunction in conjunctions]
    return torch.cat(compel.pad_conditioning_tensors_to_same_length(rows))


def _pooled(compel: Compel, texts: list[str]) -> torch.Tensor:
    """text_encoder_2's pooled output, one text at a time as diffusers encodes it: a batch of two
    rounds differently on CPU and GPU, and that alone moves pixels."""
    provider = compel.conditioning_provider
    return torch.cat([provider.get_pooled_embeddings([text], device=compel.device) for text in texts])


def _same_length(first: Compel, hidden_1: torch.Tensor, second: Compel, hidden_2: torch.Tensor):
    """The two encoders may chunk differently (other tokenizers): pad the shorter one."""
    length = max(hidden_1.shape[1], hidden_2.shape[1])
    return (
        _pad_to(first, hidden_1, length, pooled=False),
        _pad_to(second, hidden_2, length, pooled=True),
    )


def _pad_to(compel: Compel, hidden: torch.Tensor, length: int, pooled: bool) -> torch.Tensor:
    if hidden.shape[1] == length:
        return hidden
    empty = compel([""])
    empty = empty[0] if pooled else empty
    repeats = -(-(length - hidden.shape[1]) // empty.shape[1])
    padding = empty.repeat(hidden.shape[0], repeats, 1)[:, : length - hidden.shape[1]]
    return torch.cat([hidden, padding], dim=1)


def _split(embeds: torch.Tensor, pooled: torch.Tensor, zeroed: bool) -> Conditioning:
    """Row 0 is the prompt, row 1 the negative prompt; zeros of the prompt's shape for a negative
    prompt the model zeroes (SDXL base's rule for an unset one, as diffusers applies it; an empty
    string is a prompt like any other and is encoded)."""
    if zeroed:
        return Conditioning(embeds[0:1], pooled[0:1], torch.zeros_like(embeds[0:1]), torch.zeros_like(pooled[0:1]))
    return Conditioning(embeds[0:1], pooled[0:1], embeds[1:2], pooled[1:2])
