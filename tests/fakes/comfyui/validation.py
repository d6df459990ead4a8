"""A port of ComfyUI's prompt validation (``execution.validate_prompt``), against object_info.

So that POST /prompt answers 400 bodies of exactly the fixtures' shape. Imports nothing from the rest
of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Classes whose VALIDATE_INPUTS replaces the combo check for ``image`` (nodes.LoadImage, LoadImageMask).
_IMAGE_LOADERS = frozenset({"LoadImage", "LoadImageMask"})


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _type_name(exc: BaseException) -> str:
    """execution.full_type_name: builtins lose their module prefix."""
    klass = type(exc)
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def _is_link(value: Any) -> bool:
    """comfy_execution.graph_utils.is_link"""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
    )


def _types_compatible(received: Any, expected: Any) -> bool:
    """execution.validate_node_input (non-strict)."""
    if not received != expected:
        return True
    if "*" in (received, expected) or "COMFY_MATCHTYPE_V3" in (received, expected):
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if received == "COMBO" and isinstance(expected, list):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


_Validated = tuple[bool, list[dict[str, Any]], str]
_CONVERTERS: dict[str, Callable[[Any], Any]] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _range_error(kind: str, message: str, name: str, config: list[Any], value: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "message": message,
        "details": f"{name}",
        "extra_info": {"input_name": name, "input_config": config, "received_value": value},
    }


class _Validator:
    """ComfyUI's validate_prompt/validate_inputs, against object_info instead of live node classes.

    Deliberately a line-by-line port (including quirks such as ``dependent_outputs`` listing every
    failed output seen so far) so that 400 bodies match the captured ones.
    """

    def __init__(self, classes: dict[str, Any], image_exists: Callable[[str], bool], traceback: list[str]) -> None:
        self._classes = classes
        self._image_exists = image_exists
        self._traceback = traceback

    def validate_prompt(
        self, prompt: Any, partial: list[str] | None
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        outputs: list[str] = []
        for x in prompt:
            if "class_type" not in prompt[x]:
                msg = "Cannot execute because a node is missing the class_type property."
                return False, _error("invalid_prompt", msg, f"Node ID '#{x}'"), [], {}
            class_type = prompt[x]["class_type"]
            info = self._classes.get(class_type)
            if info is None:
                msg = f"Cannot execute because node {class_type} does not exist."
                return False, _error("invalid_prompt", msg, f"Node ID '#{x}'"), [], {}
            if info.get("output_node") is True and (partial is None or x in partial):
                outputs.append(x)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}
        return self._validate_outputs(prompt, outputs)

    def _validate_outputs(
        self, prompt: dict[str, Any], outputs: list[str]
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        node_errors: dict[str, Any] = {}
        validated: dict[str, _Validated] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self._validate_inputs(prompt, o, validated)
            except Exception as ex:  # noqa: BLE001 - ComfyUI reports any exception as a reason
                valid = False
                reasons = [
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": str(ex),
                        "extra_info": {"exception_type": _type_name(ex), "traceback": self._traceback},
                    }
                ]
                validated[o] = (False, reasons, o)
            if valid is True:
                good.append(o)
                continue
            failed.append((o, reasons))
            for node_id, (ok, node_reasons, _) in validated.items():
                if ok is not True and node_reasons:
                    if node_id not in node_errors:
                        node_errors[node_id] = {
                            "errors": node_reasons,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        }
                    node_errors[node_id]["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, errors in failed for e in errors)
            error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
            return False, error, [], node_errors
        return True, None, good, node_errors

    @staticmethod
    def _input_info(spec: dict[str, Any], name: str) -> tuple[Any, str, dict[str, Any]]:
        for category in ("required", "optional"):
            entry = spec.get(category, {}).get(name)
            if entry is not None:
                extra = entry[1] if len(entry) > 1 else {}
                return entry[0], category, extra
        raise KeyError(name)

    def _validate_inputs(self, prompt: dict[str, Any], unique_id: str, validated: dict[str, _Validated]) -> _Validated:
        if unique_id in validated:
            return validated[unique_id]
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        spec = self._classes[class_type].get("input", {})
        custom = ("image",) if class_type in _IMAGE_LOADERS else ()
        errors: list[dict[str, Any]] = []
        valid = True
        for x in dict.fromkeys([*spec.get("required", {}), *spec.get("optional", {})]):
            input_type, category, extra = self._input_info(spec, x)
            if x not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue
            config = [input_type, extra]
            if isinstance(inputs[x], list):
                outcome = self._check_link(prompt, x, inputs[x], input_type, config, custom, validated)
            else:
                outcome = self._check_value(inputs, x, input_type, extra, config, custom)
            if isinstance(outcome, dict):
                errors.append(outcome)
            elif outcome is False:
                valid = False
        if custom and "image" in inputs and not isinstance(inputs["image"], list):
            errors.extend(self._custom_image_check(inputs["image"]))
        result: _Validated = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = result
        return result

    def _check_link(
        self,
        prompt: dict[str, Any],
        x: str,
        val: list[Any],
        input_type: Any,
        config: list[Any],
        custom: tuple[str, ...],
        validated: dict[str, _Validated],
    ) -> dict[str, Any] | bool:
        """A linked input: returns an error dict, False (upstream invalid) or True."""
        if len(val) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": f"{x}",
                "extra_info": {"input_name": x, "input_config": config, "received_value": val},
            }
        o_id = val[0]
        received_type = self._classes[prompt[o_id]["class_type"]]["output"][val[1]]
        if "input_types" not in custom and not _types_compatible(received_type, input_type):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                "extra_info": {
                    "input_name": x,
                    "input_config": config,
                    "received_type": received_type,
                    "linked_node": val,
                },
            }
        try:
            return self._validate_inputs(prompt, o_id, validated)[0] is not False
        except Exception as ex:  # noqa: BLE001 - reported under the upstream node, as ComfyUI does
            validated[o_id] = (
                False,
                [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(ex),
                        "extra_info": {
                            "input_name": x,
                            "input_config": config,
                            "exception_message": str(ex),
                            "exception_type": _type_name(ex),
                            "traceback": self._traceback,
                            "linked_node": val,
                        },
                    }
                ],
                o_id,
            )
            return False

    @staticmethod
    def _check_value(
        inputs: dict[str, Any],
        x: str,
        input_type: Any,
        extra: dict[str, Any],
        config: list[Any],
        custom: tuple[str, ...],
    ) -> dict[str, Any] | bool:
        """A widget value: converts it in place (as ComfyUI does) and checks min/max/combo."""
        val = inputs[x]
        try:
            if isinstance(val, dict) and "__value__" in val:
                val = inputs[x] = val["__value__"]
            converter = _CONVERTERS.get(input_type) if isinstance(input_type, str) else None
            if converter is not None:
                val = inputs[x] = converter(val)
        except Exception as ex:  # noqa: BLE001 - any conversion failure is an invalid_input_type
            return {
                "type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{x}, {val}, {ex}",
                "extra_info": {
                    "input_name": x,
                    "input_config": config,
                    "received_value": val,
                    "exception_message": str(ex),
                },
            }
        if x in custom:
            return True
        if "min" in extra and val < extra["min"]:
            message = f"Value {val} smaller than min of {extra['min']}"
            return _range_error("value_smaller_than_min", message, x, config, val)
        if "max" in extra and val > extra["max"]:
            message = f"Value {val} bigger than max of {extra['max']}"
            return _range_error("value_bigger_than_max", message, x, config, val)
        if isinstance(input_type, list) or input_type == "COMBO":
            options = extra.get("options", []) if input_type == "COMBO" else input_type
            if val not in options:
                # ComfyUI does not send back gigantic lists (e.g. scanned model paths).
                long_list = len(options) > 20
                listed = f"(list of length {len(options)})" if long_list else str(options)
                return {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{x}: '{val}' not in {listed}",
                    "extra_info": {
                        "input_name": x,
                        "input_config": None if long_list else config,
                        "received_value": val,
                    },
                }
        return True

    def _custom_image_check(self, image: Any) -> list[dict[str, Any]]:
        """nodes.LoadImage.VALIDATE_INPUTS: the file must exist (uploaded, or shipped like example.png)."""
        if self._image_exists(str(image)):
            return []
        return [
            {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": f"image - Invalid image file: {image}",
                "extra_info": {"input_name": "image"},
            }
        ]
