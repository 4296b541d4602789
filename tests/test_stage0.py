"""Stage 0: the contrastive and AIM objectives against hand-computed references, exports against transformers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers

from mm1lab.config import MM1Config
from mm1lab.data.tokenizer import load_tokenizer
from mm1lab.model import MM1Model
from mm1lab.pretrained import load_hf_lm, load_hf_vision
from mm1lab.stage0.aim import AIM, patch_targets, prefix_causal_mask
from mm1lab.stage0.clip import CLIP, caption_loss, clip_loss, siglip_loss
from mm1lab.stage0.data import PairCollator, caption_of, encode_captions, swap_shape
from mm1lab.stage0.export import export_aim, export_clip, export_clip_vision, export_lm, load_clip
from mm1lab.stage0.presets import stage0_config


def test_clip_loss_is_the_symmetric_infonce_written_out():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.2, 0.4, 0.9]])
    def infonce(rows):   # mean over rows of -log softmax(row)[diagonal]
        return sum(-math.log(math.exp(r[i]) / sum(math.exp(x) for x in r)) for i, r in enumerate(rows)) / len(rows)
    rows, cols = logits.tolist(), logits.T.tolist()
    assert clip_loss(logits).item() == pytest.approx((infonce(rows) + infonce(cols)) / 2, rel=1e-6)


def test_siglip_loss_is_the_pairwise_sigmoid_written_out():
    logits = torch.tensor([[2.0, -0.5], [0.3, 1.0]])
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))   # noqa: E731
    expected = -(log_sigmoid(2.0) + log_sigmoid(0.5) + log_sigmoid(-0.3) + log_sigmoid(1.0)) / 2
    assert siglip_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_hard_negatives_widen_only_the_image_to_text_choice():
    logits = torch.tensor([[2.0, 0.5, 1.8], [0.1, 1.5, -3.0]])       # 2 pairs, then one hard negative text
    def nll(row, i):
        return -math.log(math.exp(row[i]) / sum(math.exp(x) for x in row))
    rows, cols = logits.tolist(), logits[:, :2].T.tolist()
    expected = ((nll(rows[0], 0) + nll(rows[1], 1)) / 2 + (nll(cols[0], 0) + nll(cols[1], 1)) / 2) / 2
    assert clip_loss(logits).item() == pytest.approx(expected, rel=1e-6)
    assert clip_loss(logits) > clip_loss(logits[:, :2])              # a close negative costs the first image
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))   # noqa: E731
    negatives = -(log_sigmoid(-1.8) + log_sigmoid(3.0)) / 2          # the extra column is -1 for both images
    assert siglip_loss(logits).item() == pytest.approx(siglip_loss(logits[:, :2]).item() + negatives, rel=1e-6)


def test_caption_loss_is_next_token_cross_entropy_up_to_the_first_end_token():
    end = 6
    ids = torch.tensor([[5, 7, end, 0], [8, end, 0, end]])        # row 2: a second <|end|> after padding
    logits = torch.randn(2, 4, 10, generator=torch.Generator().manual_seed(0))
    def nll(b, t):                                                 # position t scored on token t + 1
        row = logits[b, t].tolist()
        return -math.log(math.exp(row[ids[b, t + 1]]) / sum(math.exp(x) for x in row))
    scored = [(0, 0), (0, 1), (1, 0)]                              # 7, <|end|>; <|end|>; nothing past it
    expected = sum(nll(b, t) for b, t in scored) / len(scored)
    assert caption_loss(logits, ids, end).item() == pytest.approx(expected, rel=1e-6)


def test_coca_caption_decoder_sees_every_patch_and_only_earlier_caption_tokens():
    torch.manual_seed(0)
    cfg = stage0_config("clip", {"preset": "clip-tiny", "caption_weight": 2.0, "caption_depth": 1})
    model = CLIP(cfg).eval()
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([[5, 7, 9, 6], [5, 8, 6, 0]])
    def caption_logits(images, ids):
        with torch.no_grad():
            return model.caption_decoder(model.vision(images).features, model.text.states(ids),
                                         model.text.token_embed.weight)
    base = caption_logits(images, ids)
    later = ids.clone()
    later[0, 2] = 11                                               # change the third caption token
    changed = caption_logits(images, later)
    assert torch.equal(base[0, :2], changed[0, :2]) and not torch.allclose(base[0, 2], changed[0, 2])
    assert not torch.allclose(caption_logits(images.flip(0), ids)[:, 0], base[:, 0])   # the image reaches position 0
    out = model(images, ids)
    contrastive = clip_loss(model.similarity(out.image_embeds, out.text_embeds))
    assert out.loss.item() == pytest.approx(contrastive.item() + 2.0 * out.caption_loss.item(), rel=1e-5)
    assert CLIP(stage0_config("clip", "clip-tiny")).caption_decoder is None


def test_the_anchor_is_the_starting_encoder_and_its_term_the_relative_feature_distance():
    torch.manual_seed(0)
    model = CLIP(stage0_config("clip", {"preset": "clip-tiny", "anchor_weight": 0.5}))
    plain = CLIP(stage0_config("clip", "clip-tiny"))
    assert plain.anchor is None
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())   # buffers only
    images, ids = torch.randn(2, 3, 64, 64), torch.tensor([[5, 7, 9, 6], [5, 8, 6, 0]])
    assert model(images, ids).anchor_loss.item() == 0.0                    # it starts where the encoder starts
    start = model.vision(images).features.detach()
    with torch.no_grad():
        for p in model.vision.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = model(images, ids)
    now = model.vision(images).features.detach()
    assert out.anchor_loss.item() == pytest.approx(((now - start) ** 2).mean().item() / (start ** 2).mean().item(),
                                                   rel=1e-4)
    assert out.anchor_loss.item() > 1e-3
    contrastive = clip_loss(model.similarity(out.image_embeds, out.text_embeds))
    assert out.loss.item() == pytest.approx(contrastive.item() + 0.5 * out.anchor_loss.item(), rel=1e-5)
    out.loss.backward()
    assert all(b.grad is None for b in model.anchor.buffers())


def test_a_hard_negative_swaps_exactly_one_shape_word():
    import random

    caption = "Two shapes. At the top left there is a large red circle. At the right there are two red squares."
    shapes = ("circle", "square", "triangle")
    seen = set()
    for seed in range(40):
        swapped = swap_shape(caption, shapes, random.Random(seed))
        changed = [(a, b) for a, b in zip(caption.split(), swapped.split()) if a != b]
        assert len(changed) == 1 and len(swapped.split()) == len(caption.split())
        old, new = changed[0]
        assert old.rstrip(".s") in shapes and new.rstrip(".s") in shapes and old.rstrip(".s") != new.rstrip(".s")
        assert old.rstrip(".").endswith("s") == new.rstrip(".").endswith("s")   # plurals stay plural
        seen.add(changed[0])
    assert len(seen) == 4                          # either word, either other shape
    assert swap_shape("The image shows two shapes on a black background.", shapes, random.Random(0)) is None


def test_pair_collator_appends_one_negative_per_caption_that_names_a_shape(tok):
    from mm1lab.data.sample import Sample
    from mm1lab.stage0.config import CLIPConfig

    cfg = CLIPConfig(vision=dict(image_size=32, patch_size=8, width=32, depth=1, heads=2, act="gelu"))
    image = __import__("PIL.Image").Image.new("RGB", (32, 32))
    samples = [Sample.pretrain("caption", f"Caption: {text}", [image], id=f"caption-{i}")
               for i, text in enumerate(["a red circle", "my drawing", "two blue squares"])]
    plain = PairCollator(tok, cfg.vision, cfg.text)(samples)
    batch = PairCollator(tok, cfg.vision, cfg.text, ("circle", "square"))(samples)
    assert len(batch["images"]) == len(plain["images"]) == 3 and len(plain["ids"]) == 3
    assert len(batch["ids"]) == 5                  # "my drawing" names no shape
    texts = [tok.decode([t for t in row.tolist() if t not in (0, cfg.text.eot_token_id)]) for row in batch["ids"]]
    assert texts[3].replace(" ", "") == "aredsquare" and texts[4].replace(" ", "") == "twobluecircles"
    again = PairCollator(tok, cfg.vision, cfg.text, ("circle", "square"))(samples)
    assert torch.equal(again["ids"], batch["ids"])  # drawn from the sample ids: a resumed run makes the same ones
    clip = CLIP(cfg)
    out = clip(batch["images"], batch["ids"])
    assert out.logits.shape == (3, 5) and torch.isfinite(out.loss)


def test_a_stage0_preset_takes_changed_fields():
    cfg = stage0_config("clip", {"preset": "clip-tiny", "hard_negatives": True})
    assert cfg.hard_negatives and cfg.vision == stage0_config("clip", "clip-tiny").vision
    assert not stage0_config("clip", "clip-tiny").hard_negatives


def test_text_tower_refuses_captions_without_the_end_token_and_clip_compiles_in_one_graph():
    cfg = stage0_config("clip", "clip-tiny")
    model = CLIP(cfg).eval()
    ids = torch.randint(5, 100, (3, 12))
    ids[:, 8] = cfg.text.eot_token_id
    with pytest.raises(ValueError, match="end-of-text token"):
        model.text(ids[:, :8])               # eager: a caption cut before its end token is named, not read wrong
    # Compiled, the check drops out rather than reading a value back from the device: the whole forward pass,
    # loss included, is one graph (fullgraph=True raises at any break).
    images = torch.randn(3, 3, cfg.vision.image_size, cfg.vision.image_size)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images, ids).loss, model(images, ids).loss)


def test_contrastive_losses_reward_the_matching_pairs():
    good, bad = torch.eye(4) * 10, torch.ones(4, 4)
    assert clip_loss(good) < 0.01 < clip_loss(bad)
    assert siglip_loss(good - 5) < siglip_loss(bad)


def test_prefix_causal_mask():
    mask = prefix_causal_mask(torch.tensor([2, 1]), 4)[:, 0]
    # prefix 2: patches 0 and 1 see each other; 2 sees 0..2; 3 sees 0..3
    assert mask[0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    # prefix 1 is plain causal
    assert torch.equal(mask[1], torch.ones(4, 4, dtype=torch.bool).tril())


def test_patch_targets_are_normalised_per_patch_in_raster_order():
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    targets = patch_targets(pixels, 2)
    assert targets.shape == (2, 4, 12)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(targets.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-4)
    # patch 1 is the top-right 2x2 block: channel-0 pixels 2, 3, 6, 7, in (p1 p2 c) order
    raw = pixels[0, :, 0:2, 2:4].permute(1, 2, 0).reshape(-1)
    assert torch.allclose(targets[0, 1], (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-5)


def test_aim_loss_counts_only_targets_past_the_prefix():
    torch.manual_seed(0)
    model = AIM(stage0_config("aim", "aim-tiny"))
    images = torch.randn(2, 3, 64, 64)
    out = model(images, prefix=torch.tensor([10, 63]))
    assert out.counted[0].sum() == 63 - 9 and out.counted[1].sum() == 1   # targets 10..63, and only 63
    manual = F.mse_loss(out.predictions[1, 62], out.targets[1, 63])
    only_last = model(images[1:], prefix=torch.tensor([63]))
    assert only_last.loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_aim_trunk_is_prefix_causal_so_later_patches_cannot_change_earlier_features():
    torch.manual_seed(0)
    model = AIM(stage0_config("aim", "aim-tiny")).eval()
    a = torch.randn(1, 3, 64, 64)
    b = a.clone()
    b[..., 56:, 56:] = torch.randn(1, 3, 8, 8)     # only the last patch differs
    mask = prefix_causal_mask(torch.tensor([4]), 64)
    fa, fb = (model.vision(x, layer=-1, mask=mask).features for x in (a, b))
    assert torch.allclose(fa[:, :63], fb[:, :63], atol=1e-6) and not torch.allclose(fa[:, 63], fb[:, 63])


def test_zero_shot_picks_the_planted_answer():
    """A CLIP whose towers are rigged: the image embedding is the mean pixel colour and the text embedding spells
    the colour named in the prompt. Zero-shot classification must then read the colour from the image."""
    from mm1lab.stage0 import evaluate as E

    class Rigged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = stage0_config("clip", "clip-tiny")
            self.tok = load_tokenizer()

        def encode_images(self, images):
            return F.normalize(images.mean((2, 3)), dim=-1)

        def encode_text(self, ids):
            from mm1lab.data.shapeworld import COLORS
            mean, std = torch.tensor(self.cfg.vision.image_mean), torch.tensor(self.cfg.vision.image_std)
            rows = []
            for row in ids.tolist():
                text = self.tok.decode(row)
                color = next(c for c in COLORS if text.startswith(c))
                # a shape of this colour on black, as the normalised image mean would see it (mostly background)
                rows.append(((torch.tensor(COLORS[color]) / 255 * 0.1 + 0.06 * 0.9) - mean) / std)
            return F.normalize(torch.stack(rows), dim=-1)

    result = E.zero_shot(Rigged(), load_tokenizer(), "color", n=24)
    assert result["score"] > max(result["majority"], result["uniform"]) + 0.3


def test_shape_swap_scores_an_encoder_that_sees_shapes_and_one_that_does_not():
    """Rigged towers: a text embeds as a random unit vector seeded by its words; an image embeds as its scene's dense
    caption would. Seeing shapes, the true caption always wins. Blind to them (shape words dropped before seeding,
    on both sides), the true and swapped captions tie, and a tie is not a win."""
    import hashlib
    import re

    from mm1lab.data.shapeworld import SHAPES, ShapeWorld
    from mm1lab.data.text import dense_caption
    from mm1lab.stage0 import evaluate as E

    tokenizer, cfg = load_tokenizer(), stage0_config("clip", "clip-tiny")

    def embed(text: str, sees_shapes: bool) -> torch.Tensor:
        key = "".join(tokenizer.decode(tokenizer.encode(text)).split())
        if not sees_shapes:
            key = re.sub("|".join(SHAPES), "", key)
        g = torch.Generator().manual_seed(int(hashlib.sha1(key.encode()).hexdigest()[:12], 16))
        return F.normalize(torch.randn(64, generator=g), dim=0)

    class Rigged(torch.nn.Module):
        def __init__(self, sees_shapes: bool):
            super().__init__()
            self.cfg, self.sees, world = cfg, sees_shapes, ShapeWorld("easy", 64)
            self.scenes = {}
            for s in (E.STAGE0_EVAL_BASE + 2 * E.PROBE_TRAIN_OFFSET + i for i in range(12)):
                pixels = E.preprocess_image(world.image(s), 64, cfg.vision.image_mean, cfg.vision.image_std)
                self.scenes[pixels.numpy().tobytes()] = dense_caption(world.scene(s))

        def encode_images(self, images):
            return torch.stack([embed(self.scenes[x.numpy().tobytes()], self.sees) for x in images])

        def encode_text(self, ids):
            rows = [[t for t in row.tolist() if t not in (0, cfg.text.eot_token_id)] for row in ids]
            return torch.stack([embed(tokenizer.decode(row), self.sees) for row in rows])

    assert E.shape_swap(Rigged(sees_shapes=True), tokenizer, n=12)["score"] == 1.0
    assert E.shape_swap(Rigged(sees_shapes=False), tokenizer, n=12)["score"] == 0.0


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_clip_export_matches_transformers(tmp_path, tok):
    torch.manual_seed(0)
    clip = CLIP(stage0_config("clip", "clip-tiny")).eval()
    export_clip(clip, tmp_path / "clip")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "clip").eval()
    images, ids = torch.randn(3, 3, 64, 64), encode_captions(tok, ["a red circle", "two squares", "x"], clip.cfg.text)
    with torch.no_grad():
        ours, theirs = clip(images, ids).logits, hf(input_ids=ids, pixel_values=images).logits_per_image
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(load_clip(tmp_path / "clip")(images, ids).logits, ours, rtol=0, atol=0)
        torch.testing.assert_close(load_hf_vision(tmp_path / "clip")(images).features, clip.vision(images).features)


def test_a_clip_vision_tower_alone_exports_as_a_transformers_clip_vision_model(tmp_path):
    from mm1lab.stage0.ship import has_text_tower

    torch.manual_seed(0)
    clip = CLIP(stage0_config("clip", "clip-small")).eval()
    export_clip_vision(clip, tmp_path / "vision")
    export_clip(clip, tmp_path / "clip")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hf = transformers.CLIPVisionModel.from_pretrained(tmp_path / "vision").eval()
        whole = transformers.CLIPModel.from_pretrained(tmp_path / "clip").eval()
        torch.testing.assert_close(hf(pixel_values=images).pooler_output,
                                   whole.vision_model(pixel_values=images).pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(load_hf_vision(tmp_path / "vision")(images).features, clip.vision(images).features)
    from safetensors import safe_open

    with safe_open(tmp_path / "vision" / "model.safetensors", "pt") as f:
        assert f.keys() and all(k.startswith("vision_model.") for k in f.keys())   # no text tower, no projection
    assert not has_text_tower(tmp_path / "vision") and has_text_tower(tmp_path / "clip")


def test_aim_and_lm_exports_load_where_public_checkpoints_load(tmp_path, tok):
    torch.manual_seed(0)
    aim = AIM(stage0_config("aim", "aim-tiny")).eval()
    export_aim(aim, tmp_path / "aim")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hf = transformers.SiglipVisionModel.from_pretrained(tmp_path / "aim").eval()
        torch.testing.assert_close(hf(pixel_values=images).last_hidden_state, aim.vision(images).features)
        torch.testing.assert_close(load_hf_vision(tmp_path / "aim")(images).features, aim.vision(images).features)
    lm = MM1Model(MM1Config.preset("tiny")).lm.eval()
    export_lm(lm, tok, tmp_path / "lm")
    loaded = load_hf_lm(tmp_path / "lm")
    assert loaded.token_ids == dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, image_token_id=3)
    assert loaded.cfg.vocab_size == lm.cfg.vocab_size            # mm1lab's special tokens were already there
    ids = torch.randint(10, 900, (2, 9))
    with torch.no_grad():
        hf_lm = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "lm").eval()
        torch.testing.assert_close(hf_lm(input_ids=ids).logits, lm(lm.embed(ids), torch.arange(9).expand(2, 9)).logits)


def test_caption_text_is_recovered_from_a_caption_sample():
    from mm1lab.data.streams import ShapeWorldStreams

    sample = ShapeWorldStreams("easy", 64).dense(3)
    caption = caption_of(sample)
    assert caption.startswith("The image shows") and "<" not in caption


def test_ocr_captions_say_what_a_sign_says_on_scenes_that_have_one():
    from mm1lab.data.streams import ShapeWorldStreams

    medium = ShapeWorldStreams("medium", 64, cache=False)
    samples = [medium.ocr(i) for i in range(12)]
    seeds = [medium.ocr_seed(i) for i in range(12)]
    scenes = [medium.world.scene(s) for s in seeds]
    assert all(scene.signs for scene in scenes)                 # every item has text to read (`sign`'s half do not)
    assert [caption_of(s) for s in samples] == [f'a sign that says "{sc.signs[0].text}"' for sc in scenes]
    assert len(set(seeds)) == 12 and [s.id for s in samples[:2]] == ["ocr-0", "ocr-1"]
    assert medium.ocr(5).text == ShapeWorldStreams("medium", 64, cache=False).ocr(5).text   # a pure function of i
    with pytest.raises(ValueError, match="ocr stream needs signs.*easy"):
        ShapeWorldStreams("easy", 64, cache=False).ocr(0)
    with pytest.raises(ValueError, match="held-out evaluation seeds"):
        medium.ocr_seed(2**28)
    # the SFT twin asks about the same scene, and only what its sign says
    for i in (0, 3):
        chat, word = medium.sft_ocr(i), scenes[i].signs[0].text
        answers = chat.text.split("<|assistant|>")[1:]
        assert chat.stream == "sft" and len(chat.images) == 1 and answers
        assert all(word in answer for answer in answers), chat.text


def test_plain_ocr_captions_write_the_word_as_an_answer_writes_it(tok):
    """`ocr_plain` captions `ocr`'s scenes with the word unquoted, so the caption's word is the same tokens as the
    k-shot answer after "Answer:". In `ocr`'s quoted caption it is other tokens: that is why the stream exists."""
    from mm1lab.data.evalsets import eval_set
    from mm1lab.data.prompts import qa_text
    from mm1lab.data.streams import ShapeWorldStreams

    medium = ShapeWorldStreams("medium", 64, cache=False)
    for i in range(6):
        word = medium.world.scene(medium.ocr_seed(i)).signs[0].text
        plain, quoted = caption_of(medium.ocr_plain(i)), caption_of(medium.ocr(i))
        assert plain == f"a sign that says {word}" and quoted == f'a sign that says "{word}"'
        assert medium.ocr_plain(i).id == f"ocr_plain-{i}" and medium.ocr_plain(i).images == medium.ocr(i).images
    for item in eval_set("ocr", n=8, seed=0, difficulty="medium", cache=False):
        question, word = item["question"], item["answer"]
        answer = tok.encode(qa_text(question, word))[len(tok.encode(qa_text(question))):]
        assert tok.encode(f"a sign that says {word}")[-len(answer):] == answer, word
        assert tok.encode(f'a sign that says "{word}"')[-len(answer) - 1:-1] != answer, word


def test_text_rich_documents_ask_what_each_sign_says():
    """`interleaved_ocr`: 2-5 of the ocr stream's scenes, each with a sign; its questions ask only what the sign
    of their image says, in the k-shot passage form, and its answers are the words themselves."""
    import re

    from mm1lab.data.streams import ShapeWorldStreams
    from mm1lab.data.tokenizer import IMAGE

    medium = ShapeWorldStreams("medium", 64, cache=False, qa_share=0.9)
    asked = 0
    for i in range(8):
        doc = medium.interleaved_ocr(i)
        scenes = [medium.world.scene(medium.ocr_seed(5 * i + m)) for m in range(len(doc.images))]
        assert 2 <= len(doc.images) <= 5 and doc.stream == "interleaved" and all(sc.signs for sc in scenes)
        passages = [p for p in doc.text.split("\n") if IMAGE in p]
        assert len(passages) == len(scenes)
        for passage, scene in zip(passages, scenes):
            qa = re.fullmatch(rf"{re.escape(IMAGE)}Question: (.*) Answer: (.*?)(<eos>)?", passage)
            if qa:
                assert qa[1] in ("What does the sign say?", "What is written in the image?")
                assert qa[2] == scene.signs[0].text
                asked += 1
    assert asked >= 20                                        # 90% of about 28 passages
    assert medium.interleaved_ocr(3).text == ShapeWorldStreams("medium", 64, cache=False, qa_share=0.9) \
        .interleaved_ocr(3).text


SHIPPED = __import__("pathlib").Path(__file__).resolve().parents[1] / "stage0"


@pytest.mark.parametrize("name", ["clip-tiny", "clip-tiny-128"])
def test_shipped_clip_reproduces_its_recorded_zero_shot_scores(name, tok):
    """The committed stage-0 folders load (through the same loaders as public checkpoints) and score what
    `mm1lab stage0 ship` recorded on the same fixed held-out set."""
    import json

    from mm1lab.stage0 import evaluate as E
    from mm1lab.stage0.ship import ZERO_SHOT_N

    folder = SHIPPED / name
    recorded = json.loads((folder / "mm1lab_stage0.json").read_text())["scores"]
    clip = load_clip(folder)
    for attr in ("color", "count", "text"):
        again = E.zero_shot(clip, tok, attr, n=ZERO_SHOT_N)
        assert again["score"] == pytest.approx(recorded["zero_shot"][attr]["score"], abs=1e-9), attr
    assert load_hf_vision(folder).cfg == clip.vision.cfg


def test_shipped_folders_build_an_mm1_model_and_stay_small():
    from mm1lab.pretrained import build_mm1_from_parts
    from mm1lab.stage0.ship import SHIPPED as NAMES

    total = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert total <= 20 * 2**20, f"stage0/ holds {total / 2**20:.1f} MiB; the budget is 20 MB"
    for name in ("clip-tiny", "aim-tiny-128", "clip-small", "clip-tiny-ocr"):   # the last two: vision towers alone
        model, tokenizer = build_mm1_from_parts(SHIPPED / name, SHIPPED / "lm-tiny", dict(kind="c-abstractor",
                                                num_tokens=16, width=64, depth=1))
        assert tokenizer.convert_tokens_to_ids("<image>") == model.cfg.image_token_id == 3
    assert {p.name for p in SHIPPED.iterdir() if p.is_dir()} == set(NAMES)
