"""The Serve application: three deployments and the builder ``build_app(args)`` (``serve deploy``'s import path).

==============  ===================================================================================
``Ingress``     FastAPI routes: ``GET /`` (the page), ``GET /v1/info``, ``GET /v1/model``,
                ``POST /v1/predict``, ``POST /v1/render``, ``GET /v1/jobs/{id}``; the bearer token, body
                size and input checks (``serve.schemas``), a log line per request. Holds no CPU.
``Predictor``   the exported student (``edg.train.io.exported``); ``@serve.batch`` gathers the structures
                of concurrent requests into one forward pass (``max_batch_size`` structures); replicas
                hold ``predictor_cpus`` / fractional ``predictor_gpus``.
``RenderJobs``  one replica: the job table, the result cache, and ``render_workers`` Ray actors
                (``RenderRunner``: DFT, images, teacher) holding ``render_cpus`` / ``render_gpus`` each;
                jobs queue here and run off the request path. Holds no CPU itself.
==============  ===================================================================================

Every refusal is a 4xx JSON ``{"error": "<one line>"}``; the FastAPI schema pages are off (they would load
scripts from a CDN). Metrics (``ray.serve.metrics``): ``edg_serve_structures`` (by verdict),
``edg_serve_render_jobs`` (by outcome) and ``edg_serve_render_queue``, beside Serve's own request metrics.
"""

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServeConfig, from_args
from .schemas import Limits, RequestError, check_fields, json_body, option, structures, text_body

log = logging.getLogger("ray.serve")
PAGE = Path(__file__).with_name("page.html")
api = FastAPI(title="EDG", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError):
    log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _error(exc.status, exc.message, headers)


@api.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException):
    text = {404: f"no such path {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return _error(exc.status_code, text.get(exc.status_code, str(exc.detail)))


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    return _error(400, f"bad request: {'.'.join(map(str, first.get('loc', ())))} {first.get('msg', '')}".strip())


def _units_factor(model_units: dict, asked: str) -> tuple[float, dict]:
    """(factor from the model's energy unit to ``asked``, the answer's units) for eV or kcal/mol."""
    from edg.edg_core.units import KCAL_PER_MOL_IN_EV
    have = model_units.get("energy", "eV")
    in_ev = {"eV": 1.0, "kcal/mol": KCAL_PER_MOL_IN_EV}
    if have not in in_ev:
        if asked != have:
            raise RequestError(422, f"this model predicts {have}; units={asked!r} cannot be converted from it")
        return 1.0, {"energy": have, "forces": f"{have}/Å"}
    return in_ev[have] / in_ev[asked], {"energy": asked, "forces": f"{asked}/Å"}


@serve.deployment(name="Predictor")
class Predictor:
    """The exported student behind ``/v1/predict``, batched across requests."""

    def __init__(self, args: dict):
        from edg.train.io.exported import load_exported
        self.cfg = from_args(args)
        import torch
        device = "cuda" if self.cfg.predictor_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model = load_exported(self.cfg.model, device=device)
        self._warm_up()
        self.predict_chunk.set_max_batch_size(self.cfg.max_batch_size)
        self.predict_chunk.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        from ray.serve.metrics import Counter
        self.counted = Counter("edg_serve_structures", description="structures predicted, by domain verdict",
                               tag_keys=("verdict",))

    def _warm_up(self) -> None:
        """One prediction at start-up, so that the first request does not pay for loading the program of the
        training molecules' size: a cube lattice (1.5 Å) of the card's smallest training size in its elements."""
        import numpy as np
        card = self.model.card.to_dict()
        n = max(2, int(card.get("atoms", {}).get("min", 2)))
        side = int(np.ceil(n ** (1 / 3)))
        pos = 1.5 * np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n], float)
        z = np.array([card["elements"][i % len(card["elements"])] for i in range(n)])
        try:
            self.model.predict([(z, pos)])
        except Exception as e:  # noqa: BLE001 (only a courtesy: the first request then loads it)
            log.warning("predictor warm-up failed: %s", e)

    def card(self) -> dict:
        """The model file's name, its student and model card (training domain), and its units."""
        return {"name": Path(self.cfg.model).name, "student": getattr(self.model, "student", None),
                "card": self.model.card.to_dict(), "units": dict(self.model.units)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=lambda chunks: sum(map(len, chunks)))
    async def predict_chunk(self, chunks: list[list[tuple]]) -> list[list[dict]]:
        """One forward pass over every structure of the waiting chunks (``(z, pos)`` pairs), split back."""
        flat = [s for chunk in chunks for s in chunk]
        preds = await asyncio.to_thread(self.model.predict, flat)
        out, k = [], 0
        for chunk in chunks:
            part = preds[k:k + len(chunk)]
            k += len(chunk)
            out.append([{"energy": p.energy, "forces": None if p.forces is None else p.forces.tolist(),
                         "verdict": {"status": p.verdict.status, "reasons": list(p.verdict.reasons)}}
                        for p in part])
        for p in preds:
            self.counted.inc(tags={"verdict": p.verdict.status})
        return out


@serve.deployment(name="RenderJobs", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class RenderJobs:
    """The job table: ``submit`` answers at once (a cached result is done at once); ``render_workers``
    ``RenderRunner`` actors take queued jobs in order; ``status`` reads a job's state, progress and result."""

    def __init__(self, args: dict):
        import ray

        from .jobs import RenderRunner, ResultCache, file_digest
        self.cfg = from_args(args)
        self.cache = ResultCache(self.cfg.cache)
        self.teacher_digest = file_digest(self.cfg.teacher) if self.cfg.teacher else None
        self.jobs: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.queue: asyncio.Queue | None = None
        runner = ray.remote(RenderRunner).options(num_cpus=self.cfg.render_cpus, num_gpus=self.cfg.render_gpus,
                                                  max_concurrency=2)  # run() and progress() at once
        self.runner_cls = runner
        self.runners = [runner.remote(self.cfg.teacher) for _ in range(self.cfg.render_workers)]
        from ray.serve.metrics import Counter, Gauge
        self.finished = Counter("edg_serve_render_jobs", description="render jobs finished, by outcome",
                                tag_keys=("outcome",))
        self.waiting = Gauge("edg_serve_render_queue", description="render jobs waiting for a worker")
        log.info("render jobs: %d workers, cache %s", len(self.runners), self.cache.root)

    def _start(self) -> None:
        if self.queue is None:  # the replica's event loop exists once a call arrives
            self.queue = asyncio.Queue()
            for i in range(len(self.runners)):
                asyncio.get_running_loop().create_task(self._work(i))

    async def submit(self, molecule, dft, render) -> dict:
        from .jobs import RenderSpec
        self._start()
        spec = RenderSpec(molecule, dft, render, self.teacher_digest)
        jid = spec.job_id()
        job = self.jobs.get(jid)
        if job is not None and job["status"] != "failed":
            return self._view(job)
        if await asyncio.to_thread(self.cache.get, jid) is not None:
            self.finished.inc(tags={"outcome": "cached"})
            return {"id": jid, "status": "done", "cached": True}
        job = self.jobs.get(jid)  # submitted by another request while the cache was read
        if job is not None and job["status"] != "failed":
            return self._view(job)
        job = {"id": jid, "status": "queued", "spec": spec, "submitted": time.time(), "molecule": molecule.formula}
        self.jobs[jid] = job
        self.jobs.move_to_end(jid)
        self._forget_old()
        await self.queue.put(jid)
        self.waiting.set(self.queue.qsize())
        log.info("render job %s queued: %s, %d atoms", jid, molecule.formula, molecule.n_atoms)
        return self._view(job)

    def _forget_old(self) -> None:
        """Keep at most ``max_jobs`` finished jobs in memory (their results stay in the cache)."""
        done = [k for k, j in self.jobs.items() if j["status"] in ("done", "failed")]
        for k in done[:max(0, len(done) - self.cfg.max_jobs)]:
            del self.jobs[k]

    async def _work(self, i: int) -> None:
        import ray
        while True:
            jid = await self.queue.get()
            self.waiting.set(self.queue.qsize())
            job = self.jobs.get(jid)
            if job is None or job["status"] != "queued":
                continue
            job.update(status="running", started=time.time(), worker=i)
            try:
                doc = await self.runners[i].run.remote(job["spec"])
                await asyncio.to_thread(self.cache.put, jid, doc)
                job.update(status="done", finished=time.time())
                self.finished.inc(tags={"outcome": "done"})
                log.info("render job %s done in %.1f s", jid, job["finished"] - job["started"])
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None) or e
                job.update(status="failed", finished=time.time(), error=str(cause).splitlines()[0][:300])
                self.finished.inc(tags={"outcome": "failed"})
                log.info("render job %s failed: %s", jid, job["error"])
            except ray.exceptions.RayActorError as e:  # killed (out of memory, a crash): a fresh worker
                job.update(status="failed", finished=time.time(),
                           error=f"the render worker died ({type(e).__name__}); submit the molecule again")
                ray.kill(self.runners[i], no_restart=True)
                self.runners[i] = self.runner_cls.remote(self.cfg.teacher)
                self.finished.inc(tags={"outcome": "failed"})
            except Exception as e:  # noqa: BLE001 (the cache could not be written: say so, keep the loop alive)
                job.update(status="failed", finished=time.time(), error=f"{type(e).__name__}: {e}"[:300])
                self.finished.inc(tags={"outcome": "failed"})
                log.warning("render job %s: %s", jid, job["error"])

    def _view(self, job: dict) -> dict:
        now = time.time()
        view = {"id": job["id"], "status": job["status"], "molecule": job["molecule"],
                "waited_s": round((job.get("started") or now) - job["submitted"], 1)}
        if job["status"] == "queued":
            ahead = [k for k, j in self.jobs.items() if j["status"] == "queued"]
            view["queue_position"] = ahead.index(job["id"]) + 1 if job["id"] in ahead else None
        if job.get("started"):
            view["elapsed_s"] = round((job.get("finished") or now) - job["started"], 1)
        if job.get("error"):
            view["error"] = job["error"]
        return view

    async def status(self, jid: str) -> dict | None:
        """A job's state; ``result`` once done (read from the cache); None for an id never seen."""
        job = self.jobs.get(jid)
        if job is None or job["status"] == "done":
            doc = await asyncio.to_thread(self.cache.get, jid)
            if doc is None:
                return None if job is None else {**self._view(job), "status": "failed",
                                                 "error": "the result is no longer in the cache"}
            return {**(self._view(job) if job else {"id": jid}), "status": "done", "result": doc}
        view = self._view(job)
        if job["status"] == "running":
            try:
                p = await asyncio.wait_for(self.runners[job["worker"]].progress.remote(), timeout=5)
                if p.get("job") == jid:
                    view.update(phase=p["phase"], detail=p["detail"], phase_s=round(time.time() - p["since"], 1))
            except Exception:  # noqa: BLE001 (progress is a courtesy: a slow or restarting worker has none)
                view.update(phase="running", detail="")
        return view


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class Ingress:
    """The HTTP routes; the predictor and the job table are reached through their handles."""

    def __init__(self, args: dict, predictor, jobs):
        self.cfg: ServeConfig = from_args(args)
        self.predictor, self.jobs = predictor, jobs
        self.limits = Limits(self.cfg.max_structures, self.cfg.max_atoms, self.cfg.max_smiles_chars)
        self.render_limits = dataclasses.replace(self.limits, max_structures=2,  # one, and whether there are more
                                                 max_atoms=min(self.cfg.render_max_atoms, self.cfg.max_atoms))
        self.page = PAGE.read_text(encoding="utf-8")
        self._card = None

    # ---------------------------------------------------------------- request plumbing
    def _auth(self, request: Request) -> None:
        if self.cfg.token_sha256 is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(401, "this service needs a bearer token: send 'Authorization: Bearer <token>'")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        if not hmac.compare_digest(digest, self.cfg.token_sha256):
            raise RequestError(401, "wrong bearer token")

    async def _body(self, request: Request, options: tuple[str, ...]) -> dict:
        """The checked request: JSON, or plain text with options in the query string."""
        self._auth(request)
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {int(declared)} bytes; this service takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body over {limit} bytes; this service takes at most {limit}")
            chunks.append(chunk)
        body = b"".join(chunks)
        if "json" in request.headers.get("content-type", "") or body.lstrip()[:1] in (b"{", b"["):
            data = json_body(body)  # JSON also without its content type (curl -d sends a form type)
        else:
            data = {**text_body(body), **{k: v for k, v in request.query_params.items() if k in options}}
        check_fields(data, options)
        return data

    async def _model(self) -> dict:
        if self.predictor is None:
            raise RequestError(503, "no model loaded: start the service with --model MODEL (edg export RUN --out "
                                    "MODEL)")
        if self._card is None:
            self._card = await self.predictor.card.remote()
        return self._card

    # ---------------------------------------------------------------- routes
    @api.get("/", response_class=HTMLResponse)
    async def page_(self):
        return HTMLResponse(self.page)

    @api.get("/v1/info")
    async def info(self, request: Request):
        self._auth(request)
        model = None
        if self.predictor is not None:
            m = await self._model()
            model = {"name": m["name"], "student": m["student"], "trained_on": m["card"].get("data", {}).get("dataset"),
                     "elements": m["card"].get("elements"), "units": m["units"]}
        return {"model": model,
                "teacher": self.cfg.teacher is not None, "basis": self.cfg.dft.basis,
                "basis_choices": list(dict.fromkeys((self.cfg.dft.basis, *self.cfg.basis_choices))),
                "image_size": self.cfg.render.image_size, "image_size_range": list(self.cfg.image_size_range),
                "limits": {"max_body_bytes": self.cfg.max_body_bytes, "max_structures": self.cfg.max_structures,
                           "max_atoms": self.cfg.max_atoms, "render_max_atoms": self.render_limits.max_atoms}}

    @api.get("/v1/model")
    async def model(self, request: Request):
        self._auth(request)
        return await self._model()

    @api.post("/v1/predict")
    async def predict(self, request: Request):
        t = time.monotonic()
        data = await self._body(request, ("units",))
        units = option(data, "units", "eV", str, ("eV", "kcal/mol"))
        card = await self._model()
        factor, answer_units = _units_factor(card["units"], units)
        mols = await asyncio.to_thread(structures, data, self.limits)
        n = self.cfg.max_batch_size
        chunks = [mols[i:i + n] for i in range(0, len(mols), n)]
        parts = await asyncio.gather(*(self.predictor.predict_chunk.remote([(m.z, m.pos) for m in c])
                                       for c in chunks))
        rows = []
        for m, p in zip(mols, (p for part in parts for p in part)):
            rows.append({"id": m.id, "formula": m.formula, "n_atoms": m.n_atoms,
                         "energy": None if p["energy"] is None else p["energy"] * factor,
                         "forces": None if p["forces"] is None else [[f * factor for f in row] for row in p["forces"]],
                         "verdict": p["verdict"]})
        log.info("predict: %d structures (%s) in %.1f ms", len(rows),
                 ", ".join(sorted({r["verdict"]["status"] for r in rows})), 1000 * (time.monotonic() - t))
        return {"units": answer_units, "structures": rows}

    @api.post("/v1/render")
    async def render(self, request: Request):
        from .jobs import basis_problem
        data = await self._body(request, ("basis", "image_size"))
        choices = list(dict.fromkeys((self.cfg.dft.basis, *self.cfg.basis_choices)))
        basis = option({k: (v.lower() if k == "basis" and isinstance(v, str) else v) for k, v in data.items()},
                       "basis", self.cfg.dft.basis, str, choices)
        lo, hi = self.cfg.image_size_range
        size = option(data, "image_size", self.cfg.render.image_size, int)
        if not lo <= size <= hi:
            raise RequestError(422, f"image_size {size} is outside {lo}..{hi} pixels")
        mols = await asyncio.to_thread(structures, data, self.render_limits)
        if len(mols) != 1:
            raise RequestError(422, "render takes one structure; the body holds more (send them one by one)")
        mol = mols[0]
        dft = self.cfg.dft if basis == self.cfg.dft.basis else dataclasses.replace(
            self.cfg.dft, basis=basis, basis_sulfur=basis)
        if problem := await asyncio.to_thread(basis_problem, dft.basis_for(mol.z), mol.z):
            raise RequestError(422, problem)
        render = dataclasses.replace(self.cfg.render, image_size=size)
        job = await self.jobs.submit.remote(mol, dft, render)
        log.info("render: %s (%d atoms, %s, %d px) -> job %s %s", mol.formula, mol.n_atoms, basis, size, job["id"],
                 job["status"])
        return JSONResponse({**job, "url": f"/v1/jobs/{job['id']}"},
                            status_code=200 if job["status"] == "done" else 202)

    @api.get("/v1/jobs/{job_id}")
    async def job(self, job_id: str, request: Request):
        from .jobs import is_job_id
        self._auth(request)
        if not is_job_id(job_id):
            raise RequestError(404, f"no job {job_id[:40]!r} (a job id is 32 hex digits, as POST /v1/render gives)")
        state = await self.jobs.status.remote(job_id)
        if state is None:
            raise RequestError(404, f"no job {job_id}: submit the molecule with POST /v1/render")
        return state


def build_app(args: dict | None = None):
    """The application for ``serve.run`` / ``serve deploy`` (``import_path: edg.serve.app:build_app``): its
    ``args`` are ``ServeConfig`` fields, checked before anything starts."""
    cfg = from_args(dict(args or {}))
    predictor = None
    if cfg.model:
        predictor = Predictor.options(
            num_replicas=cfg.predictor_replicas, max_ongoing_requests=max(100, 4 * cfg.max_batch_size),
            ray_actor_options={"num_cpus": cfg.predictor_cpus, "num_gpus": cfg.predictor_gpus}).bind(cfg.to_args())
    jobs = RenderJobs.bind(cfg.to_args())
    return Ingress.bind(cfg.to_args(), predictor, jobs)
