from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from studbook.cli import app

from .pki import KeyPair

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_seal_sign_verify_inspect_lineage(
    tmp_path: Path, model_dir: Callable[..., Path], key: KeyPair
) -> None:
    store = str(tmp_path / "store")
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_pem)

    code, out = run("seal", model_dir(seed=1), "--store", store)
    assert code == 0, out
    founder = out.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", founder)
    code, out = run(
        "seal", model_dir(seed=2), "-s", store, "--operator", "lora", "--parent", founder
    )
    assert code == 0, out
    child = out.strip()

    code, out = run("verify", child, "-s", store, "--trusted-key", pub)
    assert code == 1
    assert "Unsigned" in out

    for artifact in (founder, child):
        code, out = run("sign", artifact, "-s", store, "--key", key.private_path)
        assert code == 0, out
    code, out = run("verify", child, "-s", store, "--trusted-key", pub)
    assert code == 0, out
    assert f"verified {child}" in out and f"ancestor {founder}" in out

    card = tmp_path / "card.json"
    card.write_text(json.dumps({"subject": child, "verdict": "pass"}))
    code, out = run("sign", child, "-s", store, "--key", key.private_path, "--scorecard", card)
    assert code == 0, out
    code, out = run("verify", child, "-s", store, "--trusted-key", pub, "--scorecards")
    assert code == 0 and "scorecard signed by key:pub.pem" in out, out

    code, out = run("inspect", child, "-s", store, "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["lineage"]["parents"] == [founder]
    assert info["signatures"][0]["kind"] == "key"
    assert info["signatures"][0]["subject"] == child
    code, out = run("inspect", child, "-s", store)
    assert code == 0 and "lineage.json" in out

    code, out = run("lineage", "-s", store, "--format", "mermaid")
    assert code == 0 and "-->" in out
    code, out = run("lineage", "-s", store, founder, "--path-to", child)
    assert code == 0 and out.split() == [founder, child]
    out_file = tmp_path / "lineage.dot"
    code, out = run("lineage", "-s", store, "--format", "dot", "--output", out_file)
    assert code == 0 and out_file.read_text().startswith("digraph")

    # Tamper: the refusal names its reason and the exit code is 1.
    target = Path(store) / "sha256" / child.split(":")[1] / "files" / "config.json"
    target.chmod(0o644)
    target.write_text("{}")
    code, out = run("verify", child, "-s", store, "--trusted-key", pub)
    assert code == 1 and "ContentMismatch" in out


def test_seal_with_plain_file_digests(tmp_path: Path, model_dir: Callable[..., Path]) -> None:
    store = str(tmp_path / "store")
    code, out = run("seal", model_dir(seed=4), "-s", store, "--file-digest", "sha256")
    assert code == 0, out
    code, out = run("inspect", out.strip(), "-s", store, "--json")
    assert json.loads(out)["digest"]["fileDigest"] == "sha256"
    code, out = run("seal", model_dir(seed=4), "-s", store, "--file-digest", "md5")
    assert code == 1 and "PackageMalformed" in out
