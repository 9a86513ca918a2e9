"""Stage report on a tiny linear-generator chain: the page, its tables, and a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from stages import (
    cluster,
    decompose,
    evaluate,
    faces,
    factorize,
    preview,
    regress,
    report,
    sample_latents,
    train_gan,
    train_oracle,
    train_recon,
)
from support.params import parse_params

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every stage on tiny params in a data/ folder laid out as dvc.yaml does, then the report."""
    from tests.conftest import tiny_linear_params

    d = tmp_path_factory.mktemp("report") / "data"
    p = tiny_linear_params(
        preview={"grid": 4, "scale": 1},
        gan={"w_dim": 32},
        latents={"n": 96, "chunk": 32, "batch_size": 32},
        oracle={"epochs": 1, "batch_size": 16, "width": 4},
        evaluate={"n_samples": 64, "edit_samples": 8, "peers_k": 2, "batch_size": 64, "ganspace_samples": 2000},
        factorize={"components": 6, "iters": 20, "edit_components": 2, "edit_steps": 3, "min_norm": 0.0},
        report={"directions": ["yaw", "light_x"], "seeds": [0], "steps": 3},
    )
    m = d / "metrics"
    faces.run(p, d / "faces.zarr", d / "faces_report.csv", m / "faces.json")
    preview.run(p, d / "faces.zarr", d / "previews" / "faces.png")
    train_gan.run(p, d / "faces.zarr", d / "gan", d / "gan_run", m / "gan.json")
    gen = d / "gan" / "generator.safetensors"
    sample_latents.run(p, gen, d / "latents.zarr")
    train_oracle.run(p, d / "faces.zarr", d / "oracle", m / "oracle.json")
    train_recon.run(p, gen, d / "faces.zarr", d / "recon", d / "recon_run", m / "recon.json")
    decompose.run(p, d / "recon" / "decomposer.safetensors", d / "latents.zarr", d / "semantics.zarr")
    regress.run(p, d / "latents.zarr", d / "semantics.zarr", d / "directions.zarr", m / "regress.json")
    factorize.run(
        p, d / "directions.zarr", d / "latents.zarr", gen, d / "components.zarr", d / "factorize", m / "factorize.json"
    )
    cluster.run(p, d / "components.zarr", d / "clusters", m / "cluster.json")
    evaluate.run(
        p, gen, d / "oracle", d / "directions.zarr", d / "evaluate", m / "evaluate.json", d / "components.zarr"
    )
    result = report.run(p, d, d / "report")
    return d, result


def test_report_holds_every_section_table_and_figure(built):
    d, result = built
    page = (d / "report" / "index.html").read_text()
    assert result["missing"] == 0, re.findall(r'class="missing">([^<]*)', page)
    for title in (
        "What was run",
        "Table 1",
        "3D decomposition",
        "Univariate manipulations",
        "Table 2, extended",
        "Localized components",
    ):
        assert title in page
    # all embedded figures: samples, curves, recon panel + scatter, edits, maps, dendrogram, supports, comp edits
    assert page.count('<img src="data:image/png;base64,') >= 9
    assert "Linear generator: cosine" in page and "interfacegan" in page
    assert "Pearson r of each view and light estimate with the truth on rendered faces" in page  # recon.json estimate_r
    assert (d / "report" / "univariate_edits.png").is_file()
    times = report.stage_times({}, ["preview", "sample_latents", "decompose"], d)["seconds"]
    assert times.isna().tolist() == [True, False, False] and (times.dropna() > 0).all()  # from the stores' attrs
    summary = (d / "report" / "summary.md").read_text()
    assert "## Table 2 (diagonal)" in summary and "| yaw |" in summary


def test_report_names_missing_inputs(built, tmp_path):
    d, _ = built
    partial = tmp_path / "data"
    shutil.copytree(d, partial)
    (partial / "clusters" / "dendrogram.png").unlink()
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["report"]["directions"] = ["yaw"]
    params = parse_params(raw)
    result = report.run(params, partial, partial / "report")
    assert result["missing"] == 1 and "dendrogram.png" in (partial / "report" / "index.html").read_text()


def test_report_is_self_contained(built):
    """No external URL: every image is embedded, no script, style or link is fetched."""
    d, _ = built
    page = (d / "report" / "index.html").read_text()
    assert re.findall(r'(?:src|href)\s*=\s*["\'](?!data:|#)([^"\']+)', page) == []
    assert re.findall(r"https?://", page) == [] and "@import" not in page and "url(" not in page


def test_report_states_the_decomposition_verdict_first(built, tmp_path):
    d, _ = built
    data = tmp_path / "data"
    shutil.copytree(d, data)
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"], raw["report"]["directions"] = "cpu", ["yaw"]
    recon_json = data / "metrics" / "recon.json"
    recon = json.loads(recon_json.read_text())

    def section(verdict: dict) -> str:
        """The report's 3D section, up to its first figure, for recon.json with ``verdict``."""
        recon_json.write_text(json.dumps({**recon, **verdict}))
        report.run(parse_params(raw), data, data / "report")
        page = (data / "report" / "index.html").read_text()
        part = page[page.index("3D decomposition (Fig. 2 and 5)</h2>") :]
        return part[: part.index("<figure")]

    healthy = section({"degenerate": False, "degenerate_reasons": [], "recoveries": [], "exported_step": 2000})
    assert "Verdict: healthy" in healthy and "exported step 2000" in healthy and 'class="warning"' not in healthy
    head = section(
        {
            "degenerate": True,
            "degenerate_reasons": ["hollow face: r = -0.6"],
            "recoveries": [{"step": 750, "reasons": ["loss diverged"], "restart_step": 500, "seed": 1000}],
        }
    )
    assert '<p class="warning">DEGENERATE decomposition: hollow face: r = -0.6.' in head
    assert "Collapse at step 750 (loss diverged); training restarted from step 500 with seed 1000." in head


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("FACESEM_REQUIRE_BROWSER"),
    reason="no chromium here (make test installs Debian's chromium and requires it)",
)
def test_report_loads_in_headless_chromium_with_no_broken_image(built, tmp_path):
    assert CHROMIUM, "chromium is required (FACESEM_REQUIRE_BROWSER is set) but not installed"
    d, _ = built
    common = BROWSER_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]

    def broken_images(page) -> str:
        dom = subprocess.run(
            [CHROMIUM, *common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
        )
        match = re.search(r'data-broken-images="(\d+)"', dom.stdout)
        assert match, f"the page's load check did not run:\n{dom.stderr[-2000:]}"
        return match.group(1)

    # negative control: the same page with one image's data cut must count exactly one broken image
    page = (d / "report" / "index.html").read_text()
    start = page.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    control = tmp_path / "broken.html"
    control.write_text(page[:start] + "AAAA" + page[page.index('"', start) :])
    assert broken_images(control) == "1"
    assert broken_images(d / "report" / "index.html") == "0"
    url = (d / "report" / "index.html").as_uri()
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *common, f"--screenshot={shot}", "--window-size=1200,1600", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and len(set(im.convert("L").getdata())) > 10  # not a blank page


def test_report_states_entangled_directions_a_hollow_face_and_a_flat_dendrogram(built, tmp_path):
    d, _ = built
    data = tmp_path / "data"
    shutil.copytree(d, data)
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"], raw["report"]["directions"] = "cpu", ["yaw"]
    ev_json, cl_json = data / "metrics" / "evaluate.json", data / "metrics" / "cluster.json"
    rec_json = data / "metrics" / "recon.json"
    ev, cl, rec = (json.loads(p.read_text()) for p in (ev_json, cl_json, rec_json))
    rec_json.write_text(json.dumps({**rec, "hollow_face": True, "yaw_corr": -0.4}))
    ev_json.write_text(json.dumps({**ev, "entangled": {"roll": {"moves_more": "yaw", "other": 0.51, "own": 0.23}}}))
    cl_json.write_text(
        json.dumps(
            {**cl, "cos_within_region": 0.1, "cos_across_region": 0.09, "purity": 0.5, "purity_one_cluster": 0.5}
        )
    )
    report.run(parse_params(raw), data, data / "report")
    page = (data / "report" / "index.html").read_text()
    assert "Entangled directions (1 of 14): roll moves yaw more than roll (0.51 vs 0.23" in page
    assert "Flat dendrogram" in page and "no better than putting every component in one cluster" in page
    assert "Hollow face: the estimated yaw is anti-correlated with the true one (r = -0.40)" in page
    ev_json.write_text(json.dumps({**ev, "entangled": {}}))  # a negative control: nothing stated when nothing is wrong
    rec_json.write_text(json.dumps({**rec, "hollow_face": False, "yaw_corr": 0.4}))
    cl_json.write_text(
        json.dumps({**cl, "cos_within_region": 0.4, "cos_across_region": 0.1, "purity": 0.8, "purity_one_cluster": 0.5})
    )
    report.run(parse_params(raw), data, data / "report")
    page = (data / "report" / "index.html").read_text()
    assert "Entangled directions" not in page and "Flat dendrogram" not in page and "no better than" not in page
    assert "Hollow face" not in page


def test_edit_rows_reach_target_stds_and_leave_out_entangled_directions():
    from stages.report import edit_ranges
    from tests.conftest import make_params

    params = make_params(report={"directions": ["yaw", "pitch", "roll"], "scale": 8.0, "target_stds": 2.0}).report
    evaluation = {
        "edit": {
            "yaw": {"target_std_per_s": 1.0},
            "pitch": {"target_std_per_s": 0.1},
            "roll": {"target_std_per_s": 0.5},
        },
        "entangled": {"roll": {"moves_more": "yaw", "other": 0.6, "own": 0.5}},
    }
    ranges, left_out = edit_ranges(params, evaluation)
    assert ranges == {"yaw": 2.0, "pitch": 8.0}  # 2 stds at 1 std per s; pitch capped at report.scale
    assert "moves yaw more than roll" in left_out["roll"]
    fixed, none_left = edit_ranges(params.model_copy(update={"target_stds": None}), evaluation)
    assert fixed == {"yaw": 8.0, "pitch": 8.0, "roll": 8.0} and none_left == {}
    assert edit_ranges(params, {})[0] == {"yaw": 8.0, "pitch": 8.0, "roll": 8.0}  # before evaluate ran
    every = {
        "edit": evaluation["edit"],
        "entangled": {n: evaluation["entangled"]["roll"] for n in ("yaw", "pitch", "roll")},
    }
    drawn, flagged = edit_ranges(params, every)  # all entangled: all drawn, all flagged
    assert set(drawn) == {"yaw", "pitch", "roll"} and all("drawn anyway" in v for v in flagged.values())
