"""Merge benchmark: Studbook's streaming engine against mergekit on a generated >= 1B model.

Generates three Llama-shaped bf16 checkpoints (two parents and a base; written tensor by tensor,
never held in memory), then runs a linear merge and a TIES merge with a base through both
engines, each in its own process, and reports wall time and peak RSS side by side with their
ratios. mergekit (PyPI ``mergekit==0.1.5``) lives in its own virtual environment under
``${STUDBOOK_CACHE:-~/.cache/studbook}/bench-mergekit-0.1.5``, created on first use with uv.

    nice -n 10 .venv/bin/python bench/bench_merge.py

Options: ``--layers`` (default 22: 1.1B parameters), ``--methods``, ``--engines``,
``--workdir``, ``--json`` (write the results there too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "trainer-image"))

CACHE = Path(os.environ.get("STUDBOOK_CACHE", Path.home() / ".cache" / "studbook"))
UV = CACHE / "uv-0.13.8" / "bin" / "uv"
MERGEKIT_VERSION = "0.1.5"
MERGEKIT_ENV = CACHE / f"bench-mergekit-{MERGEKIT_VERSION}"

DENSITY = 0.5
WEIGHTS = (0.5, 0.5)


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped model (TinyLlama-1.1B's dimensions by default)."""

    layers: int = 22
    hidden: int = 2048
    intermediate: int = 5632
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, f, v = self.hidden, self.intermediate, self.vocab
        kv = h // self.heads * self.kv_heads
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
        return out

    def params(self) -> int:
        n = 0
        for _, shape in self.tensors():
            k = 1
            for d in shape:
                k *= d
            n += k
        return n


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little")


def generate(shape: Shape, out: Path, role: str) -> None:
    """Write one bf16 model tensor by tensor: the base, or the base plus a small task vector."""
    import torch

    from studbook_trainer.merge.io import OutputTensor, ShardedWriter

    marker = out / ".complete"
    if marker.is_file():
        return
    shutil.rmtree(out, ignore_errors=True)
    tensors = shape.tensors()
    writer = ShardedWriter(
        out, [OutputTensor(n, "BF16", s) for n, s in tensors], max_shard_bytes=2 * 1024**3
    )
    for name, dims in tensors:
        writer.begin(name)
        g = torch.Generator().manual_seed(_seed("base", name))
        t = torch.ones(dims) if len(dims) == 1 else torch.randn(dims, generator=g).mul_(0.02)
        if role != "base":
            g2 = torch.Generator().manual_seed(_seed(role, name))
            t.add_(torch.randn(dims, generator=g2), alpha=0.002)
        writer.write(t.to(torch.bfloat16))
        del t
    writer.close()
    (out / "config.json").write_text(json.dumps(shape.config(), indent=2))
    marker.touch()


def ensure_mergekit() -> Path:
    """The mergekit virtual environment (created with uv on first use)."""
    python = MERGEKIT_ENV / "bin" / "python"
    marker = MERGEKIT_ENV / ".complete"
    if not marker.is_file():
        shutil.rmtree(MERGEKIT_ENV, ignore_errors=True)
        env = {**os.environ, "UV_CACHE_DIR": str(CACHE / "uv-cache")}
        subprocess.run(
            [str(UV), "venv", "--quiet", "--python", sys.executable, str(MERGEKIT_ENV)],
            check=True,
            env=env,
        )
        subprocess.run(
            [str(UV), "pip", "install", "--quiet", f"mergekit=={MERGEKIT_VERSION}"],
            check=True,
            env={**env, "VIRTUAL_ENV": str(MERGEKIT_ENV)},
        )
        marker.touch()
    return python


# Runs the command from a fresh, small interpreter: a child forked from this (large) process
# would count this process's resident pages in its own peak RSS until it execs.
_LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - start,
                  "maxrss_kb": usage.ru_maxrss}))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a command, measured by a small launcher process."""
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    lines = proc.stdout.decode(errors="replace").splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"rc": -1}
    if proc.returncode != 0 or result["rc"] != 0:
        sys.stderr.write("\n".join(lines[-40:]) + "\n")
        raise SystemExit(f"command failed ({result['rc']}): {' '.join(cmd)}")
    return float(result["wall"]), int(result["maxrss_kb"]) * 1024


def studbook_plan(method: str, a: Path, b: Path, base: Path) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "method": method,
        "parents": [
            {"name": "a", "path": str(a), "params": {"weight": WEIGHTS[0]}},
            {"name": "b", "path": str(b), "params": {"weight": WEIGHTS[1]}},
        ],
        "dtype": "bfloat16",
        "device": "cpu",
    }
    if method == "ties":
        plan["base"] = {"name": "base", "path": str(base)}
        plan["params"] = {"density": DENSITY, "normalize": True}
    return plan


def mergekit_config(method: str, a: Path, b: Path, base: Path) -> str:
    lines = [f"merge_method: {method}", "dtype: bfloat16", "models:"]
    for path, w in zip((a, b), WEIGHTS, strict=True):
        lines.append(f"  - model: {path}")
        params = f"weight: {w}" + (f", density: {DENSITY}" if method == "ties" else "")
        lines.append(f"    parameters: {{{params}}}")
    if method == "ties":
        lines.append(f"base_model: {base}")
        lines.append("parameters: {normalize: true}")
    return "\n".join(lines) + "\n"


def warm(paths: list[Path]) -> None:
    """Read the inputs once so both engines start from the same (warm) page cache."""
    for p in paths:
        for f in sorted(p.glob("*.safetensors")):
            with f.open("rb") as fh:
                while fh.read(64 << 20):
                    pass


def compare(ours: Path, theirs: Path) -> dict[str, float]:
    """How far apart the two outputs are: max |difference| and the share of unequal entries."""
    from studbook_trainer.merge.io import ModelReader

    worst, unequal, total = 0.0, 0, 0
    with ModelReader(ours) as x, ModelReader(theirs) as y:
        for name in x.tensors:
            a, b = x.get(name).float(), y.get(name).float()
            d = (a - b).abs_()
            worst = max(worst, float(d.max()))
            unequal += int((d > 0).sum())
            total += d.numel()
    return {"max_abs_diff": worst, "unequal_fraction": unequal / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--methods", default="linear,ties")
    parser.add_argument("--engines", default="studbook,mergekit")
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench-merge")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-compare", action="store_true")
    args = parser.parse_args()

    shape = Shape(layers=args.layers)
    models = args.workdir / f"models-l{shape.layers}"
    a, b, base = models / "a", models / "b", models / "base"
    t0 = time.perf_counter()
    for path, role in ((base, "base"), (a, "a"), (b, "b")):
        generate(shape, path, role)
    print(
        f"models: {shape.params() / 1e9:.2f}B parameters, bf16, {models} "
        f"(ready in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    engines = args.engines.split(",")
    mergekit_python = ensure_mergekit() if "mergekit" in engines else None

    results: list[dict[str, Any]] = []
    for method in args.methods.split(","):
        outs: dict[str, Path] = {}
        row: dict[str, Any] = {"method": method}
        for engine in engines:
            out = args.workdir / f"out-{method}-{engine}"
            shutil.rmtree(out, ignore_errors=True)
            warm([a, b] + ([base] if method == "ties" else []))
            if engine == "studbook":
                plan_file = args.workdir / f"plan-{method}.json"
                plan_file.write_text(json.dumps(studbook_plan(method, a, b, base), indent=2))
                cmd = [sys.executable, str(HERE / "merge_studbook.py"), str(plan_file), str(out)]
            else:
                assert mergekit_python is not None
                cfg = args.workdir / f"mergekit-{method}.yml"
                cfg.write_text(mergekit_config(method, a, b, base))
                cmd = [
                    str(mergekit_python.parent / "mergekit-yaml"),
                    str(cfg),
                    str(out),
                    "--lazy-unpickle",
                    "--out-shard-size",
                    "2B",
                ]
            # one intra-op thread for both engines: on a shared 2-core machine, torch's default of
            # one OpenMP thread per core spends most of its time waiting at barriers
            wall, rss = measure(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row[engine] = {"seconds": round(wall, 1), "peak_rss_mb": round(rss / 2**20)}
            outs[engine] = out
            print(f"{method:7s} {engine:9s} {wall:7.1f} s  {rss / 2**20:7.0f} MiB", flush=True)
        if "studbook" in row and "mergekit" in row:
            row["time_ratio"] = round(row["studbook"]["seconds"] / row["mergekit"]["seconds"], 3)
            row["rss_ratio"] = round(
                row["studbook"]["peak_rss_mb"] / row["mergekit"]["peak_rss_mb"], 3
            )
            if not args.no_compare:
                row["agreement"] = compare(outs["studbook"], outs["mergekit"])
        results.append(row)
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)

    print()
    print(
        "| merge | studbook s | mergekit s | time ratio | studbook MiB | mergekit MiB | RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s, m = r.get("studbook", {}), r.get("mergekit", {})
        print(
            f"| {r['method']} | {s.get('seconds', '-')} | {m.get('seconds', '-')} | "
            f"{r.get('time_ratio', '-')} | {s.get('peak_rss_mb', '-')} | "
            f"{m.get('peak_rss_mb', '-')} | {r.get('rss_ratio', '-')} |"
        )
    summary = {
        "parameters": shape.params(),
        "shape": shape.__dict__,
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
