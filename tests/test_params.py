import pytest
import yaml

from pipeline.params import ParamsError, Params, load_params, parse_params


def test_repo_params_file_is_valid(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert params.data.source in ("synthetic", "folder")
    # the shipped file states every key explicitly: nothing falls back silently
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields)
    for section, values in raw.items():
        if isinstance(values, dict):
            assert set(values) == set(Params.model_fields[section].annotation.model_fields), section


@pytest.mark.parametrize("raw, fragments", [
    ({"data": {"resolution": 8}}, ["data.resolution", "greater than or equal to 16", "8"]),
    ({"data": {"n_images": "many"}}, ["data.n_images", "'many'"]),
    ({"data": {"sorce": "folder"}}, ["data.sorce", "unknown key", "source"]),
    ({"data": {"pose": "side"}}, ["data.pose", "'frontal' or 'wide'"]),
    ({"nonsense": 1}, ["nonsense", "unknown key", "data"]),
    ({"device": "tpu"}, ["device", "tpu"]),
])
def test_bad_params_name_the_key(raw, fragments):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ParamsError) as info:
        parse_params({"data": {"resolution": 1, "pose": "x"}})
    assert "data.resolution" in str(info.value) and "data.pose" in str(info.value)


def test_section_hash_tracks_only_its_section():
    a = parse_params({})
    b = parse_params({"preview": {"grid": 4}})
    c = parse_params({"data": {"seed": 1}})
    assert a.section_hash("data") == b.section_hash("data")
    assert a.section_hash("data") != c.section_hash("data")
    assert a.section_hash("preview") != b.section_hash("preview")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
