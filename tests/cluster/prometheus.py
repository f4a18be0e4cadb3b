"""A real Prometheus on 127.0.0.1 for the tests, and promtool; built by ``build.sh prometheus``.

    with Prometheus(workdir, [scrape_config], rule_files=[alerts]) as prom:
        prom.query('up{job="studbook"}')

The server runs as a child process (it dies with the test process, like the control plane), on
a free port, with its TSDB and log in ``workdir``; only its HTTP API is used (the build has no web
UI assets).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import (
    LOOPBACK,
    _build,
    _die_with_parent,
    _terminate,
    free_port,
)


def prometheus_binaries() -> Path:
    """Build Prometheus and promtool (or reuse the cached build); the directory holding both.

    Raises ``ControlPlaneError`` with build.sh's output when they cannot be built, so a test
    fails with the reason.
    """
    return _build("prometheus")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool`` with ``args``; the finished process, whatever its exit code."""
    return subprocess.run(
        [str(prometheus_binaries() / "promtool"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


class Prometheus:
    """One Prometheus server: ``start()`` (or ``with``), query its HTTP API, ``stop()``.

    ``scrape_configs`` and ``rule_files`` go into its configuration file as they are; scrapes
    and rule evaluations default to every second, so tests wait seconds, not minutes.
    """

    def __init__(
        self,
        workdir: Path,
        scrape_configs: Sequence[Mapping[str, Any]],
        rule_files: Sequence[Path] = (),
        *,
        interval: str = "1s",
        binaries: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.scrape_configs = list(scrape_configs)
        self.rule_files = [Path(f).resolve() for f in rule_files]
        self.interval = interval
        self.binaries = binaries
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log(self) -> Path:
        """The server's stdout and stderr, kept after ``stop()``."""
        return self.workdir / "prometheus.log"

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Start the server and wait until it is ready to serve queries."""
        binaries = self.binaries or prometheus_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": self.interval,
                        "evaluation_interval": self.interval,
                    },
                    "rule_files": [str(f) for f in self.rule_files],
                    "scrape_configs": self.scrape_configs,
                }
            )
        )
        self.port = free_port()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(binaries / "prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--log.level=info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self.proc.returncode}; log tail:\n"
                    + self.log.read_text(errors="replace")[-4000:]
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as error:
                last = repr(error)
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(
            f"prometheus not ready after {timeout:.0f}s: {last}; log tail:\n"
            + self.log.read_text(errors="replace")[-4000:]
        )

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: the response's ``data``; :class:`PrometheusError` if the
        API reports an error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=30) as page:
                body = json.load(page)
        except urllib.error.HTTPError as error:  # 4xx/5xx still carry the API's JSON
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups, as ``/api/v1/rules`` lists them (with health, lastError)."""
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server; its log and TSDB stay in the work directory."""
        if self.proc is not None:
            _terminate(self.proc, grace)
            self.proc = None
