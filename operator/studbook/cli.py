"""The ``studbook`` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from studbook import __version__

if TYPE_CHECKING:
    from rich.text import Text

app = typer.Typer(
    name="studbook",
    help="Breed, sign, verify and trace models as a governed population.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """Studbook: a Kubernetes operator for model breeding."""


@app.command()
def version() -> None:
    """Print Studbook's version."""
    typer.echo(__version__)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace", "-n", help="Watch these namespaces (repeatable); default: all."
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus metrics on this port; 0: off.")
    ] = 9090,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve kopf's liveness probe at this URL (http://0.0.0.0:8080/healthz)."),
    ] = None,
    peering: Annotated[
        str | None, typer.Option(help="Peering name: replicas sharing it elect one to act.")
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            help="Peering priority; the highest acts. Default: derived from POD_NAME "
            "(else host and pid), distinct per replica."
        ),
    ] = None,
    webhook_port: Annotated[
        int, typer.Option(help="Serve the admission webhook on this port; 0: no webhook.")
    ] = 0,
    webhook_host: Annotated[
        str | None,
        typer.Option(help="The address the API server calls the webhook at (e.g. 127.0.0.1)."),
    ] = None,
    webhook_service: Annotated[
        str | None,
        typer.Option(help="NAMESPACE/NAME of the webhook's Service, instead of --webhook-host."),
    ] = None,
    webhook_tls: Annotated[
        Path | None,
        typer.Option(help="Directory with tls.crt, tls.key, ca.crt; default: generated at start."),
    ] = None,
) -> None:
    """Run the operator (the STUDBOOK_* environment configures it; see docs/operator.md)."""
    import kopf

    import studbook.controllers.handlers  # noqa: F401  (registers the handlers)
    from studbook import metrics
    from studbook.controllers import peering as peers

    # Warnings and errors of every logger, kopf's handler failures included: kopf hands those to
    # a handler of its own that only posts Kubernetes events, and drops what it may not post.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = kopf.OperatorSettings()
    if webhook_port:
        from studbook.controllers import webhook

        if (webhook_host is None) == (webhook_service is None):
            raise typer.BadParameter("the webhook needs one of --webhook-host, --webhook-service")
        options = webhook.WebhookOptions(webhook_port, webhook_host, webhook_service, webhook_tls)
        webhook.enable(settings, options)

    if peering is not None:
        source = "--priority"
        if priority is None:
            source = peers.replica_identity(os.environ, socket.gethostname(), os.getpid())
            priority = peers.derived_priority(source)
        typer.echo(f"peering {peering!r} with priority {priority} (from {source})", err=True)
        peers.log_peering_decisions()
    _limit_malloc_arenas()
    _spare_collector()
    if metrics_port:
        metrics.serve(metrics_port)
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or (),
        liveness_endpoint=liveness,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        settings=settings,
    )


@app.command()
def breed(
    directory: Annotated[
        Path | None, typer.Argument(help="A directory of manifests (policy, suite, descendants).")
    ] = None,
    file: Annotated[
        list[Path] | None, typer.Option("--file", "-f", help="Manifest files (repeatable).")
    ] = None,
    workspace: Annotated[
        Path, typer.Option(help="Where the store, runs, key and registry live.")
    ] = Path(".studbook"),
) -> None:
    """Breed a directory of manifests on this machine, as the operator would on a cluster.

    Descendants are bred parents first; then each BreedingRun is searched, one trial at a time,
    and the Descendants of its Pareto front are bred, evaluated and signed.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from studbook.api.descendant import DescendantStatus
    from studbook.api.run import BreedingRunStatus
    from studbook.local.manifests import ManifestsError, load, manifest_files
    from studbook.local.pipeline import LocalBreeder
    from studbook.local.runs import RunError
    from studbook.local.workspace import Workspace

    console = Console()

    def say(text: Text) -> None:
        # Unwrapped: a problem stays one line, with its file path whole, in any terminal or log.
        console.print(text, soft_wrap=True)

    if directory is not None and not directory.is_dir():
        say(_shown(f"{directory}: not a directory", "red"))
        raise typer.Exit(2)
    paths = list(file or []) + (manifest_files(directory) if directory else [])
    if not paths:
        raise typer.BadParameter("give a directory or --file")
    try:
        manifests = load(paths)
    except ManifestsError as error:
        say(_shown(str(error), "red"))
        raise typer.Exit(2) from None
    space = Workspace(workspace)
    statuses: dict[str, DescendantStatus] = {}
    runs: dict[str, BreedingRunStatus] = {}
    with Progress(
        SpinnerColumn(),
        # Names and log lines are the user's text: shown as written, never read as markup.
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[step]}", style="dim", markup=False),
        console=console,
        transient=True,
    ) as bar:
        overall = bar.add_task("breeding", total=len(manifests.descendants), step="")

        def event(name: str, what: str) -> None:
            say(_shown(name, "bold") + " " + _shown(what))
            bar.update(overall, description=_clean(name))

        def activity(line: str) -> None:
            bar.update(overall, step=_clean(line)[-70:])

        searches: dict[str, TaskID] = {}

        def counted(run: str, done: int, total: int) -> None:
            if run not in searches:
                searches[run] = bar.add_task(f"{_clean(run)} trials", total=total, step="")
            bar.update(searches[run], completed=done, total=total)

        try:
            breeder = LocalBreeder(space, event, activity, counted)
        except OSError as error:
            say(_shown(f"workspace {space.root}: {error}", "red"))
            raise typer.Exit(2) from None
        say(_shown(f"signing key: {space.key_dir / 'key.pem'}"))
        try:
            for name, status in breeder.breed(manifests):
                if isinstance(status, BreedingRunStatus):
                    runs[name] = status
                    continue
                if name not in manifests.descendants:  # a Descendant of a run's front
                    bar.update(overall, total=len(statuses) + 1)
                statuses[name] = status
                bar.update(overall, advance=1, step="")
        except ManifestsError as error:
            say(_shown(f"nothing was bred: {error}", "red"))
            raise typer.Exit(1) from None
        except RunError as error:
            say(_shown(f"breeding run {error}", "red"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted: {len(statuses)} of {len(manifests.descendants)} done and"
                " recorded, and every trial told; run the same command again to carry on"
                "[/yellow]"
            )
            raise typer.Exit(130) from None
    table = Table("descendant", "phase", "stage", "artifact", "verdict", "net gain")
    for name, status in statuses.items():
        card = status.scorecard
        cells = (
            name,
            status.phase,
            status.stage or "",
            status.artifact.short_id if status.artifact else "",
            card.verdict if card else "",
            f"{card.net_gain:+.3f}" if card and card.net_gain is not None else "",
        )
        table.add_row(*(_shown(cell) for cell in cells))
    console.print(table)
    for name, run in runs.items():
        say(_shown(f"breeding run {name}: {run.phase}: {run.message or ''}", "bold"))
        counts = f"{run.trials_done} trials scored, {run.trials_failed} failed"
        say(_shown(f"  {counts}; ledger {run.ledger_uri or ''}"))
        if run.best is not None:
            values = ", ".join(f"{k} {v:.3f}" for k, v in run.best.objectives.items())
            say(
                _shown(
                    f"  best: trial {run.best.trial} (generation {run.best.generation}, fitness"
                    f" {run.best.fitness:.3f}: {values}) -> {run.best.descendant or 'not bred'}"
                )
            )
        else:
            say(_shown("  no feasible trial: no descendant"))
    say(_shown(f"workspace: {space.root}  (studbook report --workspace {space.root})"))
    if any(s.phase != "Ready" for s in statuses.values()) or any(
        r.phase == "Failed" for r in runs.values()
    ):
        raise typer.Exit(1)


_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
"""A terminal control sequence (colours, cursor moves), as progress bars and loggers write."""
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""A character a terminal acts on rather than shows, bidirectional overrides included."""


def _clean(text: str) -> str:
    """Untrusted text made inert for a terminal: sequences dropped, other controls shown escaped.

    Log lines, manifests and their error messages come from tenants and training pods; the
    terminal must show them, not obey them.
    """
    text = _ESCAPE_SEQUENCE.sub("", text)
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode(), text)


def _shown(text: str, style: str = "") -> Text:
    """Untrusted text as Rich prints it: literally, never as markup or emoji codes."""
    from rich.text import Text

    return Text(_clean(text), style=style)


@app.command()
def report(
    workspace: Annotated[
        Path, typer.Option(help="The workspace `studbook breed` wrote its registry and store to.")
    ] = Path(".studbook"),
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report; default: WORKSPACE/report.")
    ] = None,
) -> None:
    """Write a workspace's lineage, scorecards, comparisons and verdicts as HTML and Markdown."""
    from studbook.artifacts import ArtifactError
    from studbook.local.report import ReportError, load, write

    try:
        paths = write(load(workspace), out or workspace / "report")
    except (ReportError, ArtifactError) as exc:
        raise _refuse(exc) from exc
    for path in paths:
        typer.echo(str(path))


@app.command()
def reproduce(
    artifact: Annotated[str, typer.Argument(help="Artifact id (sha256:...).")],
    directory: Annotated[
        Path | None, typer.Argument(help="The directory of manifests it was bred from.")
    ] = None,
    file: Annotated[
        list[Path] | None, typer.Option("--file", "-f", help="Manifest files (repeatable).")
    ] = None,
    workspace: Annotated[
        Path, typer.Option(help="The workspace whose store, registry and key to use.")
    ] = Path(".studbook"),
    store: Annotated[
        str | None,
        typer.Option(
            "--store", "-s", help="Read this store instead (no registry, no workspace key)."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The descendant whose spec is the recipe; default: found.")
    ] = None,
    trusted_key: Annotated[
        list[Path] | None, typer.Option(help="Also trust this public key (PEM).")
    ] = None,
    scratch: Annotated[
        Path | None, typer.Option(help="Re-breed here (a new directory, kept); default: a temp.")
    ] = None,
) -> None:
    """Re-breed an artifact from its signed lineage; report a match or the first differing file.

    Exit status: 0 match, 1 differs, 2 not reproduced (refused recipe, signature or step).
    """
    import tempfile
    from contextlib import nullcontext

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from studbook.artifacts import ArtifactError, Store, TrustedKey, Verifier
    from studbook.local.manifests import ManifestsError, load, manifest_files
    from studbook.local.pipeline import local_trust
    from studbook.local.reproduce import ReproduceError, rebreed, recipe, registered_name
    from studbook.local.workspace import Workspace

    console = Console()

    def say(text: Text) -> None:
        console.print(text, soft_wrap=True)

    def refuse(error: object) -> typer.Exit:
        # One line, whatever the error: a field's message or a step's last words.
        say(_shown("not reproduced: " + " ".join(str(error).split()), "red"))
        return typer.Exit(2)

    if directory is not None and not directory.is_dir():
        raise refuse(f"{directory}: not a directory")
    paths = list(file or []) + (manifest_files(directory) if directory else [])
    if not paths:
        raise typer.BadParameter("give the manifests it was bred from: a directory or --file")
    if scratch is not None and scratch.exists():
        raise refuse(f"--scratch {scratch} already exists; give a new directory")
    space = Workspace(workspace)
    if store is None and not space.store.is_dir():
        raise refuse(f"workspace {space.root} has no store; give --workspace or --store")
    if store is not None and "://" not in store and not Path(store).is_dir():
        raise refuse(f"--store {store} is not a directory")  # opening one would create it
    try:
        manifests = load(paths)
    except ManifestsError as error:
        say(_shown(str(error), "red"))
        raise typer.Exit(2) from None
    try:
        source = Store.open(store or space.store)
        source.manifest(artifact)
        if name is None and store is None:
            name = registered_name(space.registry(), artifact)
        # Every check before any work: the recipe against the lineage, then who signed it.
        descendant = recipe(manifests, source, artifact, name)
        say(_shown(f"recipe: {descendant.metadata.name} ({manifests.source(descendant)})"))
        keys = [TrustedKey(path.read_bytes(), path.name) for path in trusted_key or ()]
        if store is None and (space.key_dir / "key.pem").exists():
            keys.append(TrustedKey(space.public_key(), "workspace"))
        policy = manifests.policies[descendant.spec.policy_ref.name]
        trust = local_trust(policy.spec, *keys)
        if trust.signers:
            signer = Verifier(source, trust).verify(artifact).signer
            say(_shown(f"signature: verified, with its ancestors; signed by {signer}"))
        else:
            say(
                _shown(
                    "signature: not checked, no signer is trusted (no workspace key, no "
                    f"--trusted-key, no key or CA in policy {policy.metadata.name})",
                    "yellow",
                )
            )
        with (
            (
                nullcontext(str(scratch))
                if scratch
                else tempfile.TemporaryDirectory(prefix="studbook-reproduce-")
            ) as where,
            Progress(
                SpinnerColumn(),
                TextColumn("re-breeding"),
                TimeElapsedColumn(),
                TextColumn("{task.description}", style="dim", markup=False),
                console=console,
                transient=True,
                disable=not console.is_terminal,  # a log gets the outcome, not a blank line
            ) as bar,
        ):
            line = bar.add_task("")
            outcome = rebreed(
                source,
                manifests,
                descendant,
                artifact,
                Path(where),
                lambda text: bar.update(line, description=_clean(text)[-70:]),
            )
    except (ReproduceError, ArtifactError, OSError, ValueError) as error:
        raise refuse(error) from None
    except KeyboardInterrupt:
        raise refuse("interrupted") from None
    say(_shown(str(outcome), "" if outcome.matches else "red"))
    if not outcome.matches:
        raise typer.Exit(1)


# -- artifacts: seal, sign, verify, lineage, inspect --------------------------------------------

StoreOpt = Annotated[
    str, typer.Option("--store", "-s", envvar="STUDBOOK_STORE", help="Store URI or directory.")
]


@contextmanager
def _hashing(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over bytes hashed, on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


def _refuse(exc: Exception) -> typer.Exit:
    reason = getattr(exc, "reason", type(exc).__name__)
    typer.secho(f"refused ({reason}): {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@app.command()
def seal(
    source: Annotated[Path, typer.Argument(help="Directory of model files.")],
    store: StoreOpt,
    lineage_file: Annotated[
        Path | None, typer.Option("--lineage", help="A lineage.json to use as is.")
    ] = None,
    operator: Annotated[str, typer.Option(help="Breeding operator.")] = "import",
    parent: Annotated[list[str] | None, typer.Option(help="Parent artifact id.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="Operator config (JSON); its hash is recorded.")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="NAME=DIGEST of a dataset read.")
    ] = None,
    code_version: Annotated[str, typer.Option(help="Trainer version.")] = __version__,
    file_digest: Annotated[
        str, typer.Option(help="sha256-shard-tree (parallel within files) or sha256.")
    ] = "sha256-shard-tree",
) -> None:
    """Seal a directory into an immutable, content-addressed package; print its id."""
    from studbook.artifacts import ArtifactError, DigestParams, Lineage, Store, config_hash

    try:
        if lineage_file is not None:
            lineage = Lineage.from_bytes(lineage_file.read_bytes())
        else:
            cfg = json.loads(config.read_text()) if config else {}
            lineage = Lineage(
                parents=tuple(parent or ()),
                operator=operator,
                config_hash=config_hash(cfg),
                dataset_digests=dict(d.split("=", 1) for d in dataset or ()),
                code_version=code_version,
            )
        target = Store.open(store)
        total = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
        with _hashing(total, "sealing") as progress:
            params = DigestParams(file_digest=file_digest)
            manifest = target.seal(source, lineage, params=params, progress=progress)
    except ArtifactError as exc:
        raise _refuse(exc) from exc
    typer.echo(manifest.id)


@app.command()
def sign(
    artifact: Annotated[str, typer.Argument(help="Artifact id (sha256:...).")],
    store: StoreOpt,
    key: Annotated[Path | None, typer.Option(help="EC private key (PEM).")] = None,
    cert: Annotated[
        Path | None, typer.Option(help="Signing certificate (PEM), with --key.")
    ] = None,
    chain: Annotated[
        list[Path] | None, typer.Option(help="Issuing certificates (PEM), with --cert.")
    ] = None,
    keyless: Annotated[bool, typer.Option(help="Sigstore keyless signing.")] = False,
    trust_config: Annotated[
        Path | None, typer.Option(help="Sigstore ClientTrustConfig JSON (keyless).")
    ] = None,
    token_file: Annotated[
        Path, typer.Option(help="Projected service-account token (keyless).")
    ] = Path("/var/run/secrets/sigstore/token"),
    scorecard: Annotated[
        Path | None, typer.Option(help="Sign this scorecard (subject: the artifact) instead.")
    ] = None,
) -> None:
    """Sign a stored package (re-hashed first) or a scorecard about it."""
    from studbook.artifacts import (
        ArtifactError,
        CertificateSigner,
        KeylessSigner,
        KeySigner,
        Signer,
        Store,
        sign_artifact,
        sign_scorecard,
    )

    signer: Signer
    if keyless:
        if trust_config is None:
            raise typer.BadParameter("--keyless needs --trust-config")
        signer = KeylessSigner(trust_config=trust_config, token_path=token_file)
    elif key is not None and cert is not None:
        if not chain:
            raise typer.BadParameter("--cert needs --chain (at least the CA certificate)")
        signer = CertificateSigner(key, cert, tuple(chain))
    elif key is not None:
        signer = KeySigner(key)
    else:
        raise typer.BadParameter("give --key, --key with --cert, or --keyless")
    try:
        target = Store.open(store)
        if scorecard is not None:
            name = sign_scorecard(target, artifact, scorecard.read_bytes(), signer)
        else:
            with _hashing(target.total_bytes(artifact), "hashing") as progress:
                name = sign_artifact(target, artifact, signer, progress=progress)
    except ArtifactError as exc:
        raise _refuse(exc) from exc
    typer.echo(name)


@app.command()
def verify(
    artifact: Annotated[str, typer.Argument(help="Artifact id (sha256:...).")],
    store: StoreOpt,
    trusted_key: Annotated[
        list[Path] | None, typer.Option(help="Trusted public key (PEM).")
    ] = None,
    ca: Annotated[list[Path] | None, typer.Option(help="Trusted CA bundle (PEM).")] = None,
    san_pattern: Annotated[
        list[str] | None, typer.Option(help="SAN regex for the --ca of the same position.")
    ] = None,
    identity: Annotated[str | None, typer.Option(help="Keyless identity (exact).")] = None,
    identity_pattern: Annotated[str | None, typer.Option(help="Keyless identity (regex).")] = None,
    oidc_issuer: Annotated[str | None, typer.Option(help="Keyless OIDC issuer.")] = None,
    trust_config: Annotated[
        Path | None, typer.Option(help="Sigstore ClientTrustConfig JSON (keyless).")
    ] = None,
    parents: Annotated[bool, typer.Option(help="Verify ancestors too.")] = True,
    scorecards: Annotated[bool, typer.Option(help="Verify stored scorecards too.")] = False,
) -> None:
    """Verify a package: re-hash, recompute the id, check signature, signer and parents."""
    from studbook.artifacts import (
        ArtifactError,
        Store,
        TrustedCertificateAuthority,
        TrustedKey,
        TrustedKeylessIdentity,
        TrustedSigner,
        TrustPolicy,
        Verifier,
    )

    signers: list[TrustedSigner] = [TrustedKey(p.read_bytes(), p.name) for p in trusted_key or ()]
    cas, patterns = ca or [], san_pattern or []
    if len(cas) != len(patterns):
        raise typer.BadParameter("give one --san-pattern per --ca")
    signers += [
        TrustedCertificateAuthority(c.read_bytes(), p) for c, p in zip(cas, patterns, strict=True)
    ]
    if identity or identity_pattern:
        if oidc_issuer is None or trust_config is None:
            raise typer.BadParameter("keyless identities need --oidc-issuer and --trust-config")
        signers.append(
            TrustedKeylessIdentity(
                issuer=oidc_issuer,
                trust_config=trust_config.read_bytes(),
                identity=identity,
                identity_pattern=identity_pattern,
            )
        )
    if not signers:
        raise typer.BadParameter("trust someone: --trusted-key, --ca/--san-pattern or keyless")
    try:
        target = Store.open(store)
        verifier = Verifier(target, TrustPolicy(tuple(signers), check_parents=parents))
        with _hashing(target.total_bytes(artifact), "verifying") as progress:
            result = verifier.verify(artifact, progress=progress)
        cards = verifier.verify_scorecards(artifact) if scorecards else []
    except ArtifactError as exc:
        raise _refuse(exc) from exc
    typer.echo(f"verified {result.id}, signed by {result.signer}")
    for ancestor in result.ancestors():
        typer.echo(f"  ancestor {ancestor.id}, signed by {ancestor.signer}")
    for card in cards:
        typer.echo(f"  scorecard signed by {card.signer}")


@app.command()
def lineage(
    store: StoreOpt,
    artifact: Annotated[str | None, typer.Argument(help="Limit to this artifact's family.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json, dot or mermaid.")] = "json",
    output: Annotated[
        Path | None, typer.Option(help="Write here; .png/.svg/.pdf render with Graphviz.")
    ] = None,
    path_to: Annotated[
        str | None, typer.Option(help="Print the line of descent from ARTIFACT to this id.")
    ] = None,
) -> None:
    """Show the lineage DAG (JSON, DOT, Mermaid) or render it as a picture."""
    from studbook.artifacts import ArtifactError, LineageGraph, Store

    try:
        graph = LineageGraph.from_store(Store.open(store))
        if artifact is not None and path_to is not None:
            for node in graph.path(artifact, path_to):
                typer.echo(node)
            return
        if artifact is not None:
            graph = graph.family(artifact)
        if output is not None and output.suffix in {".png", ".svg", ".pdf"}:
            graph.render(output)
            typer.echo(str(output))
            return
        if fmt == "json":
            text = json.dumps(graph.to_json(), indent=2) + "\n"
        elif fmt == "dot":
            text = graph.to_dot()
        elif fmt == "mermaid":
            text = graph.to_mermaid()
        else:
            raise typer.BadParameter("--format is json, dot or mermaid")
    except ArtifactError as exc:
        raise _refuse(exc) from exc
    if output is not None:
        output.write_text(text)
    else:
        typer.echo(text, nl=False)


@app.command()
def inspect(
    artifact: Annotated[str, typer.Argument(help="Artifact id (sha256:...).")],
    store: StoreOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a package's manifest, lineage, signatures and scorecards (without verifying)."""
    from studbook.artifacts import ArtifactError, Store
    from studbook.artifacts.signing import describe

    try:
        info = describe(Store.open(store), artifact)
    except ArtifactError as exc:
        raise _refuse(exc) from exc
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    # A package's paths, names and signers are untrusted text: shown, never read as markup.
    console.print(_shown(info["id"], "bold") + f"  ({info['size']} bytes)")
    console.print(_shown(f"digest: {info['digest']}"))
    table = Table("path", "size", "sha256")
    for f in info["files"]:
        table.add_row(_shown(f["path"]), str(f["size"]), _shown(f["sha256"][:16] + "…"))
    console.print(table)
    console.print("lineage:", info["lineage"])
    for sig in info["signatures"]:
        console.print(_shown(f"signature {sig['name']}: {sig['kind']} {sig.get('signer', '')}"))
    for card in info["scorecards"]:
        console.print(_shown(f"scorecard {card['name']}: signed={card['signed']}"))


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before the worker threads start.

    Each thread otherwise gets an arena of its own; with dozens of mostly idle handler threads
    that fragments into tens of megabytes of resident memory for nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        m_arena_max = -8  # from malloc.h
        ctypes.CDLL(name).mallopt(m_arena_max, 2)


def _spare_collector() -> None:
    """Keep Python's cyclic garbage collector off the objects that live as long as the process.

    A full collection walks every tracked object: modules, classes, the indexes' bodies. In a
    burst of Descendants the first generations filled quickly with the in-flight objects of each
    event and promoted them, and full collections took a quarter of the operator's CPU.
    Freezing what is loaded before kopf starts (only live objects, just collected) takes it out of
    every later collection; a larger first generation lets an event's objects die by reference
    counting before any collection sees them.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def main() -> None:
    """Run the command line."""
    app()
