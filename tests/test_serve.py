"""``edg serve``: the real command on a private loopback Ray runtime, against ``edg predict``, ``edg dft`` +
``edg render``, bad input, the bearer token, the request log and the metrics; and the pieces it is made of (job
ids, the result cache, the deploy config) without a service."""
from __future__ import annotations

import dataclasses
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from edg.edg_core.readers import open_source
from serve_helpers import ETHANOL_TEST, ROOT, WATER_XYZ, Service, exported_model

TOKEN = "test-token-7f3a"


def _xyz(mols) -> str:
    """Extended XYZ text of ``mols`` with their ids (what a client sends)."""
    out = []
    for m in mols:
        out += [str(m.n_atoms), f"id={m.id}"]
        out += [f"{s} {x:.10f} {y:.10f} {w:.10f}" for s, (x, y, w) in zip(m.symbols, m.pos)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the pieces, without a service
def test_a_job_id_is_the_content_molecule_method_and_render_settings():
    from edg.serve.config import ServeConfig
    from edg.serve.jobs import RenderSpec
    from edg.serve.schemas import Limits, structures
    cfg = ServeConfig()
    limits = Limits(4, 50, 100)
    water = structures({"xyz": WATER_XYZ}, limits)[0]
    same = structures({"xyz": WATER_XYZ.replace("water", "id=other-name")}, limits)[0]
    jid = RenderSpec(water, cfg.dft, cfg.render).job_id()
    assert jid == RenderSpec(same, cfg.dft, cfg.render).job_id()  # the name is not the content
    assert jid == RenderSpec(water, dataclasses.replace(cfg.dft, backend="cpu", progress_s=9), cfg.render).job_id()
    moved = dataclasses.replace(water, pos=water.pos + np.array([0, 0, 0.01]))
    others = [RenderSpec(moved, cfg.dft, cfg.render),
              RenderSpec(water, dataclasses.replace(cfg.dft, basis="sto-3g"), cfg.render),
              RenderSpec(water, cfg.dft, dataclasses.replace(cfg.render, image_size=64)),
              RenderSpec(water, cfg.dft, cfg.render, teacher_digest="ab" * 32),
              RenderSpec(dataclasses.replace(water, charge=1, multiplicity=2), cfg.dft, cfg.render)]
    ids = {s.job_id() for s in others}
    assert len(ids) == len(others) and jid not in ids


@pytest.mark.parametrize("where", ["folder", "url"])
def test_the_result_cache_keeps_a_result_whole_in_a_folder_or_a_url(tmp_path, where):
    from edg.serve.jobs import ResultCache
    root = tmp_path / "cache" if where == "folder" else f"local://{tmp_path}/cache"
    cache = ResultCache(root)
    jid = "0123456789abcdef" * 2
    assert cache.get(jid) is None
    cache.put(jid, {"id": jid, "energies": {"E6": -76.4}})
    assert ResultCache(root).get(jid) == {"id": jid, "energies": {"E6": -76.4}}
    assert (tmp_path / "cache" / "01" / f"{jid}.json").is_file()
    (tmp_path / "cache" / "01" / f"{jid}.json").write_text("{not json")
    assert cache.get(jid) is None  # unreadable: computed again, never a 500
    assert cache.get("../../etc/passwd") is None


def test_the_shipped_deploy_config_is_a_serve_config_whose_args_build_the_app(tmp_path):
    import yaml
    from edg.cluster.cli import build_parser
    from edg.cluster.commands.serve import config_from
    from edg.serve.app import build_app
    from ray.serve.schema import ServeDeploySchema
    data = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    ServeDeploySchema.model_validate(data)
    app = data["applications"][0]
    assert app["import_path"] == "edg.serve.app:build_app" and data["http_options"]["host"] == "127.0.0.1"
    assert build_app(app["args"]) is not None  # every arg is a ServeConfig field of the right type
    argv = ["serve", "--config", str(ROOT / "configs" / "serve.yaml"), "--render-gpus", "1"]
    from edg.edg_core.errors import EDGError
    with pytest.raises(EDGError, match="--model /shared/edg/models/ethanol.pt2: no such file"):
        config_from(build_parser().parse_args(argv))  # refused here, not in a replica minutes later
    (tmp_path / "m.pt2").write_bytes(b"")
    cfg = config_from(build_parser().parse_args(argv + ["--model", str(tmp_path / "m.pt2")]))
    assert cfg.predictor_gpus == 0.25 and cfg.render_gpus == 1.0 and cfg.dft.time_limit_s == 900
    assert cfg.dft.basis == "6-31g**"  # the paper's method unless the file says otherwise
    from edg.edg_core.config import ConfigError
    with pytest.raises(ConfigError, match="max_batch_sise"):
        build_app({"max_batch_sise": 8})


# ---------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return exported_model(tmp_path_factory)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny teacher with seeded random weights, saved as training saves it (``teacher.pt``)."""
    import torch
    from edg.train.io.model_files import teacher_state
    from edg.train.models.teacher import TEACHER_PRESETS, Teacher
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher_state(Teacher(TEACHER_PRESETS["tiny"]).eval()), path)
    return path


@pytest.fixture(scope="module")
def service(model, teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    svc = Service(["--model", str(model[0]), "--teacher", str(teacher), "--cache", str(folder / "cache")],
                  folder / "serve.log", token=TOKEN)
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def test_predict_equals_edg_predict_for_ethanol_frames_one_request_or_many_concurrent(service, model, tmp_path):
    import ase.io
    from edg.cluster.cli import main
    mols = list(open_source(ETHANOL_TEST).molecules())
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--model", str(model[0]), "--input", ETHANOL_TEST, "--out", str(out)]) == 0
    frames = ase.io.read(out, index=":")
    e_ref = np.array([f.get_potential_energy() for f in frames])
    f_ref = [f.get_forces() for f in frames]

    status, answer = service.call("POST", "/v1/predict", {"xyz": _xyz(mols)})
    assert status == 200, answer
    assert answer["units"] == {"energy": "eV", "forces": "eV/Å"}
    rows = answer["structures"]
    assert [r["id"] for r in rows] == [m.id for m in mols]
    assert [r["verdict"]["status"] for r in rows] == ["in"] * len(mols)  # its own training distribution
    np.testing.assert_allclose([r["energy"] for r in rows], e_ref, atol=1e-4, rtol=0)
    for r, f in zip(rows, f_ref):
        np.testing.assert_allclose(np.array(r["forces"]), f, atol=1e-4, rtol=0)

    # eight clients at once, one frame each: batched together by the predictor, the same answers
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: service.call("POST", "/v1/predict", _xyz([mols[i % len(mols)]]),
                                                       content_type="chemical/x-xyz"), range(8)))
    for i, (status, a) in enumerate(answers):
        assert status == 200, a
        assert abs(a["structures"][0]["energy"] - e_ref[i % len(mols)]) <= 1e-4

    status, kcal = service.call("POST", "/v1/predict", {"xyz": _xyz(mols[:1]), "units": "kcal/mol"})
    from edg.edg_core.units import KCAL_PER_MOL_IN_EV
    assert status == 200 and kcal["units"]["energy"] == "kcal/mol"
    assert kcal["structures"][0]["energy"] * KCAL_PER_MOL_IN_EV == pytest.approx(e_ref[0], abs=1e-4)


def test_benzene_is_flagged_out_of_the_ethanol_models_domain(service):
    status, answer = service.call("POST", "/v1/predict", {"smiles": ["c1ccccc1", "CCO"]})
    assert status == 200, answer
    benzene, ethanol = answer["structures"]
    assert benzene["formula"] == "C6H6" and benzene["verdict"]["status"] != "in"
    assert benzene["verdict"]["reasons"] and all(isinstance(r, str) for r in benzene["verdict"]["reasons"])
    assert ethanol["formula"] == "C2H6O" and ethanol["n_atoms"] == 9


def test_render_of_water_gives_the_images_energies_and_targets_of_edg_dft_render_extract(service, teacher, tmp_path):
    from edg.cluster.cli import main
    from edg.dft.result import load_result
    from edg.dft.worker import result_files
    from edg.edg_core.shards import decode_images_u8, iter_shard
    from edg.serve.jobs import png_array
    status, job = service.call("POST", "/v1/render", {"xyz": WATER_XYZ})
    assert status == 202 and job["status"] in ("queued", "running", "done"), job
    state, seen = service.wait_job(job["id"])
    assert state["status"] == "done", state
    assert all(s["status"] in ("queued", "running") for s in seen)
    r = state["result"]
    assert r["molecule"]["formula"] == "H2O" and r["basis"] == "6-31g**" and "b3lyp" in r["method"]
    assert [v["view"] for v in r["images"]["ed"]] == ["x,0", "x,180", "x,90", "x,-90", "y,90", "y,-90"]
    assert len(r["images"]["structure"]) == 4
    e = r["energies"]
    assert e["E2"] + e["E3"] + e["E4"] + e["E5"] == pytest.approx(e["E6"], abs=1e-8)

    # the same molecule through the batch commands
    (tmp_path / "water.xyz").write_text(WATER_XYZ)
    assert main(["dft", "--input", str(tmp_path / "water.xyz"), "--out", str(tmp_path / "dft")]) == 0
    assert main(["render", "--fields", str(tmp_path / "dft"), "--out", str(tmp_path / "render")]) == 0
    ref = load_result(result_files(tmp_path / "dft")[0])
    for k, v in ref.energies.items():
        assert e[k] == pytest.approx(v, abs=1e-6), k
    sample = next(iter_shard(tmp_path / "render" / "render-000000.tar"))
    ed = decode_images_u8(sample["edimg.u8z"], "u8z")  # (6, 4, H, W): RGB + depth, 255 = background
    st = decode_images_u8(sample["stimg.u8z"], "u8z")
    for view, ref_img in zip(r["images"]["ed"], ed):
        mine = png_array(view["fourth_png"])
        assert mine.shape == ref_img[3].shape
        silhouette, ref_silhouette = mine < 255, ref_img[3] < 255
        assert silhouette.sum() > 500  # a real molecule, not an empty frame
        assert (silhouette != ref_silhouette).sum() == 0, view["view"]
        assert np.abs(png_array(view["png"]).astype(int) - ref_img[:3].transpose(1, 2, 0)).max() <= 2
    for view, ref_img in zip(r["images"]["structure"], st):
        assert np.array_equal(png_array(view["png"]), ref_img.transpose(1, 2, 0))
    # the teacher's targets: what edg extract stores for the same structure images
    assert main(["extract", "teacher-targets", "--teacher", str(teacher), "--shards", str(tmp_path / "render"),
                 "--out", str(tmp_path / "targets.npz")]) == 0
    targets = np.load(tmp_path / "targets.npz")
    for k in ("fs", "edp"):
        assert len(r["teacher"][k]) == targets[k].shape[1]
        np.testing.assert_allclose(r["teacher"][k], targets[k][0], rtol=1e-4, atol=1e-5)

    # a repeated molecule answers at once: done in the submit answer, the same result
    status, again = service.call("POST", "/v1/render", {"xyz": WATER_XYZ.replace("water", "again")})
    assert status == 200 and again["status"] == "done" and again["id"] == job["id"]
    assert service.call("GET", f"/v1/jobs/{job['id']}")[1]["result"] == r


def test_render_reports_progress_and_smaller_settings_are_a_new_job(service):
    status, job = service.call("POST", "/v1/render", {"smiles": "[H][H]", "basis": "STO-3G", "image_size": 48})
    assert status == 202, job
    state, seen = service.wait_job(job["id"])
    assert state["status"] == "done", state
    r = state["result"]
    assert r["basis"] == "sto-3g" and r["render"]["image_size"] == 48
    assert png_array_shape(r["images"]["ed"][0]["png"]) == (48, 48, 3)
    assert r["molecule"]["smiles"] == "[H][H]" and r["molecule"]["formula"] == "H2"
    running = [s for s in seen if s["status"] == "running"]
    assert all(s.get("phase") in ("dft", "render", "teacher", "running", "idle") for s in running)


def png_array_shape(text):
    from edg.serve.jobs import png_array
    return png_array(text).shape


BAD = [
    ("/v1/predict", {"smiles": "C1CC"}, 400, "invalid SMILES"),
    ("/v1/predict", {"smiles": "C(C"}, 400, "invalid SMILES"),
    ("/v1/predict", "3\nx\nXx 0 0 0\nH 0 0 1\nH 0 1 0\n", 400, "unknown element symbol 'Xx'"),
    ("/v1/predict", "3\nx\nO 0 0 0\nH 0 0 1\n", 400, "unreadable XYZ"),
    ("/v1/predict", {"xyz": "2\nx\nH 0 0 0\nH 0 0 nan\n"}, 400, "non-finite"),
    ("/v1/predict", b"\xff\xfe\x00", 400, "not UTF-8"),
    ("/v1/predict", {"smiles": "CCO", "xyz": "1\nx\nH 0 0 0\n"}, 400, "exactly one"),
    ("/v1/predict", {"smiles": "CCO", "unit": "eV"}, 400, "unknown field 'unit'"),
    ("/v1/predict", {"smiles": "CCO", "units": "hartree"}, 422, "units 'hartree' is not offered"),
    ("/v1/predict", {"smiles": ["CCO"] * 300}, 413, "at most 256"),
    ("/v1/predict", {"smiles": "C" * 170}, 422, "atoms with hydrogens"),
    ("/v1/predict", [1, 2], 400, "JSON object"),
    ("/v1/predict", b'{"smiles": "CCO"', 400, "not JSON"),
    ("/v1/predict", '{"smiles": "CCO"', 400, "not JSON"),  # JSON sent as text/plain is still read as JSON
    ("/v1/predict", "x" * (1 << 21), 413, "at most 1048576"),
    ("/v1/render", {"smiles": ["CCO", "CC"]}, 422, "one structure"),
    ("/v1/render", {"smiles": "CCO", "basis": "cc-pv5z"}, 422, "not offered here"),
    ("/v1/render", {"smiles": "CCO", "image_size": 5000}, 422, "outside"),
    ("/v1/render", {"smiles": "CCO", "image_size": "big"}, 400, "must be an integer"),
    ("/v1/render", {"smiles": "CCCCCCCCCCCCCCC"}, 422, "at most 40"),
    ("/v1/render", {"xyz": "1\ncharge=-3\nH 0 0 0\n"}, 400, "impossible charge"),
    ("/v1/render", {"xyz": "3\nLattice=\"5 0 0 0 5 0 0 0 5\"\nO 0 0 0\nH 0 0 1\nH 0 1 0\n"}, 400, "periodic"),
    ("/v1/render", {"xyz": "1\nx\nKr 0 0 0\n"}, 422, "no functions for Kr"),
    ("/v1/jobs/xyz", None, 404, "32 hex digits"),
    ("/v1/jobs/" + "0" * 32, None, 404, "submit the molecule"),
    ("/v1/nothing", None, 404, "no such path"),
]


@pytest.mark.parametrize("path, body, code, text", BAD, ids=[f"{p}:{t}" for p, _, _, t in BAD])
def test_bad_input_is_a_4xx_json_answer_of_one_line(service, path, body, code, text):
    content_type = "application/json" if isinstance(body, bytes) and body.startswith(b"{") else None
    status, answer = service.call("GET" if body is None else "POST", path, body, content_type=content_type)
    assert status == code, answer
    assert list(answer) == ["error"] and text in answer["error"]
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"] and len(answer["error"]) <= 300


def test_the_api_needs_the_bearer_token_and_the_page_is_self_contained(service):
    assert service.call("POST", "/v1/predict", {"smiles": "CCO"}, token=None) == (
        401, {"error": "this service needs a bearer token: send 'Authorization: Bearer <token>'"})
    assert service.call("GET", "/v1/info", token="wrong")[0] == 401
    assert service.call("GET", "/v1/info")[0] == 200
    with urllib.request.urlopen(service.url + "/", timeout=60) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
        page = r.read().decode()
    assert "/v1/render" in page and "<script>" in page
    # nothing fetched from elsewhere: no external script, style, font or image
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", page) and "@import" not in page


def test_request_lines_reach_the_replica_log_and_serve_metrics_the_metrics_endpoint(service):
    status, _ = service.call("POST", "/v1/predict", {"smiles": "CCO"})
    assert status == 200
    logs = service.ray_folder() / "session_latest" / "logs" / "serve"
    deadline, text = time.monotonic() + 120, ""
    while time.monotonic() < deadline and "predict: 1 structures" not in text:
        text = "".join(p.read_text(errors="replace") for p in logs.glob("replica_edg_Ingress_*.log"))
        time.sleep(0.5)
    assert "predict: 1 structures" in text and "render: H2O" in text
    port = re.search(r"Ray metrics \(Prometheus text\) at http://127\.0\.0\.1:(\d+)/metrics", service.output())
    assert port, service.output()[-2000:]
    deadline, found = time.monotonic() + 300, {}
    want = ("ray_serve_num_http_requests_total", "ray_edg_serve_structures_total", "ray_edg_serve_render_jobs_total")
    while time.monotonic() < deadline and len(found) < len(want):  # exported every few seconds
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=30).read().decode()
        found = {w for w in want if re.search(rf"^{w}\{{", metrics, re.M)}
        time.sleep(1)
    assert found == set(want)


def test_ctrl_c_stops_the_service_and_its_private_ray_runtime(service):
    folder = service.ray_folder()
    assert folder.is_dir()
    assert service.stop() == 0
    out = service.output()
    assert "edg serve: stopping" in out and "edg serve: stopped" in out
    assert not folder.exists()  # the private runtime's session folder (and its token) are gone
