"""A read-only view over ComfyUI's ``GET /object_info`` answer.

``/object_info`` maps every installed node class to its inputs and outputs. Each input is
``[TYPE, {options}]`` where TYPE is one of:

* a widget type: ``"INT"``, ``"FLOAT"``, ``"STRING"``, ``"BOOLEAN"``;
* a combo, in either of the two forms ComfyUI 0.8 sends: the classic ``[[choice, ...], {...}]``
  (KSampler's ``sampler_name``, CheckpointLoaderSimple's ``ckpt_name``) or the newer
  ``["COMBO", {"options": [choice, ...]}]`` (KSamplerSelect, BasicScheduler); a "remote" combo such as
  LoadImageOutput's has no ``options`` at all;
* anything else (``"MODEL"``, ``"CONDITIONING"``, ``"IMAGE"``, ``"*"``...) is a link type: the value
  must come from another node's output.

``hidden`` inputs (``PROMPT``, ``EXTRA_PNGINFO``, ``UNIQUE_ID``) are filled in by the server and are
ignored here.

>>> info = ObjectInfo({"KSampler": {"input": {"required": {
...     "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
...     "sampler_name": [["euler", "ddim"], {}],
...     "model": ["MODEL", {}]}}, "output": ["LATENT"], "output_node": False}})
>>> info.samplers
['euler', 'ddim']
>>> spec = info.input_spec("KSampler", "steps")
>>> (spec.type, spec.default, spec.min, spec.max, spec.is_link)
('INT', 20, 1, 10000, False)
>>> info.input_spec("KSampler", "model").is_link
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from comfy.errors import ProtocolError, WorkflowError

__all__ = ["ObjectInfo", "InputSpec", "WIDGET_TYPES", "STOCK_SAMPLERS", "STOCK_SCHEDULERS"]

#: KSampler's choices in a stock ComfyUI 0.8 (as its /object_info lists them): what the page offers
#: when no server's catalogue can be read, e.g. a RunPod Serverless endpoint (its worker image runs
#: a stock ComfyUI, and serverless has no /object_info).
STOCK_SAMPLERS = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
    "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim",
    "uni_pc", "uni_pc_bh2",
)
STOCK_SCHEDULERS = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)

#: Input types the ComfyUI frontend shows as widgets (a literal value); any other type is a link.
WIDGET_TYPES: frozenset[str] = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


@dataclass(frozen=True)
class InputSpec:
    """How one input of one node class is declared in ``/object_info``.

    >>> InputSpec(name="cfg", type="FLOAT", default=8.0, min=0.0, max=100.0, step=0.1).is_link
    False
    """

    name: str
    #: ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO`` or a link type such as ``MODEL``.
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    #: The allowed values of a combo; None when not a combo or when the server lists them elsewhere.
    choices: tuple[Any, ...] | None = None
    multiline: bool = False
    #: LoadImage-style input: the value is the name of a file uploaded to the server's input folder.
    image_upload: bool = False
    #: For an input naming a file on the server (an image, audio or video upload): the folder it is read from.
    file_folder: str | None = None
    required: bool = True
    multiselect: bool = False
    tooltip: str | None = None

    @property
    def is_link(self) -> bool:
        """True when the value must come from another node's output (the type is not a widget type)."""
        return self.type not in WIDGET_TYPES


def _parse_input(name: str, raw: Any, *, required: bool) -> InputSpec | None:
    """Turn one ``[TYPE, {options}]`` entry into an :class:`InputSpec` (None if unreadable)."""
    if not isinstance(raw, (list, tuple)) or not raw:
        return None
    kind = raw[0]
    options = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
    choices: tuple[Any, ...] | None = None
    if isinstance(kind, (list, tuple)):
        choices, kind = tuple(kind), "COMBO"
    elif kind == "COMBO" and isinstance(options.get("options"), (list, tuple)):
        choices = tuple(options["options"])
    elif not isinstance(kind, str):
        return None
    default = options.get("default")
    if default is None and choices:
        default = choices[0]  # what the ComfyUI frontend shows for a combo without a default
    return InputSpec(
        name=name,
        type=kind,
        default=default,
        min=options.get("min"),
        max=options.get("max"),
        step=options.get("step"),
        choices=choices,
        multiline=bool(options.get("multiline", False)),
        image_upload=bool(options.get("image_upload", False)),
        file_folder=(options.get("image_folder") or "input") if any(
            options.get(flag) for flag in ("image_upload", "audio_upload", "video_upload")) else None,
        required=required,
        multiselect=bool(options.get("multiselect", False)),
        tooltip=options.get("tooltip") if isinstance(options.get("tooltip"), str) else None,
    )


class ObjectInfo:
    """What a ComfyUI server has installed: node classes, their inputs, and the model files it offers.

    Build it from the parsed body (``ObjectInfo(raw)``) or the raw text (``ObjectInfo.from_json``).
    It never changes the dict it wraps.
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        if not isinstance(raw, dict):
            raise ProtocolError(f"/object_info should be a JSON object, not {type(raw).__name__}.")
        self._raw = raw

    @classmethod
    def from_json(cls, text: str | bytes) -> ObjectInfo:
        """Parse a ``GET /object_info`` body; raises :class:`ProtocolError` if it is not a JSON object."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"/object_info is not valid JSON: {exc}") from exc
        return cls(raw)

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and self.has(class_type)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"ObjectInfo({len(self._raw)} node classes)"

    @property
    def raw(self) -> dict[str, Any]:
        """The wrapped ``/object_info`` dict, for saving it as JSON; treat it as read-only."""
        return self._raw

    @property
    def class_types(self) -> list[str]:
        """Every installed node class, in the server's order."""
        return list(self._raw)

    def has(self, class_type: str) -> bool:
        return isinstance(self._raw.get(class_type), dict)

    def node(self, class_type: str) -> dict[str, Any]:
        """The raw entry of a node class; raises :class:`WorkflowError` if the server does not have it."""
        entry = self._raw.get(class_type)
        if not isinstance(entry, dict):
            raise WorkflowError(
                f"Node type {class_type!r} is not installed on the ComfyUI server; "
                "install the custom node or pick another workflow."
            )
        return entry

    def display_name(self, class_type: str) -> str:
        entry = self._raw.get(class_type)
        name = entry.get("display_name") if isinstance(entry, dict) else None
        return name if isinstance(name, str) and name else class_type

    def input_specs(self, class_type: str) -> list[InputSpec]:
        """Required then optional inputs, in the server's ``input_order``; hidden inputs are left out."""
        inputs = self.node(class_type).get("input") or {}
        order = self.node(class_type).get("input_order") or {}
        specs: list[InputSpec] = []
        for section in ("required", "optional"):
            declared = inputs.get(section) or {}
            names = [n for n in order.get(section) or [] if n in declared]
            names += [n for n in declared if n not in names]
            for name in names:
                spec = _parse_input(name, declared[name], required=section == "required")
                if spec is not None:
                    specs.append(spec)
        return specs

    def input_spec(self, class_type: str, input_name: str) -> InputSpec | None:
        """The declared input, or None if the class has no such (non-hidden) input."""
        inputs = self.node(class_type).get("input") or {}
        for section in ("required", "optional"):
            declared = inputs.get(section) or {}
            if input_name in declared:
                return _parse_input(input_name, declared[input_name], required=section == "required")
        return None

    def output_types(self, class_type: str) -> tuple[Any, ...]:
        """The types of a node's outputs, by output index (``("MODEL", "CLIP", "VAE")``)."""
        return tuple(self.node(class_type).get("output") or ())

    def is_output_node(self, class_type: str) -> bool:
        """True for nodes ComfyUI runs as a goal (SaveImage, PreviewImage...)."""
        return self.has(class_type) and self._raw[class_type].get("output_node") is True

    def choices(self, class_type: str, input_name: str) -> list[Any]:
        """The combo choices of one input; [] if the class or input is missing or not a combo."""
        if not self.has(class_type):
            return []
        spec = self.input_spec(class_type, input_name)
        return list(spec.choices) if spec is not None and spec.choices is not None else []

    @property
    def checkpoints(self) -> list[str]:
        """Files in ``models/checkpoints`` (CheckpointLoaderSimple's ``ckpt_name`` choices)."""
        return self.choices("CheckpointLoaderSimple", "ckpt_name")

    @property
    def samplers(self) -> list[str]:
        """KSampler's ``sampler_name`` choices."""
        return self.choices("KSampler", "sampler_name")

    @property
    def schedulers(self) -> list[str]:
        """KSampler's ``scheduler`` choices."""
        return self.choices("KSampler", "scheduler")

    @property
    def loras(self) -> list[str]:
        """Files in ``models/loras`` (LoraLoader's ``lora_name`` choices)."""
        return self.choices("LoraLoader", "lora_name")

    @property
    def vaes(self) -> list[str]:
        """VAELoader's ``vae_name`` choices."""
        return self.choices("VAELoader", "vae_name")

    @property
    def upscale_models(self) -> list[str]:
        """UpscaleModelLoader's ``model_name`` choices."""
        return self.choices("UpscaleModelLoader", "model_name")
