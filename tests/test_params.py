import pytest
import yaml

from support.params import Params, ParamsError, load_params, parse_params
from tests.conftest import make_params


def test_repo_params_file_is_valid(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert params.data.source in ("synthetic", "folder")
    # the shipped file states every key explicitly: nothing falls back silently
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)
    for section, values in raw.items():
        if isinstance(values, dict):
            assert set(values) == set(Params.model_fields[section].annotation.model_fields), section


@pytest.mark.parametrize(
    "raw, fragments",
    [
        ({"data": {"resolution": 8}}, ["data.resolution", "greater than or equal to 16", "8"]),
        ({"data": {"n_images": "many"}}, ["data.n_images", "'many'"]),
        ({"data": {"sorce": "folder"}}, ["data.sorce", "unknown key", "source"]),
        ({"data": {"pose": "side"}}, ["data.pose", "'frontal' or 'wide'"]),
        ({"nonsense": 1}, ["nonsense", "unknown key", "data"]),
        ({"device": "tpu"}, ["device", "tpu"]),
    ],
)
def test_bad_params_name_the_key(raw, fragments):
    with pytest.raises(ParamsError) as info:
        make_params(**raw)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ParamsError) as info:
        make_params(**{"data": {"resolution": 1, "pose": "x"}})
    assert "data.resolution" in str(info.value) and "data.pose" in str(info.value)


def test_section_hash_tracks_only_its_section():
    a = make_params()
    b = make_params(**{"preview": {"grid": 4}})
    c = make_params(**{"data": {"seed": 1}})
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("data") != c.section_hash("data")
    assert a.section_hash("preview") != b.section_hash("preview")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ every key is checked before any work

import typing  # noqa: E402

from pydantic import BaseModel  # noqa: E402

# resolution-like keys the networks do not need as powers of 2 (and why)
RESOLUTION_EXEMPT = {"data.resolution": "faces are area / bilinear resized to gan.resolution and recon.resolution"}


def _keys():
    """(dotted key, field) of every leaf of the schema."""
    for section, field in Params.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            for key, sub in field.annotation.model_fields.items():
                yield f"{section}.{key}", sub
        else:
            yield section, field


def _holds(annotation, kind) -> bool:
    """Does a type annotation accept values of `kind` (float inside Optional / Annotated / dict / list)?"""
    if annotation is kind:
        return True
    return any(_holds(a, kind) for a in typing.get_args(annotation))


def _raw(key, value):
    section, _, leaf = key.partition(".")
    return {section: {leaf: value}} if leaf else {section: value}


@pytest.mark.parametrize("key", [k for k, f in _keys() if _holds(f.annotation, float)])
def test_every_float_key_refuses_non_finite_values(key):
    per_stage = typing.get_origin(dict(_keys())[key].annotation) is dict  # flow.stage_timeouts: {stage: s}
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            make_params(**_raw(key, {"faces": bad} if per_stage else bad))


@pytest.mark.parametrize("key", [k for k, _ in _keys() if k.endswith("resolution") and k not in RESOLUTION_EXEMPT])
def test_every_network_resolution_must_be_a_power_of_two(key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.") + ".*power of 2"):
        make_params(**_raw(key, 48))
    make_params(**_raw(key, 64))


def test_kimg_inf_is_refused_before_training():
    with pytest.raises(ParamsError, match=r"gan\.kimg: Input should be a finite number"):
        make_params(**{"gan": {"kimg": float("inf")}})


def test_names_must_exist():
    with pytest.raises(ParamsError, match=r"report\.directions.*unknown direction\(s\) \['pich'\].*'pitch'"):
        make_params(**{"report": {"directions": ["yaw", "pich"]}})
    with pytest.raises(ParamsError, match=r"flow\.stage_retries.*unknown stage\(s\) \['train_gam'\]"):
        make_params(**{"flow": {"stage_retries": {"train_gam": 1}}})


def test_a_missing_key_is_named_and_nothing_falls_back():
    from tests.conftest import params_dict

    raw = params_dict()
    del raw["gan"]["init"], raw["recon"]
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert "gan.init: missing" in str(info.value) and "recon: missing" in str(info.value)
