"""Building the API graph for a generation from core ComfyUI nodes only: the toolbox's graphs.

One function, :func:`build_graph`, covers text-to-image, image-to-image, inpainting and outpainting,
with LoRAs, a VAE, a hires-fix pass and the model family's shape. In the order of the graph:

* ``CheckpointLoaderSimple`` → ``LoraLoader`` × n → (``VAELoader``)
* ``CLIPTextEncode`` positive and negative; for Flux ``CLIPTextEncode`` → ``FluxGuidance``, and the negative
  zeroed by ``ConditioningZeroOut`` (CFG 1)
* the latent: ``EmptyLatentImage`` (Flux: ``EmptySD3LatentImage``) | ``LoadImage`` → ``VAEEncode`` |
  inpaint: ``LoadImage`` + ``LoadImageMask`` → (``GrowMask``) → (``MaskToImage`` → ``ImageBlur`` →
  ``ImageToMask``) → [only masked: ``ImageCrop`` → ``ImageScale``, ``CropMask`` → ``MaskToImage`` →
  ``ImageScale`` → ``ImageToMask``] → ``VAEEncodeForInpaint`` (denoise 1) or ``VAEEncode`` →
  ``SetLatentNoiseMask`` | outpaint: ``LoadImage`` → ``ImagePadForOutpaint`` → ``VAEEncodeForInpaint``
* ``KSampler``; hires: ``LatentUpscale`` → ``KSampler``, or ``VAEDecode`` → ``UpscaleModelLoader`` →
  ``ImageUpscaleWithModel`` → ``ImageScale`` → ``VAEEncode`` → ``KSampler``
* ``VAEDecode`` → (inpaint: [only masked: ``ImageScale``] → ``ImageCompositeMasked``, pasting the result
  into the untouched image through the mask) → ``SaveImage``

Given the server's ``object_info``, names are matched to its files (``detail`` finds
``detail.safetensors``, as A1111's ``<lora:detail:0.8>`` means) and anything unknown is refused with a
sentence naming the field and the choices; the graph is then checked by :func:`comfy.graph.validate`.
Text features that read files (styles, wildcards) are applied before, by :mod:`comfy.graph.recipe`.

>>> from comfy.graph.params import GenerationParams
>>> graph = build_graph(GenerationParams(prompt="a fox", checkpoint="m.safetensors", seed=1))
>>> [node["class_type"] for node in graph.values()]  # doctest: +NORMALIZE_WHITESPACE
['CheckpointLoaderSimple', 'CLIPTextEncode', 'CLIPTextEncode', 'EmptyLatentImage', 'KSampler', 'VAEDecode',
 'SaveImage']
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.families import Family, family_of
from comfy.graph.features import LATENT_UPSCALER, Hires, Lora, hires_of, hires_size, loras_of, outpaint_of
from comfy.graph.lora_syntax import MODEL_EXTENSIONS, extract_loras
from comfy.graph.masks import Region
from comfy.graph.nodes import Graph
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import RANDOM_SEED, GenerationParams
from comfy.graph.validation import default_checkpoint, validate

__all__ = ["build_graph", "resolve_names", "choose_file", "FILENAME_PREFIX"]

#: SaveImage's prefix, as in the shipped templates.
FILENAME_PREFIX = "ComfyUIStudio"
Link = list[Any]


def build_graph(params: GenerationParams, object_info: ObjectInfo | None = None, *,
                mask_region: Region | None = None, pending_uploads: bool = True) -> Graph:
    """The API graph that makes what ``params`` describe.

    ``init_image`` and ``mask`` are the names of images on the server (uploaded by the worker; a
    placeholder when only checking). ``mask_region`` is the "only masked" area (from
    :func:`comfy.graph.masks.masked_region`), needed when ``inpaint_full_res`` is set. Raises
    :class:`WorkflowError` with a sentence and the field to fix.
    """
    params = resolve_names(params, object_info)
    if params.seed == RANDOM_SEED:
        raise WorkflowError("The seed is -1 (random): resolve it before building the graph.", field="seed")
    family = family_of(params.family, params.checkpoint)
    builder = _Builder(object_info)
    model, clip, vae = builder.checkpoint(params, family)
    positive, negative = builder.prompts(params, family, clip)
    latent, decode_into = builder.latent(params, family, vae, mask_region)
    samples = builder.sampler(params, model, positive, negative, latent, params.denoise, params.steps, "KSampler")
    hires = hires_of(params.hires)
    if hires is not None:
        samples = builder.hires(params, hires, model, positive, negative, vae, samples)
    image = builder.add("VAEDecode", {"samples": samples, "vae": vae}, "VAE Decode")
    image = decode_into(image)
    builder.add("SaveImage", {"filename_prefix": FILENAME_PREFIX, "images": image}, "Save Image")
    if object_info is not None:
        validate(builder.graph, object_info, pending_uploads=pending_uploads)
    return builder.graph


def resolve_names(params: GenerationParams, object_info: ObjectInfo | None) -> GenerationParams:
    """``params`` with LoRAs from prompt tags added and every file name matched to the server's files.

    The prompt loses its ``<lora:...>`` tags; the LoRAs they name follow the ``loras`` list. Without
    ``object_info`` the names are kept as given.
    """
    prompt, tagged = extract_loras(params.prompt)
    loras = [*loras_of(params.loras), *tagged]
    info = object_info
    checkpoint = params.checkpoint
    if checkpoint is None:
        if info is None:
            raise WorkflowError("Choose a checkpoint (GET /models \"checkpoints\").", field="checkpoint")
        checkpoint = default_checkpoint(info)
    loras = [dataclasses.replace(lora, name=choose_file(info, "LoraLoader", "lora_name", lora.name,
                                                        field=f"loras[{i}].name", what="LoRA"))
             for i, lora in enumerate(loras)]
    vae = params.vae and choose_file(info, "VAELoader", "vae_name", params.vae, field="vae", what="VAE")
    hires = hires_of(params.hires)
    if hires is not None and hires.upscaler != LATENT_UPSCALER:
        hires = dataclasses.replace(hires, upscaler=choose_file(
            info, "UpscaleModelLoader", "model_name", hires.upscaler, field="hires.upscaler", what="upscale model",
            extra=(LATENT_UPSCALER,)))
    return dataclasses.replace(
        params, prompt=prompt, checkpoint=checkpoint, loras=[lora.to_dict() for lora in loras] or None,
        vae=vae or None, hires=hires.to_dict() if hires else None)


def choose_file(info: ObjectInfo | None, class_type: str, input_name: str, value: str, *, field: str,
                what: str, extra: Sequence[str] = ()) -> str:
    """The server's file that ``value`` names: exactly, or without its extension or folder (A1111 style).

    Raises :class:`WorkflowError` naming ``field`` and the choices when there is none, or several.
    """
    if info is None or not info.has(class_type):
        return value
    choices = [str(c) for c in info.choices(class_type, input_name)]
    wanted = value.replace("\\", "/")
    exact = [c for c in choices if c.replace("\\", "/") == wanted]
    if exact:
        return exact[0]
    for key in (_without_extension, lambda name: _without_extension(name).rsplit("/", 1)[-1]):
        matches = [c for c in choices if key(c.replace("\\", "/")).lower() == _without_extension(wanted).lower()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise WorkflowError(f"{what} {value!r} could be any of {', '.join(matches)}; give the full name.",
                                field=field)
    every = [*extra, *choices]
    if not choices:
        raise WorkflowError(f"There is no {what} {value!r} on the server: it has none"
                            f"{' (only ' + ', '.join(extra) + ')' if extra else ''}; add the file to ComfyUI's "
                            f"models folder and refresh.", field=field)
    close = difflib.get_close_matches(value, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(every[:12]) + (f" ... ({len(every)} in all)" if len(every) > 12 else "")
    raise WorkflowError(f"There is no {what} {value!r} on the server{hint}; choose one of: {shown}.", field=field)


def _without_extension(name: str) -> str:
    lowered = name.lower()
    return next((name[: -len(e)] for e in MODEL_EXTENSIONS if lowered.endswith(e)), name)


class _Builder:
    """Adds nodes with ids "1", "2"... in the order of the graph."""

    def __init__(self, info: ObjectInfo | None) -> None:
        self.info = info
        self.graph: Graph = {}

    def add(self, class_type: str, inputs: dict[str, Any], title: str | None = None) -> Link:
        node_id = str(len(self.graph) + 1)
        self.graph[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}
        return [node_id, 0]

    def has(self, class_type: str) -> bool:
        return self.info is None or self.info.has(class_type)

    def checkpoint(self, params: GenerationParams, family: Family) -> tuple[Link, Link, Link]:
        loader = self.add("CheckpointLoaderSimple", {"ckpt_name": params.checkpoint}, "Load Checkpoint")
        model, clip, vae = loader, _out(loader, 1), _out(loader, 2)
        for lora in loras_of(params.loras):
            node = self.lora(lora, model, clip)
            model, clip = node, _out(node, 1)
        if params.vae:
            vae = self.add("VAELoader", {"vae_name": params.vae}, "Load VAE")
        return model, clip, vae

    def lora(self, lora: Lora, model: Link, clip: Link) -> Link:
        return self.add("LoraLoader", {"model": model, "clip": clip, "lora_name": lora.name,
                                       "strength_model": lora.strength, "strength_clip": lora.clip_strength},
                        f"LoRA {_without_extension(lora.name)}")

    def prompts(self, params: GenerationParams, family: Family, clip: Link) -> tuple[Link, Link]:
        positive = self.add("CLIPTextEncode", {"text": params.prompt, "clip": clip}, "Positive prompt")
        # Flux is guidance-distilled: at CFG 1 the negative does nothing, so it is zeroed, not encoded
        uses_negative = family.negative_prompt or (params.negative_prompt.strip() and params.cfg != 1)
        if uses_negative:
            negative = self.add("CLIPTextEncode", {"text": params.negative_prompt, "clip": clip}, "Negative prompt")
        if family.guidance is not None:
            guidance = family.guidance if params.guidance is None else params.guidance
            positive = self.add("FluxGuidance", {"conditioning": positive, "guidance": guidance}, "Flux guidance")
        if not uses_negative:
            negative = self.add("ConditioningZeroOut", {"conditioning": positive}, "No negative prompt")
        return positive, negative

    def latent(self, params: GenerationParams, family: Family, vae: Link,
               region: Region | None) -> tuple[Link, Any]:
        """The first sampler's latent, and what to do with the decoded image before saving."""
        def unchanged(image: Link) -> Link:
            return image

        if not params.init_image:
            empty = family.empty_latent if self.has(family.empty_latent) else "EmptyLatentImage"
            latent = self.add(empty, {"width": params.width, "height": params.height,
                                      "batch_size": params.batch_size}, "Empty Latent Image")
            return latent, unchanged
        image = self.add("LoadImage", {"image": params.init_image}, "Init image")
        outpaint = outpaint_of(params.outpaint)
        if outpaint is not None:
            padded = self.add("ImagePadForOutpaint", {"image": image, **outpaint.to_dict()}, "Outpaint")
            latent = self.add("VAEEncodeForInpaint", {"pixels": padded, "vae": vae, "mask": _out(padded, 1),
                                                      "grow_mask_by": 8}, "Encode for outpaint")
            return self.batch(latent, params), unchanged
        if params.mask is None:
            return self.batch(self.add("VAEEncode", {"pixels": image, "vae": vae}, "VAE Encode"), params), unchanged
        return self.inpaint(params, image, vae, region)

    def inpaint(self, params: GenerationParams, image: Link, vae: Link, region: Region | None) -> tuple[Link, Any]:
        mask = self.add("LoadImageMask", {"image": params.mask, "channel": "red"}, "Mask")
        if params.mask_grow:
            mask = self.add("GrowMask", {"mask": mask, "expand": params.mask_grow, "tapered_corners": True},
                            "Grow mask")
        if params.mask_blur:
            mask = self.blur(mask, params.mask_blur)
        pixels, noise_mask = image, mask
        if params.inpaint_full_res:
            if region is None:
                raise WorkflowError("Only-masked inpainting needs the mask's area: read it from the mask "
                                    "(comfy.graph.masks.masked_region) before building.", field="inpaint_full_res")
            box = {"x": region.x, "y": region.y, "width": region.width, "height": region.height}
            crop = self.add("ImageCrop", {"image": image, **box}, "Crop to the masked area")
            pixels = self.scale(crop, params.width, params.height, "lanczos")
            mask = self.add("CropMask", {"mask": mask, **box}, "Crop the mask")
            as_image = self.add("MaskToImage", {"mask": mask})
            noise_mask = self.add("ImageToMask", {"image": self.scale(as_image, params.width, params.height,
                                                                      "bilinear"), "channel": "red"})
        if params.denoise >= 1.0:
            latent = self.add("VAEEncodeForInpaint", {"pixels": pixels, "vae": vae, "mask": noise_mask,
                                                      "grow_mask_by": 0}, "Encode for inpaint")
        else:
            encoded = self.add("VAEEncode", {"pixels": pixels, "vae": vae}, "VAE Encode")
            latent = self.add("SetLatentNoiseMask", {"samples": encoded, "mask": noise_mask}, "Inpaint mask")
        latent = self.batch(latent, params)

        def paste_back(decoded: Link) -> Link:
            # as A1111: what the mask keeps stays the original's pixels, blended at the (blurred) edge
            destination, x, y = image, 0, 0
            if params.inpaint_full_res:
                assert region is not None
                decoded = self.scale(decoded, region.width, region.height, "lanczos")
                x, y = region.x, region.y
            if params.batch_size > 1:
                destination = self.add("RepeatImageBatch", {"image": image, "amount": params.batch_size})
            return self.add("ImageCompositeMasked", {"destination": destination, "source": decoded, "x": x, "y": y,
                                                     "resize_source": False, "mask": mask}, "Paste into the image")
        return latent, paste_back

    def blur(self, mask: Link, blur: int) -> Link:
        # A1111's mask blur is a Gaussian of sigma = blur over a kernel of 2.5 × blur on each side
        image = self.add("MaskToImage", {"mask": mask})
        blurred = self.add("ImageBlur", {"image": image, "blur_radius": min(31, max(1, round(2.5 * blur))),
                                         "sigma": float(blur)}, "Mask blur")
        return self.add("ImageToMask", {"image": blurred, "channel": "red"})

    def scale(self, image: Link, width: int, height: int, method: str) -> Link:
        return self.add("ImageScale", {"image": image, "upscale_method": method, "width": width, "height": height,
                                       "crop": "disabled"})

    def batch(self, latent: Link, params: GenerationParams) -> Link:
        if params.batch_size <= 1:
            return latent
        return self.add("RepeatLatentBatch", {"samples": latent, "amount": params.batch_size}, "Batch")

    def sampler(self, params: GenerationParams, model: Link, positive: Link, negative: Link, latent: Link,
                denoise: float, steps: int, title: str) -> Link:
        return self.add("KSampler", {
            "seed": params.seed, "steps": steps, "cfg": params.cfg, "sampler_name": params.sampler,
            "scheduler": params.scheduler, "denoise": denoise, "model": model, "positive": positive,
            "negative": negative, "latent_image": latent}, title)

    def hires(self, params: GenerationParams, hires: Hires, model: Link, positive: Link, negative: Link,
              vae: Link, samples: Link) -> Link:
        width, height = hires_size(params.width, params.height, hires.scale)
        if hires.upscaler == LATENT_UPSCALER:
            latent = self.add("LatentUpscale", {"samples": samples, "upscale_method": "nearest-exact",
                                                "width": width, "height": height, "crop": "disabled"}, "Hires upscale")
        else:
            image = self.add("VAEDecode", {"samples": samples, "vae": vae}, "Decode for hires")
            loader = self.add("UpscaleModelLoader", {"model_name": hires.upscaler}, "Load upscale model")
            upscaled = self.add("ImageUpscaleWithModel", {"upscale_model": loader, "image": image}, "Hires upscale")
            # the model's own factor (2x, 4x) is unknown here; scaling to the exact size makes it scale × size
            sized = self.scale(upscaled, width, height, "lanczos")
            latent = self.add("VAEEncode", {"pixels": sized, "vae": vae}, "Encode for hires")
        return self.sampler(params, model, positive, negative, latent, hires.denoise, hires.steps or params.steps,
                            "Hires pass")


def _out(link: Link, index: int) -> Link:
    return [link[0], index]
