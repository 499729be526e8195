"""scripts/atypical_check.py on the tiny test model: a corpus laid out like ../shared/data, made here."""
import json
import shutil

import numpy as np
import pytest

from covid_cxr.data import images
from covid_cxr.serving import predict, testing

binary_model = testing.tiny_model_fixture()
dense_model = testing.tiny_model_fixture(conv=False)

COHEN_HEADER = "patientid,view,modality,folder,filename,finding\n"


@pytest.fixture(scope="module")
def atypical_check(load_script):
    return load_script("atypical_check")


def _film(path, seed):
    rng = np.random.default_rng(seed)
    path.write_bytes(images.encode_png(rng.integers(40, 200, (48, 48), dtype=np.uint8)))


def _corpus(root):
    cohen = root / "cohen-covid-chestxray"
    (cohen / "images").mkdir(parents=True)
    rows = [("1", "", "CT", "ct1.png"), ("2", "", "CT", "ct2.png"), ("3", "L", "X-ray", "lat.png"),
            ("4", "PA", "X-ray", "frontal.png")]
    (cohen / "metadata.csv").write_text(COHEN_HEADER + "".join(f"{p},{v},{m},images,{f},COVID-19\n" for p, v, m, f in rows))
    for i, (*_, name) in enumerate(rows):
        _film(cohen / "images" / name, i)
    kermany = root / "chest-xray-pneumonia" / "test" / "NORMAL"
    kermany.mkdir(parents=True)
    _film(kermany / "IM-1.jpeg", 9)
    (root / "chest-xray-pneumonia" / "test" / "NORMAL" / "IM-2.jpeg").write_bytes(b"not an image")
    return root


def test_sets_are_scored_through_the_served_flag(atypical_check, binary_model, tmp_path, capsys):
    shared = _corpus(tmp_path / "shared")
    sets = atypical_check.corpus_sets(str(shared))
    assert {name: len(files) for name, files in sets.items()} == {
        "Cohen CT slices": 2, "Cohen lateral films": 1, "Kermany paediatric normal": 2}  # the frontal film is not a set
    assert atypical_check.main(["--model", binary_model.serving_dir, "--shared", str(shared), "--json"]) == 0
    rows = {row["set"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["Kermany paediatric normal"]["n"] == 1 and rows["Kermany paediatric normal"]["refused_or_unreadable"] == 1
    # The counts are the served flag's, recomputed here through predict's own path.
    model = predict.load_model(binary_model.serving_dir)
    pngs = [predict.prepare(f) for f in sets["Cohen CT slices"]]
    flagged = int(model.predict_images(pngs)["atypical"].sum())
    assert rows["Cohen CT slices"]["atypical"] == {**rows["Cohen CT slices"]["atypical"], "k": flagged, "n": 2}
    # Pictures with no chest in them are flagged (the tiny model's check was fitted on synthetic films).
    for name in ("uniform noise", "smooth ramps"):
        assert rows[name]["n"] == atypical_check.SYNTHETIC_COUNT and rows[name]["atypical"]["value"] >= 0.5
    assert atypical_check.main(["--model", binary_model.serving_dir, "--shared", str(tmp_path / "absent")]) == 0
    printed = capsys.readouterr().out
    assert "| uniform noise | 8 | 0 |" in printed and "Cohen" not in printed


def test_a_model_without_the_check_or_no_model_is_one_line(atypical_check, binary_model, dense_model, tmp_path):
    with pytest.raises(SystemExit, match="exported without the atypical-input check"):
        atypical_check.main(["--model", dense_model.serving_dir, "--shared", str(tmp_path)])
    with pytest.raises(SystemExit, match="^atypical_check: .*nowhere.* does not exist$"):
        atypical_check.main(["--model", str(tmp_path / "nowhere"), "--shared", str(tmp_path)])
    # A hand-edited metadata asset whose curation settings cannot be repeated.
    edited = tmp_path / "edited"
    shutil.copytree(binary_model.model_dir, edited)
    asset = edited / "assets" / "covid_cxr.json"
    asset.write_text(json.dumps(dict(json.loads(asset.read_text()), curation={"max_side": "huge"})))
    with pytest.raises(SystemExit, match="^atypical_check: the model's metadata records curation settings that cannot be repeated"):
        atypical_check.main(["--model", str(edited), "--shared", str(tmp_path)])
