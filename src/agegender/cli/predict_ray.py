"""``agegender predict SRC... --ray [--ray-address ADDRESS] --output FILE.parquet``: the bulk path on a Ray cluster.

The same rows, summary, ``--shard`` and ``--resume`` as the local bulk path (``agegender predict --output``); the
photos are decoded, detected and predicted by a pool of Ray actors, one per CPU of the cluster
(:mod:`agegender.inference.ray_pipeline`), and their rows stream back into the crash-safe Parquet sink here.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import time

from agegender.cli.common import UserError, require_extra

#: What ``--ray`` without ``--ray-address`` means: the cluster ``ray start`` made (or ``$RAY_ADDRESS``), else a local
#: Ray.
AUTO = "auto"


def _say(message: str) -> None:
    print(f"agegender predict: {message}", file=sys.stderr, flush=True)


#: Seconds to wait for a named cluster's head to accept a connection (Ray itself retries for minutes, in silence).
CONNECT_TIMEOUT_S = 10.0


def _check_reachable(address: str, named_by: str) -> None:
    """UserError, at once, when nothing accepts a connection at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address
    (``named_by``: the option or variable that gave it)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray says what it makes of it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"{named_by}: no Ray cluster answers at {address} ({err})") from None


def connect(address: str) -> bool:
    """Connect to the Ray cluster at ``address`` (``auto``: the one ``ray start`` made on this machine or
    ``$RAY_ADDRESS`` names, else a new local Ray; ``local``: always a new local Ray). Returns whether this call
    connected, so that the caller disconnects (a Ray already initialised in this process is used as it is)."""
    import ray

    if ray.is_initialized():
        _say("using the Ray already started in this process")
        return False
    if address == AUTO:
        if os.environ.get("RAY_ADDRESS"):
            _check_reachable(os.environ["RAY_ADDRESS"], "--ray: $RAY_ADDRESS")
        try:
            ray.init(address=AUTO)
        except ConnectionError:
            if os.environ.get("RAY_ADDRESS"):
                raise UserError(f"--ray: no Ray cluster answers at $RAY_ADDRESS={os.environ['RAY_ADDRESS']}") from None
            _say("no running Ray cluster found (`ray start --head` makes one, --ray-address names one): starting a "
                 f"local Ray on this machine's {os.cpu_count()} CPU(s)")
            ray.init(address="local")
            return True
    else:
        if address != "local":
            _check_reachable(address, "--ray-address")
        try:
            ray.init(address=address)
        except (ConnectionError, ValueError) as err:
            raise UserError(f"--ray-address {address}: cannot connect ({err})") from err
    _say(f"connected to the Ray cluster at {ray.get_runtime_context().gcs_address}")
    return True


def _load_failure(err: BaseException) -> str | None:
    """The reason an actor could not load the model or the detector (a ``ModelError``, ``BackendError`` or
    ``WeightsError`` raised in its constructor, which Ray hands back as an actor that died with the worker's
    traceback as text); else None."""
    found = re.findall(r"agegender\.[\w.]*(?:ModelError|BackendError|WeightsError): (.*)", str(err))
    return found[-1] if found else None


def _check_files_here(args: argparse.Namespace) -> None:
    """The models, detector and dlib weights named by path exist here: every node reads them at the same path, so
    one missing here is missing there too, found now rather than after the workers start (and Ray has printed
    each worker's traceback)."""
    from agegender.artifacts import SHIPPED_MODELS

    named = (("--model", None if args.model in SHIPPED_MODELS else args.model), ("--detector", args.detector),
             ("--descriptor-weights", args.descriptor_weights), ("--gender-model", args.gender_model))
    for option, value in named:
        if value and "://" not in value and not os.path.isfile(value):
            raise UserError(f"{option} {value}: no such file on this machine (the workers read it at this path)")


def run_ray(args: argparse.Namespace) -> int:
    """``agegender predict --ray``: see the module doc. Exit code 1 if any input failed, as the bulk path."""
    require_extra("ray", "ray.data", "pyarrow")
    from agegender.cli.predict import bulk_inputs, report_empty_shard, retry_errors
    from agegender.inference.bulk import BulkSummary
    from agegender.inference.collection import parse_shard
    from agegender.inference.ray_pipeline import files_dataset, list_images, predict_dataset, write_rows
    from agegender.inference.results import ROW_TYPES, ImageFailure
    from agegender.inference.sinks import check_output, open_sink

    if args.output.suffix.lower() != ".parquet":
        raise UserError(f"--ray writes Parquet: give --output FILE.parquet (got {args.output})")
    if args.workers is not None:
        raise UserError("--workers is for the local bulk path: with --ray, Ray runs one model per CPU of the "
                        "cluster (--threads CPUs each)")
    threads = args.threads or 1
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as err:
        raise UserError(str(err)) from err
    check_output(args.output, args.resume)
    _check_files_here(args)

    start = time.perf_counter()
    inputs = bulk_inputs(args, shard, list_images)
    if inputs is None:
        return 1
    collection, everything = inputs
    sink = open_sink(args.output, ROW_TYPES, resume=args.resume)
    if args.retry_errors:
        retry_errors(sink, collection, args.paths)
    todo = sink.done.missing(collection.files)
    new_errors = set(sink.done.missing([path for path, _ in collection.errors]))
    connected = False
    try:
        if todo:
            connected = connect(args.ray_address)
    except BaseException:
        sink.abandon()  # nothing written: no part folder left behind
        raise
    summary = BulkSummary(inputs=len(collection.files) + len(collection.errors),
                          skipped=collection.skipped_counts())
    summary.resumed = len(collection.files) - len(todo) + sum(1 for p, _ in collection.errors if p not in new_errors)
    try:
        if todo:
            import ray
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
            _say(f"{len(todo)} photo(s) to predict on {int(ray.cluster_resources().get('CPU', 0))} CPU(s)")
            largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0)
            if threads > largest:  # Ray would wait for such a node for ever
                raise UserError(f"--threads {threads}: each actor holds that many CPUs of one node, and the "
                                f"largest node has {largest:g}")
            ds = predict_dataset(files_dataset(todo), args.model, None if args.no_detect else (args.detector or "auto"),
                                 flip=not args.no_flip, threads=threads, backend=args.backend, device=args.device,
                                 accurate=args.accurate, descriptor_weights=args.descriptor_weights,
                                 detect_size=args.detect_size, max_pixels=args.max_pixels, error_kinds=True,
                                 gender_model=args.gender_model)
            write_rows(ds, sink, summary)
        # after the photos, so that a worker that cannot start leaves no output behind
        for path, reason in collection.errors:
            if path in new_errors:
                failure = ImageFailure(path, "cannot read", f"{path}: {reason}")
                sink.write(failure.rows())
                summary.add(failure)
    except Exception as err:
        sink.abandon()
        cause = _load_failure(err)
        if cause is None:
            raise
        raise UserError(f"the Ray workers cannot load the model or the detector: {cause} (on an offline cluster: "
                        "--detector PATH that every node has, or AGEGENDER_YUNET, which is passed on to the workers)"
                        ) from err
    except BaseException:
        sink.abandon()
        raise
    else:
        sink.close()
    finally:
        if connected:
            import ray

            ray.shutdown()
    summary.seconds = time.perf_counter() - start
    for line in summary.lines():
        _say(line)
    report_empty_shard(args.shard, summary.inputs, everything)
    return 1 if summary.errors else 0
