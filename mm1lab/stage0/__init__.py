"""MM1's stage 0: the image encoder and the LM are pre-trained before the VLM is (MM1 never starts from scratch).

Files, one concept each:
    config.py    TextConfig, CLIPConfig, AIMConfig
    presets.py   the CPU encoders (tiny / small, 64 / 128 px)
    clip.py      CLIP's text tower, the contrastive model, the InfoNCE and sigmoid (SigLIP) losses
    aim.py       AIM: prefix-causal ViT trunk, next-patch pixel regression
    data.py      image-caption pairs and image batches from MM1's caption streams
    evaluate.py  zero-shot attributes, retrieval, linear probes, each beside chance
    export.py    to transformers folders (CLIPModel, SiglipVisionModel, LlamaForCausalLM) and back
    ship.py      `mm1lab stage0 ship`: the committed stage0/ folders
    cli.py       `mm1lab stage0 ...`

Training is the one training loop (`mm1lab train`, objectives `clip`, `aim`, and `vlm` for the text-only LM).
"""
