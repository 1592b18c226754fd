"""The colours of static/chatd.css against WCAG 2.1's contrast minimums, in light and dark.

axe checks what a page shows at the moment it runs; this checks every pair the stylesheet
can put together (hover, the current room, an unread badge, an error, a control's border)
from the custom properties at the top of chatd.css, with the WCAG formula. Run it as a
script to print the table: `python tests/test_contrast.py [path/to/chatd.css]`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

CSS = Path(__file__).resolve().parent.parent / "static" / "chatd.css"
TEXT, LARGE, NON_TEXT = 4.5, 3.0, 3.0  # WCAG 1.4.3 (normal and large text) and 1.4.11

# (what, foreground, background, minimum). A colour is a custom property's name, or
# (name, alpha, under) for one mixed over another: opacity, color-mix(... N%, transparent)
# or color-mix(... N%, under).
PAIRS: list[tuple[str, object, object, float]] = [
    ("text on page", "fg", "bg", TEXT),
    ("text on panel", "fg", "panel", TEXT),
    ("muted text on panel", "muted", "panel", TEXT),
    ("muted text on page / in a field", "muted", "bg", TEXT),
    ("muted time on own message", "muted", "mine", TEXT),
    ("muted time on a mention", "muted", "mention", TEXT),
    ("link on panel", "accent", "panel", TEXT),
    ("link on page", "accent", "bg", TEXT),
    ("own name on own message", "accent", "mine", TEXT),
    ("@mention on panel", "accent", ("accent", 0.12, "panel"), TEXT),
    ("@mention in own message", "accent", ("accent", 0.12, "mine"), TEXT),
    ("@mention in a mention", "accent", ("accent", 0.12, "mention"), TEXT),
    ("text on an accent background (primary buttons, new-messages pill)", "accent-fg", "accent", TEXT),
    ("danger text on panel", "danger", "panel", TEXT),
    ("unsent message note on own message", "danger", "mine", TEXT),
    ("error text on its tint", "danger", ("danger", 0.10, "panel"), TEXT),
    ("notice text on its tint", "fg", ("ok", 0.12, "panel"), TEXT),
    ("connection banner text", "fg", ("warn", 0.18, "panel"), TEXT),
    ("toast", "panel", "fg", TEXT),
    ("sidebar text", "side-fg", "side", TEXT),
    ("sidebar text on hover", "side-hi", "side-hover", TEXT),
    ("sidebar tag / connection state", "side-fg", "side-hover", TEXT),
    ("sidebar unread / name", "side-hi", "side", TEXT),
    ("current room", "side-current-fg", "side-current", TEXT),
    ("unread badge", "badge-fg", "badge", TEXT),
    ("control border on page colour", "control-line", "bg", NON_TEXT),
    ("control border on panel", "control-line", "panel", NON_TEXT),
    ("focus ring on panel", "accent", "panel", NON_TEXT),
    ("focus ring on page", "accent", "bg", NON_TEXT),
    ("offline field border on panel", "warn", "panel", NON_TEXT),
]


def custom_properties(css: str) -> dict[str, dict[str, str]]:
    """The light `:root` block and the dark one (light values, dark overrides on top)."""
    light_block = re.search(r"^:root\s*\{(.*?)\}", css, re.S | re.M)
    dark_block = re.search(r"prefers-color-scheme:\s*dark\)\s*\{\s*:root\s*\{(.*?)\}", css, re.S)
    assert light_block and dark_block, "chatd.css must start with the light and dark :root blocks"

    def props(block: str) -> dict[str, str]:
        return {name: value.strip() for name, value in re.findall(r"--([\w-]+):\s*([^;]+);", block)}

    light = props(light_block.group(1))
    return {"light": light, "dark": {**light, **props(dark_block.group(1))}}


def rgb(value: str) -> tuple[float, float, float]:
    hexa = value.lstrip("#")
    if len(hexa) == 3:
        hexa = "".join(ch * 2 for ch in hexa)
    assert re.fullmatch(r"[0-9a-fA-F]{6}", hexa), f"not a #rrggbb colour: {value}"
    return tuple(int(hexa[i:i + 2], 16) / 255 for i in (0, 2, 4))


def resolve(colour: object, scheme: dict[str, str]) -> tuple[float, float, float]:
    """A colour as the browser paints it: blending happens on the sRGB values."""
    if isinstance(colour, str):
        return rgb(scheme[colour])
    name, alpha, under = colour
    top, bottom = resolve(name, scheme), resolve(under, scheme)
    return tuple(alpha * t + (1 - alpha) * b for t, b in zip(top, bottom, strict=True))


def luminance(colour: tuple[float, float, float]) -> float:
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ratio(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def ratios(css: str) -> list[tuple[str, float, float, float]]:
    """(what, light ratio, dark ratio, minimum) for every pair; NaN where a property is missing."""
    schemes = custom_properties(css)
    rows = []
    for what, fg, bg, minimum in PAIRS:
        got = []
        for scheme in (schemes["light"], schemes["dark"]):
            try:
                got.append(ratio(resolve(fg, scheme), resolve(bg, scheme)))
            except KeyError:
                got.append(float("nan"))
        rows.append((what, got[0], got[1], minimum))
    return rows


@pytest.mark.parametrize("what", [pair[0] for pair in PAIRS])
def test_colour_pairs_meet_wcag_contrast_in_light_and_dark(what: str) -> None:
    row = next(r for r in ratios(CSS.read_text()) if r[0] == what)
    _, light, dark, minimum = row
    assert light >= minimum and dark >= minimum, f"{what}: light {light:.2f}, dark {dark:.2f}, need {minimum}"


def test_controls_use_their_own_border_colour() -> None:
    """Dividers may stay faint (--line); fields and buttons are outlined with --control-line."""
    css = CSS.read_text()
    for selector in ("input[type=text], input:not([type]), input[type=password], textarea", "button",
                     "input[type=search]", ".button"):
        rule = re.search(r"(?m)^" + re.escape(selector) + r" \{([^}]*)\}", css)
        assert rule and "border: 1px solid var(--control-line)" in rule.group(1), selector


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else CSS
    print("| pair | light | dark | minimum |\n|---|---|---|---|")
    for what, light, dark, minimum in ratios(source.read_text()):
        print(f"| {what} | {light:.2f} | {dark:.2f} | {minimum} |")
