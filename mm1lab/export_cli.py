"""`mm1lab export llava CHECKPOINT OUT`: an mm1lab model as a folder other libraries load (see docs/export.md).

The exporter is imported when the command runs, so that the CLI does not pay transformers' import on start-up.
"""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")


def _export_llava(args: argparse.Namespace) -> int:
    import torch

    from mm1lab.pretrained.llava_export import export_llava

    out = export_llava(args.checkpoint, args.out, dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {out}: transformers loads it with LlavaForConditionalGeneration.from_pretrained({str(out)!r}) "
          "and AutoProcessor.from_pretrained, without trust_remote_code")
    return 0


def add_export_commands(sub: argparse._SubParsersAction) -> None:
    """Register `mm1lab export llava CHECKPOINT OUT [--dtype ...]`."""
    export = sub.add_parser("export", help="write an mm1lab model in a format other libraries load")
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    p = formats.add_parser("llava", help="transformers' LlavaForConditionalGeneration folder (CLIP/SigLIP encoder, "
                                         "MLP connector, Llama/Qwen2 LM); other connectors are refused")
    p.add_argument("checkpoint", help="a run folder, a training checkpoint or a save_pretrained folder")
    p.add_argument("out", help="the folder to write (replaced if it exists)")
    p.add_argument("--dtype", choices=DTYPES, help="cast the weights (default: as stored)")
    p.set_defaults(func=_export_llava)
