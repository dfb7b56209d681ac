"""The `sluice` command: up, front, migrate, webui, worker, keys, reconcile, reembed, doctor,
capacity, build-onnx."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

# Nothing heavy at import: this module is the `sluice` script's, and every parser child
# (a multiprocessing forkserver child) runs that script again before it parses a file
# (Python's forkserver ignores "__main__" in its preload list). Importing pydantic here
# cost each parsed file ~0.2 s of CPU; `main` imports what a command needs.
if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger("sluice.cli")


def _migrate(settings: Settings, _: argparse.Namespace) -> int:
    from shared.migrate import MigrationError, run_migrations

    try:
        outcome = run_migrations(settings)
    except MigrationError as err:
        print(f"sluice migrate: {err}", file=sys.stderr)
        return 1
    if outcome == "newer":
        print("database schema is newer than this image: running on it (expand-then-contract)")
    else:
        print("database schema is up to date")
    return 0


def _webui(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "webui.app:create_app", factory=True, host=args.host or settings.host,
        port=args.port or settings.port, log_level=settings.log_level.lower(),
        # No proxy_headers: the trusted-proxy check must see the real peer address.
        proxy_headers=False, timeout_graceful_shutdown=settings.webui_drain_seconds,
    )
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.main import run

    run(settings, processes_sharing_cpus=args.share_cpus, burst=args.burst)
    return 0


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from shared.accounts import create_key, ensure_user, list_keys, revoke_key
    from shared.db import one_off_session

    with one_off_session(settings) as session:
        if args.keys_cmd == "create":
            user = ensure_user(session, args.email, name=args.name or "", is_admin=args.admin)
            key = create_key(session, user, name=args.key_name or "")
            print(key)
            print(f"(key for {user.email}; it is shown only this once)", file=sys.stderr)
        elif args.keys_cmd == "list":
            for k, u in list_keys(session):
                state = "revoked" if k.revoked_at else "active"
                print(f"{k.prefix}  {u.email:30}  {state:8}  created {k.created_at:%Y-%m-%d}  "
                      f"last used {k.last_used_at or '-'}")
        elif args.keys_cmd == "revoke":
            if not revoke_key(session, args.prefix):
                print(f"no key with prefix {args.prefix}", file=sys.stderr)
                return 1
            print(f"revoked {args.prefix}")
    return 0


def _users(settings: Settings, args: argparse.Namespace) -> int:
    from shared.accounts import ensure_user, list_users, set_active
    from shared.db import one_off_session

    with one_off_session(settings) as session:
        if args.users_cmd == "create":
            user = ensure_user(session, args.email, name=args.name or "", is_admin=args.admin)
            print(f"{user.id}  {user.email}{'  (admin)' if user.is_admin else ''}")
        elif args.users_cmd == "list":
            for u in list_users(session):
                flags = ("admin " if u.is_admin else "") + ("" if u.is_active else "disabled")
                print(f"{u.id}  {u.email:30}  {u.name:20}  {flags}")
        elif args.users_cmd in ("disable", "enable"):
            if not set_active(session, args.email, args.users_cmd == "enable"):
                print(f"no user {args.email}", file=sys.stderr)
                return 1
            print(f"{args.users_cmd}d {args.email}")
    return 0


def _reconcile(settings: Settings, _: argparse.Namespace) -> int:
    from shared.db import create_worker_engine, sync_session_factory
    from shared.queue import make_queue
    from shared.redis_pool import create_redis
    from worker.reconciler import reconcile_once

    engine = create_worker_engine(settings, "cli")
    redis = create_redis(settings, "cli")
    try:
        result = reconcile_once(sync_session_factory(engine), make_queue(redis, settings), settings)
        if result is None:
            print("another process is reconciling right now")
            return 1
        print(f"requeued {result.requeued}, failed {result.failed}")
    finally:
        engine.dispose()
        redis.close()
    return 0


def _reembed(settings: Settings, args: argparse.Namespace) -> int:
    """`sluice reembed start [--backend B]` / `status` (shared/reembed.py)."""
    import json

    from shared import reembed
    from shared.db import create_worker_engine, sync_session_factory

    engine = create_worker_engine(settings, "cli")
    try:
        with sync_session_factory(engine)() as session:
            if args.reembed_cmd == "start":
                said = reembed.start(session, args.backend or settings.embedding_backend)
                session.commit()
                print(said)
                if said.startswith("busy"):
                    return 1
            else:
                print(json.dumps(reembed.progress(session).as_dict(), indent=2))
    finally:
        engine.dispose()
    return 0


def _build_onnx(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from shared.embedding import model_path
    from shared.embedding_onnx import ensure_graph, onnx_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else onnx_cache_dir(settings)
    for quantized in {"onnx": [False], "onnx-int8": [True], "all": [False, True]}[args.backend]:
        path, built = ensure_graph(model_path(settings), cache, quantized=quantized)
        print(f"{path}  ({'built' if built else 'already there'})")
    return 0


def _up(_: Settings | None, args: argparse.Namespace) -> int:
    from shared.local.up import run_up

    return run_up(args)


def _front(_: Settings | None, args: argparse.Namespace) -> int:
    from shared.local.front import run

    return run(args.host, args.port, args.backend)


def _doctor(_: Settings | None, args: argparse.Namespace) -> int:
    from shared.ops.doctor_cli import main as doctor_main

    return doctor_main(args)


def _capacity(_: Settings | None, args: argparse.Namespace) -> int:
    from shared.ops.capacity_cli import main as capacity_main

    return capacity_main(args)


def _openwebui(settings: Settings, args: argparse.Namespace) -> int:
    from shared.ops.openwebui import run

    return run(settings, args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run everything locally on embedded Postgres and Redis")
    up.add_argument("--workers", type=int, default=2,
                    help="worker processes sharing this machine's CPUs (default 2: one's parsing, "
                    "chunking and storing overlap the other's embedding)")
    up.add_argument("--webui", type=int, default=1,
                    help="webui processes (default 1); more than one sit behind a round-robin "
                    "front on --port")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", default=".sluice", help="where data lives (default .sluice)")
    up.set_defaults(func=_up, needs_settings=False)

    front = sub.add_parser("front", help="`sluice up --webui N`'s round-robin TCP front")
    front.add_argument("--host", default="127.0.0.1")
    front.add_argument("--port", type=int, required=True)
    front.add_argument("--backend", action="append", required=True, help="host:port, repeated")
    front.set_defaults(func=_front, needs_settings=False)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(func=_migrate)

    web = sub.add_parser("webui", help="serve the HTTP API")
    web.add_argument("--host")
    web.add_argument("--port", type=int)
    web.set_defaults(func=_webui)

    wk = sub.add_parser("worker", help="process the ingest queue")
    wk.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    wk.add_argument("--share-cpus", type=int, default=1,
                    help="processes sharing this machine's CPUs (sizes torch threads)")
    wk.set_defaults(func=_worker)

    bo = sub.add_parser("build-onnx", help="export the model to ONNX (fp32 and int8) into the cache")
    bo.add_argument("--backend", choices=["onnx", "onnx-int8", "all"], default="all")
    bo.add_argument("--cache-dir", help="default: EMBEDDING_CACHE_DIR")
    bo.set_defaults(func=_build_onnx)

    users = sub.add_parser("users", help="user accounts")
    usub = users.add_subparsers(dest="users_cmd", required=True)
    uc = usub.add_parser("create", help="create a user")
    uc.add_argument("--email", required=True)
    uc.add_argument("--name")
    uc.add_argument("--admin", action="store_true")
    usub.add_parser("list", help="list users")
    for verb in ("disable", "enable"):
        usub.add_parser(verb, help=f"{verb} a user (their keys stop or start working)").add_argument("email")
    users.set_defaults(func=_users)

    keys = sub.add_parser("keys", help="API keys")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key (and the user if new)")
    kc.add_argument("--email", required=True)
    kc.add_argument("--name")
    kc.add_argument("--key-name")
    kc.add_argument("--admin", action="store_true")
    ksub.add_parser("list", help="list keys (prefixes only)")
    kr = ksub.add_parser("revoke", help="revoke a key by its prefix")
    kr.add_argument("prefix")
    keys.set_defaults(func=_keys)

    sub.add_parser("reconcile", help="re-enqueue files Redis lost (one pass)").set_defaults(
        func=_reconcile
    )

    rb = sub.add_parser("reembed", help="re-embed every chunk into another embedding space")
    rsub = rb.add_subparsers(dest="reembed_cmd", required=True)
    rs = rsub.add_parser("start", help="start (or resume) a re-embed; into the active space: cancel")
    rs.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"],
                    help="default: EMBEDDING_BACKEND (the workers' backend after the rollout)")
    rsub.add_parser("status", help="progress as JSON (also GET /api/v1/admin/reembed)")
    rb.set_defaults(func=_reembed)

    from shared.ops.capacity_cli import add_arguments as capacity_args
    from shared.ops.doctor_cli import add_arguments as doctor_args
    from shared.ops.openwebui import add_arguments as openwebui_args

    doc = sub.add_parser("doctor", help="check settings, servers and manifests against the budgets")
    doctor_args(doc)
    doc.set_defaults(func=_doctor, needs_settings=False)
    cap = sub.add_parser("capacity", help="size workers, replicas, pools and server limits")
    capacity_args(cap)
    cap.set_defaults(func=_capacity, needs_settings=False)
    owui = sub.add_parser("openwebui", help="Open WebUI on top: read-only role and settings")
    openwebui_args(owui)
    owui.set_defaults(func=_openwebui)
    return p


def main(argv: list[str] | None = None) -> int:
    from shared.logs import configure_logging
    from shared.settings import SettingsError, get_settings

    args = build_parser().parse_args(argv)
    if not getattr(args, "needs_settings", True):
        configure_logging("INFO")
        return int(args.func(None, args))
    try:
        settings = get_settings()
    except SettingsError as err:
        print(f"sluice: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return int(args.func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
