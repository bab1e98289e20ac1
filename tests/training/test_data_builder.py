"""`medplib build-data`: output validates against the MeCoVQA format and every fact matches the labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medplib_runtime.cli import main
from medplib_runtime.data.builder import BuildConfig, assign_splits, build_dataset
from medplib_runtime.data.cases import CaseSpec, load_cases
from medplib_runtime.data.mecovqa import load_masks, read_dataset, read_png
from medplib_runtime.data.regions import freeform_subregion, point_square
from medplib_runtime.data.sources import write_phantom_case
from medplib_runtime.errors import InputError
from medplib_runtime.imaging.io import Volume, read_volume, write_labels, write_volume

ROOT = Path(__file__).resolve().parents[2]
CFG = BuildConfig(seed=3, max_slices_per_volume=4, empty_slices_per_volume=1)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[CaseSpec]:
    src = tmp_path_factory.mktemp("src")
    return [write_phantom_case(src, i, modality=m, shape=(12, 64, 64)) for i in range(2) for m in ("CT", "MR")]


@pytest.fixture(scope="module")
def built(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds")
    return build_dataset(phantoms, out, CFG), out


def _records(out: Path):
    return {s: read_dataset(out / f"{s}.json") for s in ("train", "val", "test")}


def test_output_validates_and_splits_by_volume(built, phantoms):
    report, out = built
    sets = _records(out)  # read_dataset checks the shape of every record and that every file exists
    assert sum(len(d) for d in sets.values()) == sum(c["records"] for c in report.counts.values()) > 0
    case_split = {}
    for split, ds in sets.items():
        for rec in ds.records:
            assert rec.extra["split"] == split
            assert case_split.setdefault(rec.extra["case"], split) == split  # a volume never spans splits
            assert rec.to_json()["conversations"][0]["value"].startswith("<image>\n")
            image = read_png(out / rec.image)
            region, masks = load_masks(rec, out, image.shape)  # shapes checked against the image
            assert (region is not None) == bool(rec.turns[0].region_paths)
            assert len(masks) == rec.turns[0].answer.count("<SEG>")
    assert set(case_split) == {c.id for c in phantoms}
    assert {s for s in case_split.values()} >= {"train", "test"}  # each modality (2 volumes) gives one to test
    for qt in ("G", "R", "C"):
        assert sum(c[qt] for c in report.counts.values()) > 0
    names = {p.name for p in (out / "images").iterdir()}
    assert all(re.fullmatch(r"(ct|mr)_00--phantom--phantom(ct|mr)\d\d--z_\d{4}\.png", n) for n in names)


def test_facts_match_the_labels(built, phantoms):
    _, out = built
    by_id = {c.id: c for c in phantoms}
    checked = set()
    for ds in _records(out).values():
        for rec in ds.records:
            case = by_id[rec.extra["case"]]
            img, lab = read_volume(case.image), read_volume(case.label)
            labels, k, f = np.asarray(lab.array), rec.extra["slice"], rec.extra["facts"]
            ids = {v: key for key, v in case.labels.items()}
            topic, answer = rec.extra["topic"], rec.turns[0].plain_answer
            if topic == "volume":  # stated volume = voxel count × spacing product / 1000
                voxels = int((labels == ids[f["name"]]).sum())
                assert f["voxels"] == voxels
                assert f["volume_ml"] == pytest.approx(voxels * np.prod(img.spacing) / 1000.0, rel=1e-12)
                assert answer == f"{f['volume_ml']:.2f} mL"
            elif topic == "area":
                pixels = int((labels[k] == ids[f["name"]]).sum())
                assert f["pixels"] == pixels and answer == f"{pixels * img.spacing[1] * img.spacing[2]:.1f} mm²"
            elif topic == "presence":
                present = bool((labels[k] == ids[f["name"]]).any())
                assert answer == ("yes" if present else "no")
            elif topic == "laterality":  # identity direction: larger x index = patient's left (LPS +x)
                cx = np.argwhere(labels[k] == ids[f["name"]])[:, 1].mean()
                offset = (cx - (labels.shape[2] - 1) / 2) * img.spacing[2]
                assert answer == ("midline" if abs(offset) <= 5 else ("left" if offset > 0 else "right"))
            elif topic == "modality" and rec.answer_type == "open":
                assert answer == {"CT": "CT", "MR": "MRI"}[case.modality]
            elif topic in ("segment", "segment_multi"):
                _, masks = load_masks(rec, out, labels.shape[1:])
                for name, mask in zip(rec.extra["targets"], masks):
                    assert np.array_equal(mask, labels[k] == ids[name])
            elif topic == "describe":  # exactly the structures on the slice, in label order
                on_slice = [case.labels[v] for v in sorted(case.labels) if (labels[k] == v).any()]
                assert f["names"] == on_slice
                assert answer.startswith(f"An axial {'CT' if case.modality == 'CT' else 'MRI'} slice of the ")
                assert all(f"the {n}" in answer for n in on_slice) and ("no labelled" in answer) == (not on_slice)
            elif topic == "what":
                _, region = rec.turns[0], load_masks(rec, out, labels.shape[1:])[0]
                name = f["name"]
                assert name in answer and (region & (labels[k] == ids[name])).any()
            checked.add(topic)
    assert {"volume", "area", "presence", "segment", "what", "describe"} <= checked


def test_deterministic_for_a_seed(phantoms, tmp_path):
    a = build_dataset(phantoms[:2], tmp_path / "a", CFG)
    b = build_dataset(phantoms[:2], tmp_path / "b", CFG)
    for s in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{s}.json").read_text() == (tmp_path / "b" / f"{s}.json").read_text()
    assert a.counts == b.counts
    build_dataset(phantoms[:2], tmp_path / "c", BuildConfig(seed=4, max_slices_per_volume=4))
    assert (tmp_path / "c" / "train.json").read_text() != (tmp_path / "a" / "train.json").read_text()



def test_a_case_pinned_to_train_leaves_the_other_cases_records_and_split_as_they_were(phantoms, tmp_path):
    """What `configs/data/default_glue_cases_extra.json` relies on: each case draws from its own
    seeded generator, so adding a volume adds its records and changes no other one."""
    extra_case = CaseSpec(**{**vars(phantoms[3]), "id": "extra", "split": "train"})
    build_dataset(phantoms[:3], tmp_path / "a", CFG)
    build_dataset(phantoms[:3] + [extra_case], tmp_path / "b", CFG)
    for s in ("train", "val", "test"):
        a = json.loads((tmp_path / "a" / f"{s}.json").read_text())
        b = json.loads((tmp_path / "b" / f"{s}.json").read_text())
        assert [r for r in b if r["case"] != "extra"] == a, s
        assert any(r["case"] == "extra" for r in b) == (s == "train")

    extra = json.loads((ROOT / "configs/data/default_glue_cases_extra.json").read_text())
    shipped = json.loads((ROOT / "configs/data/default_glue_cases.json").read_text())
    assert {c["split"] for c in extra} == {"train"} and not {c["id"] for c in extra} & {c["id"] for c in shipped}
    fetched = re.search(r"FILES = \(([^)]*)\)", (ROOT / "scripts/fetch_pyradiomics_cases.py").read_text()).group(1)
    assert all(Path(c[k]).name in fetched for c in extra for k in ("image", "label")), "the fetch script writes them"
    assert all((ROOT / c["fetch"].split()[-1]).is_file() for c in extra), "a missing volume names the script"


def test_assign_splits_stratified_and_pinned():
    def case(i, mod, split=None):
        return CaseSpec(f"c{i}", Path("x"), Path("y"), mod, "r", {1: "a"}, split=split)

    cases = [case(i, "CT") for i in range(5)] + [case(10, "MR"), case(11, "MR", "train"), case(12, "MR", "test")]
    splits = assign_splits(cases, (0.7, 0.15, 0.15), seed=0)
    ct = [splits[f"c{i}"] for i in range(5)]
    assert ct.count("test") == 1 and ct.count("val") == 1 and ct.count("train") == 3
    assert splits["c11"] == "train" and splits["c12"] == "test" and splits["c10"] == "train"
    assert splits == assign_splits(cases, (0.7, 0.15, 0.15), seed=0)


def test_region_modes():
    comp = np.zeros((64, 64), bool)
    comp[10:30, 20:40] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        sub = freeform_subregion(comp, rng)
        assert not (sub & ~comp).any() and 0.2 * comp.sum() <= sub.sum() <= comp.sum()
    assert point_square((64, 64), 32, 32).sum() == 41 * 41
    assert point_square((64, 64), 0, 0).sum() == 21 * 21  # clipped at the edge


def _case_files(tmp_path: Path, labels: np.ndarray, *, spacing=(2.0, 1.0, 1.0), label_spacing=None,
                names=None) -> Path:
    image = Volume.from_array(np.random.default_rng(0).normal(100, 20, labels.shape).astype(np.float32),
                              spacing=spacing)
    write_volume(image, tmp_path / "img.nrrd")
    lab_like = Volume.from_array(labels, spacing=label_spacing or spacing)
    write_labels(labels, like=lab_like, path=tmp_path / "lab.nrrd")
    cases = [{"id": "bad", "image": "img.nrrd", "label": "lab.nrrd", "modality": "MR", "body_region": "brain",
              "labels": names or {"1": "lesion"}}]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    return tmp_path / "cases.json"


def _labels():
    labels = np.zeros((6, 32, 32), np.uint8)
    labels[2:4, 10:20, 10:20] = 1
    return labels


@pytest.mark.parametrize("kind, pattern", [
    ("geometry", r"case bad: label spacing .* differs from the image's"),
    ("empty", r"case bad: the label volume is empty"),
    ("unknown", r"case bad: metadata names labels not in the label volume: \{2: 'cyst'\}"),
    ("unnamed", r"case bad: label ids \[1\] have no name"),
])
def test_bad_cases_name_the_case(tmp_path, kind, pattern):
    labels = np.zeros((6, 32, 32), np.uint8) if kind == "empty" else _labels()
    names = {"1": "lesion", "2": "cyst"} if kind == "unknown" else ({"3": "x"} if kind == "unnamed" else None)
    path = _case_files(tmp_path, labels, label_spacing=(2.5, 1.0, 1.0) if kind == "geometry" else None, names=names)
    with pytest.raises(InputError, match=pattern) as err:
        build_dataset(load_cases(path), tmp_path / "out", CFG)
    assert "\n" not in str(err.value)


def test_bad_cases_files(tmp_path):
    path = _case_files(tmp_path, _labels())
    (tmp_path / "broken.json").write_text("[{\"id\": ")
    with pytest.raises(InputError, match=r"cases file .*broken.json is not valid JSON"):
        load_cases(tmp_path / "broken.json")
    data = json.loads(path.read_text())
    data[0]["image"] = "missing.nrrd"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"case cases.json#0 \(bad\): image file .*missing.nrrd not found$"):
        load_cases(path)
    data[0]["fetch"] = "python scripts/fetch_pyradiomics_cases.py"  # volumes that are not shipped: say how to get them
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"missing.nrrd not found \(get it with: python scripts/fetch_pyradiomics_"
                                         r"cases.py\)$"):
        load_cases(path)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda recs: "[{", r"dataset .* is not valid JSON"),
    (lambda recs: [{**recs[0], "image": "images/nope.png"}], r"record d.json#0 \(.*\): file images/nope.png not found"),
    (lambda recs: [{**recs[0], "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}],
     r"record d.json#0 .*: turn 0 must be a human then a gpt message"),
    (lambda recs: [{"conversations": []}], r"record d.json#0 .*: needs an 'image' path"),
    (lambda recs: [{**recs[0], "answer_type": "maybe"}], r"record d.json#0 .*: answer_type 'maybe' is not one of"),
    (lambda recs: [{**recs[0], "conversations": [{"from": "human", "value": "<image>\nSegment it."},
                                                 {"from": "gpt", "value": "<SEG> <SEG><mask>masks/a.png</mask>"}]}],
     r"record d.json#0 .*: turn 0 has 2 <SEG> but 1 <mask> paths"),
])
def test_bad_datasets_name_the_record(built, mutate, pattern):
    _, out = built
    recs = json.loads((out / "train.json").read_text())
    data = mutate(recs)
    path = out / "d.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    try:
        with pytest.raises(InputError, match=pattern):
            read_dataset(path)
    finally:
        path.unlink()


def test_reads_plain_llava_records(tmp_path):
    from medplib_runtime.data.mecovqa import write_png

    write_png(np.zeros((8, 8), np.uint8), tmp_path / "ct_00--x--y--z_0001.png")
    (tmp_path / "m.json").write_text(json.dumps([{"id": "q1", "image": "ct_00--x--y--z_0001.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat modality?"}, {"from": "gpt", "value": "CT"}]}]))
    rec = read_dataset(tmp_path / "m.json").records[0]
    assert (rec.modality, rec.question_type, rec.answer_type) == ("ct", "C", "open")  # MedPLIB's file-name modality


def test_cli_build_data(tmp_path, phantoms):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"modality": "CT", "body_region": "phantom", "labels": {"1": "nodule", "2": "cyst"}}))
    c = phantoms[0]
    assert main(["build-data", "--case", str(c.image), str(c.label), str(meta), "--out", str(tmp_path / "o"),
                 "--max-slices", "2", "--empty-slices", "0"]) == 0
    assert read_dataset(tmp_path / "o" / "train.json").records
    assert main(["build-data", "--out", str(tmp_path / "o2")]) == 2  # no cases: one-line error


def test_more_region_questions_keep_the_split_and_balance_is_answers(phantoms, tmp_path, capsys):
    base = build_dataset(phantoms, tmp_path / "a", CFG)
    more = build_dataset(phantoms, tmp_path / "b", BuildConfig(seed=3, max_slices_per_volume=4,
                                                                empty_slices_per_volume=1, r_per_label=4,
                                                                r_is_per_label=1))
    assert more.splits == base.splits  # the same volumes held out: a supplement never leaks test cases
    assert more.counts["train"]["R"] > base.counts["train"]["R"]
    by_id = {c.id: c for c in phantoms}
    answers = {"yes": 0, "no": 0}
    for ds in _records(tmp_path / "b").values():
        for rec in ds.records:
            if rec.extra["topic"] != "is":
                continue
            case, f = by_id[rec.extra["case"]], rec.extra["facts"]
            labels = np.asarray(read_volume(case.label).array)[rec.extra["slice"]]
            region, _ = load_masks(rec, tmp_path / "b", labels.shape)
            ids = {v: key for key, v in case.labels.items()}
            # a free-form region lies inside its structure; a background square touches none
            inside = [n for n in case.labels.values() if (region & (labels == ids[n])).any()]
            assert inside == ([f["truth"]] if f["truth"] else [])
            assert rec.turns[0].plain_answer == ("yes" if f["asked"] in inside else "no")
            answers[rec.turns[0].plain_answer] += 1
    assert answers["yes"] >= answers["no"] > 0  # the default set's are nearly all "no"
    with pytest.raises(InputError, match="non-negative"):
        BuildConfig(r_is_per_label=-1)
    src = phantoms[0]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"modality": "CT", "body_region": "phantom", "labels": {"1": "nodule", "2": "cyst"}}))
    assert main(["build-data", "--case", str(src.image), str(src.label), str(meta), "--out", str(tmp_path / "o"),
                 "--r-per-label", "-2"]) == 2
    assert "r_per_label" in capsys.readouterr().err


def test_is_pairs_ask_one_region_with_both_answers(phantoms, tmp_path):
    """--r-is-pairs: per structure and slice, one region asked with its own name ("yes") and with
    another structure's ("no"): the same pixels, opposite answers; the facts match the labels."""
    build_dataset(phantoms, tmp_path / "p", BuildConfig(seed=3, max_slices_per_volume=4, empty_slices_per_volume=1,
                                                         r_is_pairs=1))
    by_region: dict[str, list] = {}
    for ds in _records(tmp_path / "p").values():
        for rec in ds.records:
            if rec.extra.get("pair"):
                by_region.setdefault(rec.turns[0].region_paths[0], []).append(rec)
    assert by_region
    for recs in by_region.values():
        assert sorted(r.extra["pair"] for r in recs) == ["no", "yes"]  # two-structure phantoms: the same region
        truth = {r.extra["facts"]["truth"] for r in recs}
        assert len(truth) == 1 and None not in truth
        for r in recs:
            f = r.extra["facts"]
            assert r.turns[0].plain_answer == ("yes" if f["asked"] == f["truth"] else "no") == r.extra["pair"]
    with pytest.raises(InputError, match="non-negative"):
        BuildConfig(r_is_pairs=-1)


def test_is_pairs_on_boxes_and_points_name_what_the_region_holds(phantoms, tmp_path):
    """--r-is-modes point,box: pairs are asked on boxes and point squares too (a napari user's regions);
    the "yes" region holds its structure, and the "no" name is one the region barely touches."""
    build_dataset(phantoms, tmp_path / "p", BuildConfig(seed=3, max_slices_per_volume=4, empty_slices_per_volume=1,
                                                         r_is_pairs=1, r_is_modes=("point", "box")))
    seen = set()
    for split, ds in _records(tmp_path / "p").items():
        for rec in ds.records:
            if not rec.extra.get("pair") or rec.extra["region_mode"] == "background":
                continue
            mode = rec.extra["region_mode"]
            seen.add(mode)
            assert mode in ("point", "box")
            png = read_png(ds.root / rec.image, record=rec.id)
            region, _ = load_masks(rec, ds.root, png.shape)

            def structure(name: str) -> np.ndarray:  # the builder's mask of a structure on this slice (none: empty)
                path = ds.root / "masks" / f"{Path(rec.image).stem}--{name}.png"
                return read_png(path, record=rec.id) > 0 if path.exists() else np.zeros(png.shape, bool)

            assert structure(rec.extra["facts"]["truth"])[region].any()  # the region marks the structure asked about
            if mode == "box":
                rows, cols = np.nonzero(region)
                assert region[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
            if rec.extra["pair"] == "no":
                assert structure(rec.extra["facts"]["asked"])[region].mean() <= 0.1
    assert seen == {"point", "box"}
    with pytest.raises(InputError, match="r_is_modes"):
        BuildConfig(r_is_modes=("lasso",))


def test_region_after_writes_the_chats_form_and_keeps_the_questions(phantoms, tmp_path):
    """--region-after 0.5: about half of the region questions say "the region" in words with the region
    token after the question (as the chat sends them); the records, answers and regions stay the same."""
    from medplib_runtime.conversation import region_question

    base = dict(seed=3, max_slices_per_volume=4, empty_slices_per_volume=1, r_is_pairs=1)
    build_dataset(phantoms, tmp_path / "inline", BuildConfig(**base))
    build_dataset(phantoms, tmp_path / "after", BuildConfig(**base, region_after=0.5))
    inline, after = _records(tmp_path / "inline"), _records(tmp_path / "after")
    moved = kept = 0
    for split in inline:
        assert [r.id for r in inline[split].records] == [r.id for r in after[split].records]
        for a, b in zip(inline[split].records, after[split].records):
            assert a.turns[0].answer == b.turns[0].answer and a.extra["facts"] == b.extra["facts"]
            qa, qb = a.turns[0].question, b.turns[0].question
            if a.extra["question_type"] != "R":
                assert qa == qb and "region_place" not in b.extra
                continue
            if b.extra.get("region_place") != "after":
                assert qa == qb
                kept += 1
                continue
            moved += 1
            assert qb.rstrip().endswith("</region>")
            words = re.sub(r"<region>.*?</region>", "<region>", qb).replace("<image>\n", "")
            # the exact text the runtime writes for the question without <region>
            plain = words.removesuffix(" <region>")
            assert "<region>" not in plain and "region" in plain
            assert region_question(plain) == region_question(words)
            assert re.findall(r"<region>(.*?)</region>", qa) == re.findall(r"<region>(.*?)</region>", qb)
    assert moved and kept and 0.3 < moved / (moved + kept) < 0.7, (moved, kept)
    with pytest.raises(InputError, match="region_after"):
        BuildConfig(region_after=1.5)


def test_g_region_asks_grounding_again_with_a_region_on_the_structure(phantoms, tmp_path):
    """--g-region 0.5: about half of the single-structure G questions come again with a region on their
    structure after the question (the chat's form); every other record stays the same."""
    base = dict(seed=3, max_slices_per_volume=4, empty_slices_per_volume=1, r_is_pairs=1, region_after=0.5)
    build_dataset(phantoms, tmp_path / "plain", BuildConfig(**base))
    build_dataset(phantoms, tmp_path / "with", BuildConfig(**base, g_region=0.5))
    plain, withg = _records(tmp_path / "plain"), _records(tmp_path / "with")
    added = singles = 0
    for split in plain:
        others = [r for r in withg[split].records if not (r.extra["question_type"] == "G" and "region_mode" in r.extra)]
        strip = lambda recs: [(r.image, r.turns, r.extra["question_type"]) for r in recs]  # ids of later G shift
        assert strip(others) == strip(plain[split].records)
        singles += sum(1 for r in plain[split].records if r.extra["question_type"] == "G" and len(r.extra["targets"]) == 1)
        for r in withg[split].records:
            if r.extra["question_type"] != "G" or "region_mode" not in r.extra:
                continue
            added += 1
            q, a = r.turns[0].question, r.turns[0].answer
            assert q.rstrip().endswith("</region>") and r.extra["region_place"] == "after"
            # the same question and answer as a record without the region
            twins = {p.turns[0].question for p in plain[split].records if p.image == r.image and p.turns[0].answer == a}
            assert re.sub(r" <region>.*?</region>$", "", q) in twins
            region = read_png(tmp_path / "with" / re.search(r"<region>(.*?)</region>", q).group(1)) > 0
            target = read_png(tmp_path / "with" / re.search(r"<mask>(.*?)</mask>", a).group(1)) > 0
            assert region.any() and (region & target).any()  # the region marks the structure it asks for
    assert added and 0.3 < added / singles < 0.7, (added, singles)
    with pytest.raises(InputError, match="g_region"):
        BuildConfig(g_region=-0.1)


def test_region_after_question_reads_naturally():
    from medplib_runtime.data.templates import region_after_question

    assert region_after_question("Is {region} the cyst?") == "Is the region the cyst? {region}"
    assert region_after_question("What does the region {region} show?") == "What does the region show? {region}"
    assert region_after_question("What is this {region}?") == "What is this region? {region}"


def test_mni152_lesions_put_one_lesion_in_one_hemisphere_of_the_template_in_training(tmp_path):
    from medplib_runtime.data.sources import write_mni152_lesion_case

    cases = [write_mni152_lesion_case(tmp_path / "src", i, seed=0, split="train") for i in range(2)]
    again = write_mni152_lesion_case(tmp_path / "again", 0, seed=0)
    from nilearn import datasets

    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    plain = np.asarray(datasets.load_mni152_template(resolution=2).dataobj, dtype=np.float32)
    import nibabel as nib

    for case in cases:
        assert case.labels == {1: "lesion"} and case.modality == "MR" and case.body_region == "brain"
        label = np.asarray(nib.load(case.label).dataobj)
        image = np.asarray(nib.load(case.image).dataobj)
        lesion = label == 1
        assert 30 < lesion.sum() < 20000 and not (lesion & ~brain).any()
        xs = np.nonzero(lesion)[0]
        assert (xs > brain.shape[0] / 2).all() or (xs < brain.shape[0] / 2).all()  # one hemisphere
        assert np.array_equal(image[~lesion], plain[~lesion])  # the template untouched outside the lesion
        assert float(np.abs(image[lesion] - plain[lesion]).mean()) > 0.1  # visible against the tissue it replaced
    assert not np.array_equal(nib.load(cases[0].label).dataobj, nib.load(cases[1].label).dataobj)
    assert np.array_equal(nib.load(again.image).dataobj, nib.load(cases[0].image).dataobj)  # deterministic
    assert main(["build-data", "--mni152-lesions", "1", "--max-slices", "2", "--out", str(tmp_path / "o")]) == 0
    records = read_dataset(tmp_path / "o" / "train.json").records
    assert records and {r.extra["case"] for r in records} == {"mni152lesion00"}
    assert not read_dataset(tmp_path / "o" / "test.json").records
