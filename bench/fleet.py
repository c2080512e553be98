"""How many workers one study's stores can feed: N simulated workers on Ray (logical GPUs) against one PostgreSQL
study and one `afina server` (MLflow over PostgreSQL), each worker doing a trial's store traffic without training.

    python bench/fleet.py --workers 8 32 64 --seconds 60

A simulated trial: `study.ask`, a child MLflow run with afina's params and tags, `--steps` batches of 6 curve
metrics (one per logging step, as a trial logs them), the results, the run closed, `study.tell`. Each worker is
one client with its own Optuna storage (its own connection pool) and MLflow client, as an `afina sweep` worker
is; the clients run as threads of 8 Ray actor processes (a process per worker would need ~250 MB each). Prints,
per N: trials per minute, p50/p95 of ask, tell and one MLflow call, and the most PostgreSQL connections open.
`--grpc` puts Optuna's gRPC storage proxy in front of PostgreSQL (one process, one connection pool) and the
workers talk to it through `GrpcStorageProxy` (needs `pip install grpcio`).
The clients share this machine's CPUs with both servers: read the figures as what the stores sustain here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

PG = os.environ.get("AFINA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
ACTORS = 8
LIMIT = [0]  # the server's max_connections, read once


def admin(sql: str) -> int | None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchone()[0] if cur.description else None


def client_loop(storage_url: str, mlflow_uri: str, study_name: str, experiment_id: str, seconds: float, steps: int) -> dict:
    """One worker's store traffic for `seconds`; latencies in ms."""
    import optuna
    from mlflow import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[str, list] = {"ask": [], "tell": [], "mlflow": [], "trials": [], "errors": []}
    try:
        if storage_url.startswith("grpc://"):
            host, port = storage_url.removeprefix("grpc://").split(":")
            storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
        else:
            storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=60)
        study = optuna.load_study(study_name=study_name, storage=storage)
        c = MlflowClient(mlflow_uri)
    except Exception as e:  # e.g. PostgreSQL's max_connections reached: counted, the figure that matters
        out["errors"].append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return out
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            _trial(study, c, experiment_id, steps, out)
        except Exception as e:  # a store that refused or timed out: counted, and the worker goes on
            out["errors"].append(f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
    return out


def _trial(study, c, experiment_id: str, steps: int, out: dict) -> None:
    """One simulated trial's store traffic, its latencies appended to `out` (ms)."""
    from mlflow.entities import Metric, Param

    t0 = time.perf_counter()
    trial = study.ask()
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    out["ask"].append((time.perf_counter() - t0) * 1e3)

    def call(fn, *a, **kw):
        s = time.perf_counter()
        r = fn(*a, **kw)
        out["mlflow"].append((time.perf_counter() - s) * 1e3)
        return r

    run = call(c.create_run, experiment_id, tags={"afina.role": "trial", "afina.trial": str(trial.number)})
    rid = run.info.run_id
    call(c.log_batch, rid, params=[Param(f"train.p{i}", str(i)) for i in range(30)])
    for step in range(steps):
        ms = int(time.time() * 1000)
        names = ("loss", "grad_norm", "learning_rate", "eval_loss", "epoch", "train_tokens")
        call(c.log_batch, rid, metrics=[Metric(n, 1.0 / (step + 1), ms, step) for n in names])
    call(c.log_batch, rid, metrics=[Metric("best_eval_loss", lr, int(time.time() * 1000), steps)])
    call(c.set_terminated, rid, "FINISHED")
    t1 = time.perf_counter()
    study.tell(trial, lr)
    out["tell"].append((time.perf_counter() - t1) * 1e3)
    out["trials"].append(time.monotonic())


def run(n: int, seconds: float, steps: int, storage_url: str, mlflow_uri: str, worker_url: str) -> dict:
    import optuna
    import ray
    from mlflow import MlflowClient

    name = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    optuna.create_study(study_name=name, storage=storage_url)
    experiment_id = MlflowClient(mlflow_uri).create_experiment(name)

    @ray.remote(num_gpus=1, num_cpus=0, max_concurrency=64)
    class Host:
        def work(self, *args):
            return client_loop(*args)

    hosts = [Host.remote() for _ in range(ACTORS)]
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], admin("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'") or 0)
            except Exception:  # "too many clients": every slot is taken, the watcher's own included
                peak[0] = max(peak[0], LIMIT[0])
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.monotonic()
    refs = [hosts[i % ACTORS].work.remote(worker_url, mlflow_uri, name, experiment_id, seconds, steps) for i in range(n)]
    results = ray.get(refs)
    wall = time.monotonic() - t0
    stop.set()
    for h in hosts:
        ray.kill(h)
    merged = {k: [x for r in results for x in r[k]] for k in ("ask", "tell", "mlflow")}
    trials = sum(len(r["trials"]) for r in results)
    errors = [e for r in results for e in r["errors"]]

    def p(xs, q):
        return statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else float("nan")

    return {
        "workers": n,
        "trials": trials,
        "trials_per_min": trials / wall * 60,
        **{f"{k}_p50_ms": p(v, 50) for k, v in merged.items()},
        **{f"{k}_p95_ms": p(v, 95) for k, v in merged.items()},
        "pg_connections_peak": peak[0],
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--steps", type=int, default=12, help="logging steps per simulated trial")
    ap.add_argument("--server-workers", type=int, default=4, help="`afina server --workers`")
    ap.add_argument("--grpc", action="store_true", help="workers reach the study through Optuna's gRPC proxy")
    args = ap.parse_args()
    import ray

    LIMIT[0] = int(admin("SHOW max_connections"))
    dbs = [f"afina_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for db in dbs:
        admin(f"CREATE DATABASE {db}")
    port, extra = 5600 + os.getpid() % 300, []
    folder = Path("bench-results") / "fleet"
    folder.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "afina", "server", "--backend-store-uri", f"{PG}/{dbs[1]}", "--artifacts-destination",
         str(folder / "artifacts"), "--port", str(port), "--workers", str(args.server_workers)],
        stdout=(folder / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        import requests

        for _ in range(120):
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        worker_url = f"{PG}/{dbs[0]}"
        if args.grpc:  # one proxy process holds the only PostgreSQL pool; workers speak gRPC to it
            grpc_port = port + 300
            proxy = subprocess.Popen(
                [sys.executable, "-c", "import optuna, sys; optuna.logging.set_verbosity(optuna.logging.WARNING); "
                 "optuna.storages.run_grpc_proxy_server(optuna.storages.RDBStorage(sys.argv[1]), host='127.0.0.1', port=int(sys.argv[2]))",
                 worker_url, str(grpc_port)],
                stdout=(folder / "grpc.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            extra.append(proxy)
            worker_url = f"grpc://127.0.0.1:{grpc_port}"
            time.sleep(5)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            num_gpus=max(args.workers),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        print(
            f"{os.cpu_count()} CPUs; afina server with {args.server_workers} workers; {args.seconds:g} s per N; {args.steps} steps a trial;"
            f" study via {'gRPC proxy' if args.grpc else 'PostgreSQL directly'}; PostgreSQL max_connections {LIMIT[0]}"
        )
        print("workers  trials/min  ask p50/p95 ms  tell p50/p95 ms  mlflow call p50/p95 ms  PG connections  errors")
        for n in args.workers:
            r = run(n, args.seconds, args.steps, f"{PG}/{dbs[0]}", f"http://127.0.0.1:{port}", worker_url)
            print(
                f"{n:7d}  {r['trials_per_min']:10.0f}  {r['ask_p50_ms']:6.0f} / {r['ask_p95_ms']:<6.0f} "
                f"{r['tell_p50_ms']:6.0f} / {r['tell_p95_ms']:<6.0f}  {r['mlflow_p50_ms']:9.0f} / {r['mlflow_p95_ms']:<9.0f} "
                f"{r['pg_connections_peak']:5d}  {r['errors']} {r['first_error']}",
                flush=True,
            )
        ray.shutdown()
    finally:
        for proc in [server, *extra]:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        for db in dbs:
            admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
