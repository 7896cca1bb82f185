"""``uait bench embed``: the local embedder's throughput, beside torch + transformers on the same
weights and texts, in alternating rounds of one sitting.

Two workloads, both real English from this project's README: sentences (5 to 30 words, the
setting of the commonly quoted sentences/s) and chunks as ingestion makes them (the default
chunk size, with their title; truncated at 256 tokens like sentence-transformers does). Only the
embedding calls are timed, with the model loaded and warmed. The baseline runs in a Python that
has torch and transformers (``--baseline-python``; torch is not a dependency of uait: on a fresh
machine uv would fetch a ~3 GB CUDA build), on the same threads, batch size and padding; its
vectors are compared with ours (cosine).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from infra.embeddings import MiniLM, minilm_folder
from infra.settings import Settings
from workers.knowledge.chunking import chunk_spans
from workers.knowledge.embedding import ChunkEmbedder

console = Console(width=120)

README = Path(__file__).resolve().parents[1] / "README.md"

# Runs in the baseline's Python: the same weights through transformers, sentence-transformers'
# pooling (mean over the real tokens, then L2), timed per round.
BASELINE = r"""
import json, sys, time
import torch
from transformers import AutoModel, AutoTokenizer
spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
tok = AutoTokenizer.from_pretrained(spec["folder"])
model = AutoModel.from_pretrained(spec["folder"]).eval()
def embed(texts, bs):
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for s in range(0, len(texts), bs):
            picked = [texts[i] for i in order[s:s + bs]]
            enc = tok(picked, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.extend(zip(order[s:s + bs], torch.nn.functional.normalize(pooled, dim=1)))
    out.sort(key=lambda p: p[0])
    return torch.stack([v for _, v in out]).numpy()
embed(spec["warm"], spec["batch"])
for line in sys.stdin:
    name = line.strip()
    texts = spec["workloads"][name]
    started = time.perf_counter()
    vectors = embed(texts, spec["batch"])
    took = time.perf_counter() - started
    print(json.dumps({"name": name, "seconds": took, "sample": vectors[:50].tolist()}), flush=True)
"""


@dataclass(frozen=True)
class Workloads:
    sentences: list[str]
    chunks: list[str]


def workloads(sentences: int, chunks: int) -> Workloads:
    text = README.read_text(encoding="utf-8")
    plain = re.sub(r"`[^`]*`|\[|\]\([^)]*\)|[#*|>_-]{2,}|<[^>]+>", " ", text)
    found = [
        s.strip()
        for s in re.split(r"(?<=[.!?])\s+|\n\n", plain)
        if 5 <= len(s.split()) <= 30 and not s.lstrip().startswith("|")
    ]
    if not found:
        raise SystemExit(f"no sentences in {README}")
    picked = [found[i % len(found)] for i in range(sentences)]
    size = Settings.model_fields["chunk_size"].default
    overlap = Settings.model_fields["chunk_overlap"].default
    spans = chunk_spans(text, size, overlap)
    title = "Universal AI Tools"
    pieces = ChunkEmbedder.inputs(title, text, spans)
    return Workloads(picked, [pieces[i % len(pieces)] for i in range(chunks)])


def _rate(seconds: list[float], n: int) -> float:
    return n / statistics.median(seconds)


def main(
    *, sentences: int, chunks: int, rounds: int, batch: int, threads: int, baseline: str
) -> None:
    work = workloads(sentences, chunks)
    names = {"sentences": work.sentences, "chunks": work.chunks}
    cache = Path(tempfile.mkdtemp(prefix="uait-bench-embed-"))
    ours = {
        precision: MiniLM(
            threads=threads or None, batch_size=batch, precision=precision, cache_dir=cache
        )
        for precision in ("fp32", "int8")
    }
    for model in ours.values():
        model.embed(work.sentences[:64])
    tokenizer = ours["fp32"].tokenizer
    tokens = {
        name: statistics.mean(len(e.ids) for e in tokenizer.encode_batch(texts))
        for name, texts in names.items()
    }
    proc = None
    if baseline:
        spec = {
            "folder": str(minilm_folder()),
            "threads": threads or min(os.cpu_count() or 1, 8),
            "batch": batch,
            "warm": work.sentences[:64],
            "workloads": names,
        }
        (cache / "spec.json").write_text(json.dumps(spec))
        (cache / "baseline.py").write_text(BASELINE)
        proc = subprocess.Popen(
            [baseline, str(cache / "baseline.py"), str(cache / "spec.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    contenders = ["fp32", "int8", *(["torch"] if proc is not None else [])]
    timings: dict[tuple[str, str], list[float]] = {}
    samples: dict[str, np.ndarray] = {}
    agreement: dict[tuple[str, str], float] = {}
    for r in range(rounds):
        order = contenders[r % len(contenders) :] + contenders[: r % len(contenders)]
        for name, texts in names.items():
            for who in order:
                if who == "torch":
                    assert proc is not None
                    assert proc.stdin is not None
                    assert proc.stdout is not None
                    proc.stdin.write(name + "\n")
                    proc.stdin.flush()
                    answer = json.loads(proc.stdout.readline())
                    seconds = answer["seconds"]
                    samples[who] = np.array(answer["sample"], dtype=np.float32)
                else:
                    started = time.perf_counter()
                    vectors = ours[who].embed(texts)
                    seconds = time.perf_counter() - started
                    samples[who] = vectors[:50]
                timings.setdefault((who, name), []).append(seconds)
            # Agreement with sentence-transformers' vectors (torch's), else with fp32's.
            reference = samples.get("torch", samples["fp32"])
            for who in ("fp32", "int8"):
                cos = float(np.min(np.sum(samples[who] * reference, axis=1)))
                agreement[(who, name)] = min(agreement.get((who, name), 1.0), cos)
        console.print(f"round {r + 1}/{rounds} done ({', '.join(order)})")
    if proc is not None:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    rates = {key: _rate(seconds, len(names[key[1]])) for key, seconds in timings.items()}
    table = Table(
        title=f"Embedding all-MiniLM-L6-v2, {threads or os.cpu_count()} threads, batch {batch}"
    )
    ref = "torch" if proc is not None else "fp32"
    for column in (
        "workload",
        "texts",
        "tokens",
        "fp32/s",
        "int8/s",
        "torch/s",
        "fp32:torch",
        "int8:torch",
        f"cos fp32~{ref}",
        f"cos int8~{ref}",
    ):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name, texts in names.items():
        theirs = rates.get(("torch", name))
        table.add_row(
            name,
            f"{len(texts):,}",
            f"{tokens[name]:.1f}",
            f"{rates[('fp32', name)]:,.0f}",
            f"{rates[('int8', name)]:,.0f}",
            f"{theirs:,.0f}" if theirs else "-",
            f"{rates[('fp32', name)] / theirs:.2f}x" if theirs else "-",
            f"{rates[('int8', name)] / theirs:.2f}x" if theirs else "-",
            f"{agreement[('fp32', name)]:.6f}",
            f"{agreement[('int8', name)]:.4f}",
        )
    console.print(table)
    console.print(
        f"medians of {rounds} rounds, the order rotating each round; only the embedding calls"
        " are timed (tokenizing included, loading not); tokens: mean per text, at most 256;"
        " cos: the lowest cosine between the two vectors of a text"
    )
    line = (
        f"embed: fp32 {rates[('fp32', 'sentences')]:,.0f} sentences/s,"
        f" {rates[('fp32', 'chunks')]:,.0f} chunks/s;"
        f" int8 {rates[('int8', 'sentences')]:,.0f} sentences/s,"
        f" {rates[('int8', 'chunks')]:,.0f} chunks/s"
    )
    if ("torch", "sentences") in rates:
        line += (
            f"; torch {rates[('torch', 'sentences')]:,.0f} sentences/s,"
            f" {rates[('torch', 'chunks')]:,.0f} chunks/s"
        )
    print(line)
