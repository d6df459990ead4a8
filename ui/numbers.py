"""Numbers from the page's form and the Gradio API, read exactly or refused with a sentence naming the field.

A seed may be up to 2**64 - 1, past what a float holds exactly, so whole numbers never go through one; and
the page's seed box is a JavaScript number, exact only below 2**53.
"""

from __future__ import annotations

import decimal
from typing import Any

from comfy import WorkflowError

__all__ = ["api_flag", "api_number", "browser_seed", "whole", "workflow_value"]


def browser_seed(seed: int) -> int:
    """The page's seed box is a JavaScript number: past 2**53 what was typed is not what arrives."""
    if seed >= 2**53:
        raise WorkflowError(f"A seed of {seed} cannot be typed exactly in a browser: give one below "
                            f"{2**53:,} (9 quadrillion), or -1 for a random one.", field="seed")
    return seed


def whole(name: str, value: Any) -> int:
    """A form number that must be whole: 20.0 is 20; 20.5 is an error naming the field. Exact at any size
    (a seed of 2**64 - 1 is not rounded through a float).

    >>> whole("seed", 2**64 - 1), whole("steps", 20.0), whole("seed", "18446744073709551615")
    (18446744073709551615, 20, 18446744073709551615)
    """
    label = name.replace("_", " ")
    if isinstance(value, bool):
        raise WorkflowError(f"{label} must be a whole number, not {value}.", field=name)
    if isinstance(value, int):
        return value
    try:
        number = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise WorkflowError(f"{label} must be a whole number, not {value!r}.", field=name) from None
    if not number.is_finite() or number != number.to_integral_value():
        raise WorkflowError(f"{label} must be a whole number, not {value}.", field=name)
    return int(number)


def api_number(kind: type, name: str, value: Any) -> Any:
    """A number from an API caller, or a sentence naming the argument (int(20.5) would quietly be 20)."""
    whole = kind is int
    try:
        if whole and isinstance(value, float) and not value.is_integer():
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise WorkflowError(f"{name} must be {'a whole number' if whole else 'a number'}, not {value!r}.",
                            field=name) from None
    return number


def api_flag(name: str, value: Any) -> bool:
    """A yes/no from an API caller: true/false (or 1/0, "true"/"false"); anything else names the argument.

    >>> api_flag("inpaint_full_res", "false"), api_flag("inpaint_full_res", 1)
    (False, True)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise WorkflowError(f"{name} must be true or false, not {value!r}.", field=name)


def workflow_value(spec: dict[str, Any], value: Any) -> Any:
    """A workflow widget's value as its input takes it, or a sentence naming the widget (never its place)."""
    if spec["kind"] not in ("int", "float"):
        return bool(value) if spec["kind"] == "bool" else value
    label, field = spec.get("label") or spec["input_name"], f"{spec['node_id']}.{spec['input_name']}"
    try:
        number: Any = whole(label, value) if spec["kind"] == "int" else float(value)
    except (TypeError, ValueError):
        raise WorkflowError(f"{label} must be a number, not {value!r}.", field=field) from None
    low, high = spec.get("min"), spec.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        raise WorkflowError(f"{label} is {number}; it must be between {low} and {high}.", field=field)
    return number
