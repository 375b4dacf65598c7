"""Caption sets: labels -> training prompts drawn from templates, with held-out paraphrases.

A caption set turns a class label into a prompt by filling a template ("a handwritten digit
{word}", "the number {num}") with the label's names. Training draws from the *training*
templates only; the *held-out* paraphrase templates never appear in training and measure
whether a text model follows wordings it has not seen.

``caption_set("digits")`` is what ``diffcore.train(..., captions="digits")`` uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CAPTION_SETS", "CaptionSet", "caption_set", "normalize", "words"]

_WORD = re.compile(r"[a-z]+|[0-9]")


def normalize(text: str) -> str:
    """Lowercase and collapse whitespace: the form prompts are compared and tokenized in."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """The word tokens of ``text``: lowercase letter runs and single digits; punctuation dropped."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class CaptionSet:
    """Templates over named classes.

    Args:
        name: the set's registry name.
        names: per class label, the fields a template may use (e.g. ``{"word": "seven", "num": "7"}``).
        train_templates: ``str.format`` templates drawn from in training.
        heldout_templates: paraphrase templates kept out of training (for evaluation).
    """

    name: str
    names: tuple[dict[str, str], ...]
    train_templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"caption set {self.name!r} has no classes")
        if not self.train_templates or not self.heldout_templates:
            raise ValueError(f"caption set {self.name!r} needs training and held-out templates")
        overlap = set(map(normalize, self.train_templates)) & set(map(normalize, self.heldout_templates))
        if overlap:
            raise ValueError(f"caption set {self.name!r}: templates {sorted(overlap)} are both training and held-out")
        for template in (*self.train_templates, *self.heldout_templates):
            for fields in self.names:
                template.format(**fields)  # a KeyError here names the missing field

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def _check_label(self, label: int) -> int:
        if isinstance(label, bool) or not 0 <= int(label) < self.num_classes:
            raise ValueError(f"label {label!r} is not in [0, {self.num_classes}) for caption set {self.name!r}")
        return int(label)

    def _draw(
        self, templates: Sequence[str], labels: Tensor | Sequence[int], generator: torch.Generator | None
    ) -> list[str]:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}) for caption set {self.name!r}, got {labels.tolist()[:8]}"
            )
        picks = torch.randint(0, len(templates), (labels.numel(),), generator=generator).tolist()
        return [templates[k].format(**self.names[y]) for k, y in zip(picks, labels.tolist())]

    def train(self, labels: Tensor | Sequence[int], generator: torch.Generator | None = None) -> list[str]:
        """One prompt per label, each from a random training template (draws from ``generator``)."""
        return self._draw(self.train_templates, labels, generator)

    def heldout(self, labels: Tensor | Sequence[int], generator: torch.Generator | None = None) -> list[str]:
        """One prompt per label, each from a random held-out paraphrase template."""
        return self._draw(self.heldout_templates, labels, generator)

    def train_prompts(self, label: int) -> list[str]:
        """Every training prompt of ``label``."""
        label = self._check_label(label)
        return [t.format(**self.names[label]) for t in self.train_templates]

    def heldout_prompts(self, label: int) -> list[str]:
        """Every held-out paraphrase of ``label``."""
        label = self._check_label(label)
        return [t.format(**self.names[label]) for t in self.heldout_templates]

    def heldout_pairs(self) -> list[tuple[str, int]]:
        """(prompt, label) for every held-out template and class, class-major."""
        return [(p, y) for y in range(self.num_classes) for p in self.heldout_prompts(y)]

    def vocabulary(self) -> list[str]:
        """Sorted word tokens of every training prompt (held-out wording is not included)."""
        vocab = {w for y in range(self.num_classes) for p in self.train_prompts(y) for w in words(p)}
        return sorted(vocab)


_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

DIGITS = CaptionSet(
    name="digits",
    names=tuple({"word": w, "num": str(i), "a": "an" if w == "eight" else "a"} for i, w in enumerate(_DIGIT_WORDS)),
    train_templates=(
        "a handwritten digit {word}",
        "a handwritten {word}",
        "the number {num}",
        "the digit {num}",
        "the number {word}",
        "{a} {num}",
        "{word}",
        "{num}",
        "an image of the digit {word}",
        "a picture of {a} {num}",
        "a handwritten {num}",
        "the handwritten number {word}",
        "a drawing of the number {num}",
        "a scan of a handwritten {word}",
        "digit {word}",
        "a small image of {a} {word}",
    ),
    heldout_templates=(
        "someone wrote the number {word} by hand",
        "a photo showing the numeral {num}",
        "{a} {word} written with a pen",
        "handwriting: {num}",
        "a sketch of the figure {word}",
        "the numeral {word}, drawn by hand",
    ),
)

CAPTION_SETS: dict[str, CaptionSet] = {DIGITS.name: DIGITS}


def caption_set(name: str) -> CaptionSet:
    """The caption set registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return CAPTION_SETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown caption set {name!r}; known: {sorted(CAPTION_SETS)}") from None
