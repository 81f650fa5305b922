"""``edg serve``: the rendering and prediction service (Ray Serve) on this machine or a Ray cluster."""
from __future__ import annotations

import argparse
import os

HELP = """\
Serve a trained student and the DFT -> ED image path over HTTP (docs/serve.md):
  POST /v1/predict   XYZ/extXYZ text or SMILES, one or many structures -> energies, forces, the model card's
                     verdict (batched across requests)
  POST /v1/render    one XYZ or SMILES (basis, image_size optional) -> a job id; GET /v1/jobs/<id> -> status,
                     E1..E6, 6 ED and 4 structure views as PNG, the teacher's targets with --teacher
  GET  /             a web page: paste SMILES or XYZ, see the views, energies, forces and the verdict
Results of render jobs are cached by content (molecule, method, render settings) in --cache.

On a laptop it starts a private Ray runtime on 127.0.0.1 (and the Ray dashboard on 127.0.0.1:8265) and stops
everything on Ctrl-C. On a cluster: --ray-address to deploy from here, or `serve deploy configs/serve.yaml`.

Example:
  edg export runs/distill/schnet__rmd17-ethanol__lam0__seed42 --out ethanol.pt2
  edg serve --model ethanol.pt2
  curl -s http://127.0.0.1:8000/v1/predict -H 'Content-Type: application/json' -d '{"smiles": "CCO"}'
"""


def register(sub) -> None:
    from edg.cluster.runtime import ADDRESS_HELP
    p = sub.add_parser("serve", help="HTTP service: predict energies/forces, render ED images, a web page",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="exported student (edg export RUN --out MODEL) for /v1/predict")
    p.add_argument("--teacher", help="teacher checkpoint or run folder: render jobs also return its targets")
    p.add_argument("--cache", help="folder or fsspec URL of the render result cache (default: $EDG_CACHE/serve)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 needs --token)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--token", help="bearer token /v1/ requests must carry (default: $EDG_SERVE_TOKEN; none asked "
                                   "when neither is set)")
    p.add_argument("--ray-address", help=ADDRESS_HELP)
    p.add_argument("--num-cpus", type=int, help="CPUs of the private Ray runtime (default: all)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard port on 127.0.0.1 (default 8265)")
    p.add_argument("--no-dashboard", action="store_true", help="no Ray dashboard (saves memory)")
    p.add_argument("--config", help="YAML of ServeConfig fields (the `args:` of configs/serve.yaml); flags win")
    p.add_argument("--max-batch-size", type=int, help="structures per predictor forward pass (1: no batching)")
    p.add_argument("--render-workers", type=int, help="render job workers (each holds --render-cpus)")
    p.add_argument("--render-cpus", type=float, help="CPUs per render worker (default 1)")
    p.add_argument("--render-gpus", type=float, help="GPUs per render worker (fractional allowed)")
    p.add_argument("--predictor-gpus", type=float, help="GPUs per predictor replica (fractional allowed)")
    p.set_defaults(func=cmd_serve)


def config_from(args):
    """The ``ServeConfig`` of ``--config`` (its ``args:`` mapping when it is a Serve config) and the flags."""
    import dataclasses

    from edg.edg_core.config import read_yaml
    from edg.edg_core.errors import EDGError
    from edg.serve.config import from_args
    data = {}
    if args.config:
        data = read_yaml(args.config)
        apps = data.get("applications") if isinstance(data, dict) else None
        if isinstance(apps, list):  # a Serve config file: the EDG application's args
            data = next((a.get("args") or {} for a in apps if isinstance(a, dict)
                         and str(a.get("import_path", "")).startswith("edg.serve")), {})
    cfg = from_args(data, where=args.config or "edg serve")
    flags = {"model": args.model, "teacher": args.teacher, "cache": args.cache, "max_batch_size": args.max_batch_size,
             "render_workers": args.render_workers, "render_cpus": args.render_cpus, "render_gpus": args.render_gpus,
             "predictor_gpus": args.predictor_gpus}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    for name in ("model", "teacher"):
        path = getattr(cfg, name)
        if path and "://" not in path:
            if not os.path.exists(path):
                raise EDGError(f"--{name} {path}: no such file or folder")
            cfg = dataclasses.replace(cfg, **{name: os.path.abspath(path)})  # replicas may start elsewhere
    if cfg.cache and "://" not in cfg.cache:
        cfg = dataclasses.replace(cfg, cache=os.path.abspath(cfg.cache))
    return cfg


def cmd_serve(args) -> int:
    import logging

    from edg.edg_core.errors import EDGError
    from edg.serve import local
    token = args.token or os.environ.get("EDG_SERVE_TOKEN") or None
    cfg = config_from(args).with_token(token)
    if args.host not in ("127.0.0.1", "localhost", "::1") and cfg.token_sha256 is None:
        raise EDGError(f"--host {args.host} makes the service reachable from other machines: give --token (or "
                       "$EDG_SERVE_TOKEN) so that only holders of the token can use it")
    if args.model is None and cfg.model is None:
        logging.getLogger(__name__).warning("no --model: /v1/predict answers 503; rendering works")
    local.run(cfg, host=args.host, port=args.port, ray_address=args.ray_address,
              dashboard_port=None if args.no_dashboard else args.dashboard_port, num_cpus=args.num_cpus, token=token)
    return 0
