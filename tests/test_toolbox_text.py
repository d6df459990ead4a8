"""The toolbox's text features: styles (A1111's styles.csv), wildcards drawn from the seed, LoRA tags, masks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from comfy.errors import WorkflowError
from comfy.graph.features import Lora
from comfy.graph.lora_syntax import extract_loras, lora_tag, with_lora_tags
from comfy.graph.masks import Region, check_mask, masked_region
from comfy.graph.params import GenerationParams
from comfy.graph.recipe import output_size, prepare
from comfy.graph.styles import (
    SHIPPED_STYLES,
    Style,
    apply_styles,
    load_styles,
    parse_styles_csv,
    resolve_styles,
    styles_csv,
)
from comfy.graph.wildcards import SHIPPED_WILDCARDS, expand, list_wildcards
from tests.toolbox_support import toolbox_info

# A styles.csv as AUTOMATIC1111 1.x writes it: a BOM-less header, quoted fields, the "None" placeholder row,
# an empty negative, a prompt without {prompt} (appended), and a comma inside quotes.
A1111_STYLES = '''name,prompt,negative_prompt
None,,
"Studio Ghibli","studio ghibli style, {prompt}, hand-drawn","3d, photo"
Moody,"dark, moody lighting",
"Sharp, clean","{prompt}, sharp focus","blurry"
'''


# ----------------------------------------------------------------------------------------------- styles


def test_a1111_styles_csv_is_read_as_is() -> None:
    styles = parse_styles_csv(A1111_STYLES.encode())
    assert [s.name for s in styles] == ["Studio Ghibli", "Moody", "Sharp, clean"]
    assert styles[0] == Style("Studio Ghibli", "studio ghibli style, {prompt}, hand-drawn", "3d, photo")
    assert styles[1].negative_prompt == ""


def test_an_old_a1111_file_with_a_text_column_and_a_bom_is_read() -> None:
    styles = parse_styles_csv("\ufeffname,text,negative_prompt\nOld,\"old style {prompt}\",bad\n".encode())
    assert styles == [Style("Old", "old style {prompt}", "bad")]


def test_styles_apply_in_order_as_a1111_merges_them() -> None:
    ghibli, moody, _ = parse_styles_csv(A1111_STYLES)
    assert apply_styles("a castle", "", [ghibli, moody]) == (
        "studio ghibli style, a castle, hand-drawn, dark, moody lighting", "3d, photo")
    assert apply_styles("", "ugly", [moody, ghibli]) == ("studio ghibli style, dark, moody lighting, hand-drawn",
                                                         "ugly, 3d, photo")


def test_user_styles_replace_shipped_ones_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text('name,prompt,negative_prompt\nCinematic,"my cinema {prompt}",\nNew,"new",\n')
    library = load_styles(SHIPPED_STYLES, tmp_path, tmp_path / "missing")
    assert library["Cinematic"].prompt == "my cinema {prompt}"
    assert "New" in library and "Watercolor" in library


def test_the_shipped_styles_are_a_small_useful_set() -> None:
    library = load_styles(SHIPPED_STYLES)
    assert 10 <= len(library) <= 30
    assert all("{prompt}" in s.prompt and s.negative_prompt for s in library.values())


def test_a_written_csv_reads_back_the_same() -> None:
    styles = parse_styles_csv(A1111_STYLES)
    assert parse_styles_csv(styles_csv(styles)) == styles


def test_an_unknown_style_names_the_field_and_the_choices() -> None:
    library = load_styles(SHIPPED_STYLES)
    with pytest.raises(WorkflowError, match="did you mean 'Cinematic'.*Anime, ") as caught:
        resolve_styles(["Cinematc"], library)
    assert caught.value.field == "styles"
    assert resolve_styles(["anime"], library) == [library["Anime"]]  # case is forgiven


def test_a_file_that_is_not_a_styles_csv_is_refused() -> None:
    for text in ("just,some,columns\n1,2,3\n", b"\xff\xfe\x00bad"):
        with pytest.raises(WorkflowError) as caught:
            parse_styles_csv(text)
        assert caught.value.field == "styles"


# -------------------------------------------------------------------------------------------- wildcards


@pytest.fixture()
def cards(tmp_path: Path) -> Path:
    (tmp_path / "animal.txt").write_text("# animals\nfox\n\nowl\nwolf\nbear\n")
    (tmp_path / "place.txt").write_text("a {snowy|misty} __biome__\n")
    (tmp_path / "biome.txt").write_text("forest\ntundra\n")
    (tmp_path / "people").mkdir()
    (tmp_path / "people" / "job.txt").write_text("baker\nsmith\n")
    (tmp_path / "loop_a.txt").write_text("__loop_b__\n")
    (tmp_path / "loop_b.txt").write_text("x __loop_a__\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    return tmp_path


def test_the_same_seed_draws_the_same_text(cards: Path) -> None:
    prompt = "a __animal__ in __place__, {red|blue|green} scarf, __people/job__"
    first = expand(prompt, 42, cards)
    assert first == expand(prompt, 42, cards)
    assert "__" not in first and "{" not in first
    drawn = {expand(prompt, seed, cards) for seed in range(40)}
    assert len(drawn) > 10  # other seeds draw other lines
    assert {expand("__animal__", seed, cards) for seed in range(60)} == {"fox", "owl", "wolf", "bear"}


def test_nested_wildcards_and_choices_expand(cards: Path) -> None:
    for seed in range(20):
        text = expand("__place__ {1|{2|3}}", seed, cards)
        place, number = text.rsplit(" ", 1)
        assert place in {f"a {w} {b}" for w in ("snowy", "misty") for b in ("forest", "tundra")}
        assert number in {"1", "2", "3"}


def test_a_wildcard_loop_is_refused_not_followed(cards: Path) -> None:
    with pytest.raises(WorkflowError, match=r"__loop_a__ → __loop_b__ → __loop_a__") as caught:
        expand("__loop_a__", 1, cards)
    assert caught.value.field == "prompt"


def test_a_missing_or_empty_wildcard_says_what_exists(cards: Path) -> None:
    with pytest.raises(WorkflowError, match=r"no wildcard file animals.txt.*did you mean __animal__") as caught:
        expand("__animals__", 1, cards)
    assert caught.value.field == "prompt"
    with pytest.raises(WorkflowError, match="no lines"):
        expand("__empty__", 1, cards)


def test_a_wildcard_name_cannot_leave_its_folders(cards: Path) -> None:
    (cards.parent / "secret.txt").write_text("password\n")
    assert "password" not in expand("__../secret__ __animal__", 1, cards)  # not a wildcard name: left as text
    with pytest.raises(WorkflowError, match="not a wildcard name"):
        expand("__people/../../secret__", 1, cards)


def test_plain_text_and_single_braces_are_left_alone(cards: Path) -> None:
    assert expand("a {lone} word, (detailed:1.2)", 3, cards) == "a {lone} word, (detailed:1.2)"
    assert expand("__animal__ {lone}", 3, cards).endswith(" {lone}")


def test_user_wildcards_come_before_the_shipped_ones(cards: Path) -> None:
    (cards / "season.txt").write_text("monsoon\n")
    assert expand("__season__", 5, [cards, SHIPPED_WILDCARDS]) == "monsoon"
    assert expand("__season__", 5, [SHIPPED_WILDCARDS]) in {"spring", "summer", "autumn", "winter"}
    assert {"art-style", "color", "lighting", "season"} <= set(list_wildcards(SHIPPED_WILDCARDS))


# -------------------------------------------------------------------------------------------- LoRA tags


def test_lora_tags_in_a1111_forms() -> None:
    text, loras = extract_loras("<lora:a> x <LORA:b:0.4> <lyco:c:te=0.3:unet=0.9> <lora:d:1:0.5>")
    assert text == "x"
    assert loras == [Lora("a", 1.0), Lora("b", 0.4), Lora("c", 0.9, 0.3), Lora("d", 0.5, 1.0)]


def test_a_bad_lora_weight_is_a_sentence() -> None:
    with pytest.raises(WorkflowError, match="weight must be a number") as caught:
        extract_loras("<lora:x:strong>")
    assert caught.value.field == "prompt"


def test_lora_tags_written_read_back_the_same() -> None:
    loras = [Lora("sub/ink.safetensors", 0.7), Lora("grain.pt", 0.5, 0.25)]
    text = with_lora_tags("a fox, detailed", loras)
    assert text == "a fox, detailed <lora:sub/ink:0.7> <lora:grain:0.25:0.5>"
    assert extract_loras(text) == ("a fox, detailed", [Lora("sub/ink", 0.7), Lora("grain", 0.5, 0.25)])
    assert lora_tag(Lora("x", 1.0)) == "<lora:x:1>"


# --------------------------------------------------------------------------------------------- masks


def png(size: tuple[int, int], box: tuple[int, int, int, int] | None = None, mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, "black")
    if box:
        image.paste("white", box)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_a_mask_of_the_wrong_size_is_refused_with_both_sizes() -> None:
    with pytest.raises(WorkflowError, match="512×384 but the init image is 512×512") as caught:
        check_mask(png((512, 384), (0, 0, 10, 10)), png((512, 512)))
    assert caught.value.field == "mask"


def test_a_mask_must_be_a_png_that_masks_something() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
    with pytest.raises(WorkflowError, match="PNG"):
        check_mask(jpeg.getvalue(), png((64, 64)))
    with pytest.raises(WorkflowError, match="all black"):
        check_mask(png((64, 64)), png((64, 64)))
    check_mask(png((64, 64), (8, 8, 16, 16), "L"), jpeg.getvalue())


def test_the_only_masked_area_is_padded_widened_to_the_aspect_and_kept_inside() -> None:
    mask = png((1024, 768), (500, 300, 600, 340))
    # box 500..600 × 300..340, padded by 32: 164 × 104, then widened to the generation's aspect
    assert masked_region(mask, 32, 512, 512) == Region(468, 238, 164, 164)
    assert masked_region(mask, 32, 1024, 512) == Region(446, 268, 208, 104)
    corner = png((512, 512), (0, 0, 20, 20))
    assert masked_region(corner, 32, 512, 256) == Region(0, 0, 104, 52)


# -------------------------------------------------------------------------------------------- recipe


def test_prepare_applies_styles_then_wildcards_then_lora_tags(cards: Path) -> None:
    library = {"Fur": Style("Fur", "{prompt}, fluffy __animal__ fur <lora:film_grain:0.3>", "bald")}
    asked = GenerationParams(prompt="portrait of a __animal__", negative_prompt="{ugly|bad}", seed=9,
                             checkpoint="random-sd15.safetensors", styles=["Fur"])
    ready = prepare(asked, toolbox_info(), styles=library, wildcard_dirs=[cards])
    assert ready.asked is asked
    assert "__" not in ready.params.prompt and "<lora" not in ready.params.prompt
    assert ready.params.negative_prompt in ("ugly, bald", "bad, bald")
    assert ready.params.loras == [{"name": "film_grain.pt", "strength": 0.3, "strength_clip": None}]
    record = ready.record()
    assert record["prompt_ran"] == ready.params.prompt and record["styles"] == ["Fur"]
    assert record["loras"][0]["name"] == "film_grain.pt"
    again = prepare(asked, toolbox_info(), styles=library, wildcard_dirs=[cards])
    assert again.params == ready.params  # a retry is the same image
    graph = ready.graph(toolbox_info())
    assert graph["3"]["inputs"]["text"] == ready.params.prompt  # 1 checkpoint, 2 LoRA, 3 positive


def test_prepare_records_the_mask_hires_and_family() -> None:
    mask = png((512, 512), (100, 100, 200, 200))
    asked = GenerationParams(prompt="a hat", seed=1, checkpoint="random-sd15.safetensors", init_image="i.png",
                             mask="m.png", inpaint_full_res=True, denoise=0.5)
    ready = prepare(asked, toolbox_info(), styles={}, mask_png=mask)
    assert ready.record()["mask"] == {"blur": 4, "grow": 0, "only_masked": True, "padding": 32,
                                      "region": [68, 68, 164, 164]}
    assert "ImageCrop" in [n["class_type"] for n in ready.graph(toolbox_info()).values()]
    xl = prepare(GenerationParams(prompt="x", seed=1, checkpoint="sd_xl_base_1.0.safetensors", hires={"scale": 2}),
                 toolbox_info(), styles={})
    assert xl.record() == {"hires": {"scale": 2.0, "denoise": 0.5, "steps": None, "upscaler": "latent",
                                     "size": [1024, 1024]}, "family": "sdxl"}


def test_prepare_needs_a_resolved_seed() -> None:
    with pytest.raises(ValueError):
        prepare(GenerationParams(prompt="x"), styles={})


def test_the_output_size_of_each_kind() -> None:
    assert output_size(GenerationParams(prompt="x", width=640, height=512, hires={"scale": 1.5})) == (960, 768)
    outpaint = GenerationParams(prompt="x", init_image="i.png", outpaint={"left": 64, "bottom": 128})
    assert output_size(outpaint, (512, 512)) == (576, 640)
    assert output_size(outpaint) is None


def test_a_broken_users_csv_is_left_out_and_the_other_styles_still_load(tmp_path, caplog) -> None:
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "mine.csv").write_text("name,prompt,negative_prompt\nInk,\"ink wash of {prompt}\",\n")
    (folder / "broken.csv").write_bytes(b"\xff\xfe not text")
    with caplog.at_level("WARNING"):
        styles = load_styles(SHIPPED_STYLES, folder)
    assert "Ink" in styles and "Cinematic" in styles  # the user's good file and the shipped ones
    assert "broken.csv is left out" in caplog.text and "UTF-8" in caplog.text
