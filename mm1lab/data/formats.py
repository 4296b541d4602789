"""Readers and writers for the formats real corpora come in, with bad input skipped-and-counted or, strictly, named.

| data            | format                                                              | like               |
| captions        | WebDataset tar shards, img2dataset layout (key.jpg, key.txt, key.json) | CC3M, CC12M, DFN   |
| interleaved     | JSONL, OBELICS-style aligned `texts` / `images` lists (relative paths) | OBELICS, MMC4      |
| SFT             | LLaVA JSON (or JSONL): image (str or list), conversations with <image> | LLaVA-Instruct     |
| text-only       | JSONL lines {"text": ...}                                           | any LM corpus      |

Evaluation formats (COCO captions, VQAv2) are in `eval_formats.py`. Training readers return a `RecordStream`
(cheap raw records per file, decoded only by the shard that keeps them) for `MixtureDataset`; `iter_samples` reads
one directly. Sources are paths, folders, globs, brace ranges, fsspec URLs or `pipe:` commands (`sources.py`);
JSONL files may be gzipped (`.gz`), and a `pipe:` command decompresses anything else (`pipe:zstdcat x.jsonl.zst`).
Every record passes the checks in `guards.py` (image paths stay inside the root, text is UTF-8, images decode
fully); docs/robustness.md lists what is skipped and counted. Writers are deterministic: sorted JSON keys, fixed
JPEG quality, tar members with mtime 0 and uid/gid 0, so the same input gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from mm1lab.data.guards import check_text, decode_text, image_path, open_image, parse_json, read_json_file
from mm1lab.data.prompts import caption_text
from mm1lab.data.records import RecordStream
from mm1lab.data.sample import DataError, Sample, Skips, SkipSample
from mm1lab.data.sources import expand, is_remote, read_source
from mm1lab.data.tokenizer import IMAGE

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


# ---- shared helpers -------------------------------------------------------------------------------------
def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG encoding with fixed settings (deterministic bytes)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def dumps(obj: Any) -> str:
    """Deterministic JSON (sorted keys, compact, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _jsonl_records(f: BinaryIO, name: str) -> Iterator[tuple[str, bytes]]:
    """Raw lines as bytes, so that the decode step (not the reading) checks them for UTF-8, per record."""
    lines = gzip.GzipFile(fileobj=f) if name.endswith(".gz") else f
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            yield f"{name}:{lineno}", line


def _parse_json_line(raw: tuple[str, bytes]) -> tuple[str, Any]:
    where, line = raw
    return where, parse_json(line, where)


def iter_samples(stream: RecordStream, *, strict: bool = False, skips: Skips | None = None) -> Iterator[Sample]:
    """Every good sample of `stream` in order; bad ones are counted in `skips` (or raise `DataError` if strict)."""
    skips = skips if skips is not None else Skips(strict=strict)
    for thunk, _ in stream.iterate(0, 1):
        sample = skips.run(thunk)
        if sample is None:
            continue
        sample.skipped = skips.pop_pending()
        yield sample


# ---- captions: WebDataset / img2dataset tar shards ------------------------------------------------------
def write_caption_shards(items: Iterable[tuple[Image.Image, str, dict]], out_dir: str | Path, *,
                         shard_size: int = 1000, quality: int = 90) -> list[Path]:
    """Write (image, caption, metadata) triples as img2dataset shards 00000.tar, ... with keys 000000000, ..."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, tar = [], None
    for n, (image, caption, meta) in enumerate(items):
        shard, index = divmod(n, shard_size)
        if index == 0:
            if tar is not None:
                tar.close()
            paths.append(out_dir / f"{shard:05d}.tar")
            tar = tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT)
        key = f"{shard:05d}{index:04d}"
        info = {"key": key, "caption": caption, "status": "success", "width": image.width,
                "height": image.height, **meta}
        for ext, data in (("jpg", jpeg_bytes(image, quality)), ("txt", caption.encode()),
                          ("json", dumps(info).encode())):
            member = tarfile.TarInfo(f"{key}.{ext}")
            member.size, member.mtime, member.mode = len(data), 0, 0o644
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            tar.addfile(member, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return paths


class _Tail:
    """A read-only file over `f` that keeps the last bytes read, so that the bytes from where tarfile stopped can be
    read again on a stream that cannot seek (a pipe, a remote file)."""

    KEEP = 1 << 16   # tarfile reads ahead at most one record (10 KiB) past the block it stopped at

    def __init__(self, f: BinaryIO):
        self.f, self.kept, self.start = f, bytearray(), 0   # start: the file offset of kept[0]

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n) if n is not None and n >= 0 else self.f.read()
        self.kept += data
        if len(self.kept) > 2 * self.KEEP:
            drop = len(self.kept) - self.KEEP
            del self.kept[:drop]
            self.start += drop
        return data

    def after(self, offset: int) -> Iterator[bytes]:
        """The bytes from `offset` to the end of the file, in chunks."""
        yield bytes(self.kept[offset - self.start:])
        while chunk := self.f.read(1 << 16):
            yield chunk


def _tar_groups(f: BinaryIO, name: str) -> Iterator[Any]:
    """Consecutive members sharing a key -> (where, {ext: bytes}); a broken tar ends with a SkipSample record.
    Read as a stream (no seeking), so a shard may come from a pipe or a URL; `.tar.gz` / `.tgz` are gunzipped."""
    group, key, last = {}, None, "the start"
    if name.endswith((".gz", ".tgz")):
        f = gzip.GzipFile(fileobj=f)
    tail = _Tail(f)
    try:
        with tarfile.open(fileobj=tail, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition(".")
                if key is not None and stem != key:
                    yield f"{name}:{key}", group
                    group = {}
                key, last = stem, member.name
                group[ext.lower()] = tar.extractfile(member).read()
            if group:
                yield f"{name}:{key}", group
            problem = _end_of_archive_problem(tail.after(tar.offset), tar.offset)
        if problem:
            yield SkipSample("truncated_tar", name, f"{problem} after {last}; the samples after it are lost. "
                             "Re-download or re-write the shard")
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:   # ValueError: a damaged header field
        yield SkipSample("truncated_tar", name, f"unreadable after {last} ({exc}); rest of the shard skipped")


def _end_of_archive_problem(rest: Iterator[bytes], end: int) -> str | None:
    """What is wrong where the archive ends (`rest`: the bytes from `end` on), or None when a proper end-of-archive
    marker is there.

    Our own check, because tarfile stops quietly at an empty, short or damaged header block: a shard cut on a
    512-byte boundary, or with a flipped header byte, would otherwise read as complete, short of its last samples.
    """
    block = b""
    for chunk in rest:
        block += chunk
        if len(block) >= tarfile.BLOCKSIZE:
            break
    if len(block) < tarfile.BLOCKSIZE:
        return f"the file ends at byte {end + len(block)} without the end-of-archive marker"
    if block[:tarfile.BLOCKSIZE].count(0) != tarfile.BLOCKSIZE:
        return f"a damaged header at byte {end}"
    for chunk in itertools.chain([block[tarfile.BLOCKSIZE:]], rest):   # the zero padding after the marker
        if chunk.count(0) != len(chunk):
            return f"more data after the end-of-archive marker at byte {end} (concatenated shards?)"
    return None


def caption_stream(source: str | Path | Iterable[str | Path], *, stream: str = "caption") -> RecordStream:
    """Image-caption pairs from tar shards (a folder of *.tar, files, globs, brace ranges, URLs, `pipe:` commands).

    A sample whose `.json` metadata sidecar is damaged is skipped (`bad_json`), like any damaged member: the
    shard's bytes are not what was written. A missing sidecar is fine (WebDataset does not require one).
    """
    files = expand(source, "*.tar")

    def decode(raw: Any) -> Sample:
        where, group = raw
        ext = next((e for e in IMAGE_EXTS if e in group), None)
        if ext is None:
            raise SkipSample("missing_image", where, f"no image member (found {sorted(group)})")
        text = decode_text(group.get("txt", b""), f"{where}.txt").strip()
        if not text:
            raise SkipSample("empty_text", where)
        if "json" in group:   # the metadata sidecar: a damaged one skips the sample (docs/robustness.md)
            meta = parse_json(group["json"], f"{where}.json (metadata sidecar)")
            if not isinstance(meta, dict):
                raise SkipSample("bad_json", f"{where}.json (metadata sidecar)",
                                 f"a JSON object is expected, got {type(meta).__name__}")
        image = open_image(group[ext], f"{where}.{ext}")
        return Sample.pretrain(stream, caption_text(text), [image], id=where)

    return RecordStream(lambda file: read_source(file, _tar_groups), decode, files=files)


# ---- interleaved: OBELICS-style JSONL -------------------------------------------------------------------
def write_interleaved_jsonl(docs: Iterable[dict], path: str | Path, *, image_dir: str = "images",
                            quality: int = 90) -> Path:
    """Write documents {"texts": [str|None], "images": [PIL|None], "metadata": {...}} as OBELICS-style JSONL.

    Images are saved as JPEGs under `image_dir` (relative to the JSONL's folder), referenced by relative path.
    """
    path = Path(path)
    (path.parent / image_dir).mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d, doc in enumerate(docs):
            refs = []
            for i, image in enumerate(doc["images"]):
                if image is None:
                    refs.append(None)
                    continue
                rel = f"{image_dir}/doc{d:05d}_{i:02d}.jpg"
                (path.parent / rel).write_bytes(jpeg_bytes(image, quality))
                refs.append(rel)
            f.write(dumps({"texts": doc["texts"], "images": refs, "metadata": doc.get("metadata", {})}) + "\n")
    return path


def interleaved_stream(source: str | Path | Iterable[str | Path], *, image_folder: str | Path | None = None,
                       allow_absolute_paths: bool = False) -> RecordStream:
    """Interleaved documents from OBELICS-style JSONL.

    Image paths are relative to `image_folder` (default: each file's folder) and may not leave it (`..`, or an
    absolute path unless `allow_absolute_paths`): such records are skipped as `path_outside_root`.
    """
    files = expand(source, "*.jsonl")
    remote = [f for f in files if is_remote(f)]
    if remote and image_folder is None:
        raise ValueError(f"{remote[0]}: interleaved documents from a URL or a pipe need image_folder= (a local or "
                         "mounted folder their image paths are relative to)")

    def read(file: str) -> Iterator[Any]:
        root = Path(image_folder) if image_folder is not None else Path(file).parent
        return (rec if isinstance(rec, SkipSample) else (root, rec) for rec in read_source(file, _jsonl_records))

    def decode(raw: Any) -> Sample:
        root, record = raw
        where, doc = _parse_json_line(record)
        texts, images = (doc.get("texts"), doc.get("images")) if isinstance(doc, dict) else (None, None)
        if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
            raise SkipSample("bad_record", where, "need aligned lists 'texts' and 'images' of equal length")
        pieces, loaded = [], []
        for i, (text, image) in enumerate(zip(texts, images)):
            if (text is None) == (image is None):
                raise SkipSample("bad_record", where, f"position {i} must hold exactly one of a text and an image")
            if image is not None:
                ref = image if isinstance(image, str) else image.get("path") if isinstance(image, dict) else None
                at = f"{where} image {i}"
                loaded.append(open_image(image_path(root, ref, at, allow_absolute=allow_absolute_paths), at))
                pieces.append(IMAGE)
            elif isinstance(text, str):
                pieces.append(text)
            else:
                raise SkipSample("bad_record", where, f"position {i}: text must be a string, got {type(text).__name__}")
        if not "".join(p for p in pieces if p != IMAGE).strip():
            raise SkipSample("empty_text", where)
        return Sample.pretrain("interleaved", "\n".join(pieces), loaded, id=where)

    return RecordStream(read, decode, files=files)


# ---- SFT: LLaVA JSON ------------------------------------------------------------------------------------
def write_llava_json(records: Iterable[dict], path: str | Path, *, image_dir: str = "images",
                     quality: int = 90) -> Path:
    """Write {"id", "images": [PIL], "turns": [{"role", "content"}]} records as a LLaVA-format JSON list.

    One image gives "image": "path"; several give a list; none omits the key (text-only SFT).
    """
    path = Path(path)
    (path.parent / image_dir).mkdir(parents=True, exist_ok=True)
    out = []
    for rec in records:
        refs = []
        for i, image in enumerate(rec["images"]):
            rel = f"{image_dir}/{rec['id']}_{i}.jpg"
            (path.parent / rel).write_bytes(jpeg_bytes(image, quality))
            refs.append(rel)
        entry = {"id": rec["id"], "conversations": [
            {"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]} for t in rec["turns"]]}
        if refs:
            entry["image"] = refs[0] if len(refs) == 1 else refs
        out.append(entry)
    path.write_text(json.dumps(out, sort_keys=True, indent=1) + "\n")
    return path


def _llava_records(file: str) -> Iterator[tuple[str, Any]]:
    if not file.endswith(".json"):
        yield from read_source(file, _jsonl_records)
        return
    data = read_json_file(file, "; fix the file or convert it to JSONL (one conversation per line) so that bad "
                                "lines can be skipped")
    if not isinstance(data, list):
        raise DataError(f"{file}: a LLaVA file holds a JSON list of conversations, got {type(data).__name__}")
    for i, entry in enumerate(data):
        yield f"{file}[{i}]", entry


def llava_stream(source: str | Path | Iterable[str | Path], *, image_folder: str | Path | None = None,
                 allow_absolute_paths: bool = False) -> RecordStream:
    """SFT conversations from LLaVA JSON/JSONL; images relative to `image_folder` (default: the file's folder).

    Image paths may not leave that folder (`..`, or absolute unless `allow_absolute_paths`): `path_outside_root`.
    """
    files = expand(source, "*.json*")
    remote = [f for f in files if is_remote(f)]
    if remote and (image_folder is None or any(f.endswith(".json") for f in remote)):
        raise ValueError(f"{remote[0]}: LLaVA data from a URL or a pipe must be JSONL (one conversation per line) "
                         "and needs image_folder= (a local or mounted folder its image paths are relative to)")

    def read(file: str) -> Iterator[Any]:
        root = Path(image_folder) if image_folder is not None else Path(file).parent
        return (rec if isinstance(rec, SkipSample) else (root, rec) for rec in _llava_records(file))

    def decode(raw: Any) -> Sample:
        root, (where, entry) = raw
        if isinstance(entry, bytes):
            where, entry = _parse_json_line((where, entry))
        else:
            check_text(entry, where)
        convs = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(convs, list) or not convs:
            raise SkipSample("bad_record", where, "needs a non-empty 'conversations' list")
        where = f"{where} id={entry.get('id', '?')}"
        turns = []
        for j, turn in enumerate(convs):
            role = ROLES.get(turn.get("from")) if isinstance(turn, dict) and isinstance(turn.get("from"), str) \
                else None
            if role is None or not isinstance(turn.get("value"), str):
                raise SkipSample("bad_record", where, f"turn {j} needs 'from' in {sorted(ROLES)} and a string 'value'")
            turns.append({"role": role, "content": turn["value"]})
        if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
            raise SkipSample("empty_text", where, "no assistant answer")
        refs = entry.get("image", [])
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list):
            raise SkipSample("bad_record", where, f"'image' must be a path or a list of paths, got {refs!r}")
        markers = sum(t["content"].count(IMAGE) for t in turns)
        if markers != len(refs):
            raise SkipSample("image_count_mismatch", where, f"{markers} <image> markers, {len(refs)} images")
        images = [open_image(image_path(root, ref, f"{where} image {ref!r}", allow_absolute=allow_absolute_paths),
                             f"{where} image {ref!r}") for ref in refs]
        return Sample.chat(turns, images, id=where)

    return RecordStream(read, decode, files=files)


# ---- text-only JSONL ------------------------------------------------------------------------------------
def write_text_jsonl(texts: Iterable[str], path: str | Path) -> Path:
    """One {"text": ...} object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def text_stream(source: str | Path | Iterable[str | Path]) -> RecordStream:
    """Text-only documents from JSONL files (`.jsonl` or `.jsonl.gz`)."""
    files = expand(source, "*.jsonl*")

    def decode(raw: Any) -> Sample:
        where, doc = _parse_json_line(raw)
        text = doc.get("text") if isinstance(doc, dict) else None
        if not isinstance(text, str):
            raise SkipSample("bad_record", where, 'needs a string field "text"')
        if not text.strip():
            raise SkipSample("empty_text", where)
        return Sample.pretrain("text", text, [], id=where)

    return RecordStream(lambda file: read_source(file, _jsonl_records), decode, files=files)


# The readers by format name: `data.files` keys end in one of these (mm1lab.train.shapeworld_data).
READERS = {"caption": caption_stream, "interleaved": interleaved_stream, "text": text_stream, "sft": llava_stream}
