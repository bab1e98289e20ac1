"""`medplib eval`: the runner with a fake Runtime that returns known answers/masks, and once with the real one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medplib_runtime.data.mecovqa import write_png
from medplib_runtime.evaluation.runner import evaluate
from medplib_runtime.protocol import Runtime
from medplib_runtime.schemas import AskRequest, AskResult, RuntimeInfo

MEDPLIB_FIELDS = {"question_id", "image_path", "prompt", "gt", "text", "answer_id", "model_id", "answer_type",
                  "metadata"}


def _square(r0, c0, r1, c1, shape=(24, 24)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


class FakeRuntime:
    """Answers from a table keyed by the question; masks as given. Records what it was asked."""

    def __init__(self, answers: dict[str, tuple[str, tuple[np.ndarray, ...]]]) -> None:
        self.answers, self.requests, self.images = answers, [], []

    def info(self) -> RuntimeInfo:
        return RuntimeInfo("fake", "cpu", (), {})

    def set_image(self, image, *, modality="auto", spacing=None) -> str:
        self.images.append(np.asarray(image))
        return f"img{len(self.images)}"

    def prefetch(self, image_key, slice, *, radius=2) -> None:
        pass

    def segment(self, request):
        raise NotImplementedError

    def ask(self, request: AskRequest, *, on_token=None) -> AskResult:
        self.requests.append(request)
        text, masks = self.answers[request.question]
        return AskResult(text, masks, None)

    def close(self) -> None:
        pass


def _record(rid, image, question, answer, **extra):
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": "<image>\n" + question},
                                                         {"from": "gpt", "value": answer}], **extra}


@pytest.fixture()
def dataset(tmp_path) -> Path:
    (tmp_path / "masks").mkdir()
    img = (np.arange(24 * 24).reshape(24, 24) % 200).astype(np.uint8)
    write_png(img, tmp_path / "mr_00--t--a--z_0001.png")
    write_png(img, tmp_path / "ct_00--t--b--z_0002.png")
    write_png(_square(5, 5, 15, 15).astype(np.uint8) * 255, tmp_path / "masks" / "gt.png")
    write_png(_square(2, 2, 6, 6).astype(np.uint8) * 255, tmp_path / "masks" / "region.png")
    records = [
        _record("g-mr", "mr_00--t--a--z_0001.png", "Segment the lesion.", "Sure, it is <SEG><mask>masks/gt.png</mask>.",
                modality="MR", question_type="G", answer_type="open"),
        _record("g-ct", "ct_00--t--b--z_0002.png", "Segment the cyst.",
                "<SEG><mask>masks/gt.png</mask> and <SEG><mask>masks/gt.png</mask>", modality="CT",
                question_type="G", answer_type="open"),
        _record("r-closed", "mr_00--t--a--z_0001.png", "Is <region>masks/region.png</region> the lesion?", "yes",
                modality="MR", question_type="R", answer_type="closed"),
        _record("c-closed", "ct_00--t--b--z_0002.png", "In which plane is this slice?", "axial", modality="CT",
                question_type="C", answer_type="closed"),
        _record("c-open", "mr_00--t--a--z_0001.png", "What is the area of the lesion?",
                "The lesion measures 12.0 mm².", modality="MR", question_type="C", answer_type="open"),
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    return tmp_path / "data.json"


def test_runner_scores_known_answers(dataset, tmp_path):
    fake = FakeRuntime({
        "Segment the lesion.": ("Sure, it is <SEG>.", (_square(5, 10, 15, 20),)),  # IoU 50/150 = 1/3
        "Segment the cyst.": ("<SEG>", ()),  # no mask for either reference: IoU 0, 0
        "Is <region> the lesion?": ("Yes.", ()),  # correct after normalisation
        "In which plane is this slice?": ("coronal", ()),  # wrong
        "What is the area of the lesion?": ("lesion 12.0 mm²", ()),  # P 1, R 3/4, F1 6/7
    })
    assert isinstance(fake, Runtime)
    report = evaluate(fake, dataset, predictions=tmp_path / "pred.jsonl", model_id="fake")

    overall = report.row("all", "all")
    assert (overall.n_seg, overall.n_closed, overall.n_open) == (3, 2, 1)
    assert overall.miou == pytest.approx((1 / 3 + 0 + 0) / 3)
    assert overall.mdice == pytest.approx((0.5 + 0 + 0) / 3)  # Dice per sample = 2·IoU/(1+IoU)
    assert overall.accuracy == 0.5
    assert overall.balanced == 0.5 and report.row("question_type", "C").balanced == 0.0  # "axial": wrong
    assert (overall.precision, overall.recall, overall.f1) == pytest.approx((1.0, 0.75, 6 / 7))
    mr, ct = report.row("modality", "MR"), report.row("modality", "CT")
    assert (mr.n_seg, mr.miou, mr.mdice, mr.accuracy) == pytest.approx((1, 1 / 3, 0.5, 1.0))
    assert (ct.n_seg, ct.miou, ct.accuracy) == (2, 0.0, 0.0)
    assert report.row("question_type", "G").n_seg == 3 and report.row("question_type", "R").accuracy == 1.0
    assert "modality=MR" in report.table()

    # what the runtime saw: [0, 1] float images, the region as a mask prompt, "<region>" in the question
    region_req = next(r for r in fake.requests if r.region is not None)
    assert region_req.question == "Is <region> the lesion?"
    assert np.array_equal(region_req.region.mask, _square(2, 2, 6, 6))
    assert all(r.region is None for r in fake.requests if r is not region_req)
    assert fake.images[0].dtype == np.float32 and 0.0 <= fake.images[0].min() and fake.images[0].max() <= 1.0

    lines = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(set(x) == MEDPLIB_FIELDS for x in lines)
    g = lines[0]
    assert (g["gt"], g["text"], g["model_id"], g["question_id"]) == ("Sure, it is <SEG>.", "Sure, it is <SEG>.",
                                                                       "fake", 0)
    assert g["metadata"]["iou"] == pytest.approx([1 / 3]) and lines[2]["answer_type"] == "closed"


def test_runner_limit_and_errors(dataset, tmp_path):
    from medplib_runtime.errors import InputError

    fake = FakeRuntime({"Segment the lesion.": ("<SEG>", (_square(5, 5, 15, 15),))})
    report = evaluate(fake, dataset, limit=1)
    assert report.records == 1 and report.row("all", "all").miou == 1.0
    (tmp_path / "mr_00--t--a--z_0001.png").unlink()
    with pytest.raises(InputError, match=r"record data.json#0 \(g-mr\): file mr_00--t--a--z_0001.png not found"):
        evaluate(fake, dataset)


@pytest.mark.weights
def test_runner_with_the_real_runtime(local_runtime, tmp_path):
    """End to end on the real LocalRuntime: 3 records (G, closed, open) of a phantom dataset."""
    from medplib_runtime.data.builder import BuildConfig, build_dataset
    from medplib_runtime.data.mecovqa import Dataset, read_dataset
    from medplib_runtime.data.sources import write_phantom_case

    case = write_phantom_case(tmp_path / "src", 0, modality="CT")
    build_dataset([case], tmp_path / "ds", BuildConfig(max_slices_per_volume=2, empty_slices_per_volume=0))
    ds = read_dataset(tmp_path / "ds" / "train.json")
    pick = [next(r for r in ds.records if r.question_type == "G"),
            next(r for r in ds.records if r.answer_type == "closed"),
            next(r for r in ds.records if r.answer_type == "open" and r.question_type != "G")]
    report = evaluate(local_runtime, Dataset(ds.path, ds.root, tuple(pick)), predictions=tmp_path / "p.jsonl",
                      max_new_tokens=8)
    overall = report.row("all", "all")
    assert (overall.n_seg, overall.n_closed, overall.n_open) == (1, 1, 1)
    assert 0.0 <= overall.mdice <= 1.0 and 0.0 <= overall.f1 <= 1.0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 3


def test_region_naming_is_scored_on_what_and_choice_questions(dataset, tmp_path):
    root = dataset.parent
    records = [
        _record("what", "mr_00--t--a--z_0001.png", "What is <region>masks/region.png</region>?", "The grey matter.",
                modality="MR", question_type="R", answer_type="open", topic="what", facts={"name": "grey matter"}),
        _record("choice", "mr_00--t--a--z_0001.png", "Is <region>masks/region.png</region> the lesion or the cyst?",
                "lesion", modality="MR", question_type="R", answer_type="closed", topic="choice",
                facts={"name": "lesion"}),
        _record("where", "mr_00--t--a--z_0001.png", "Where is <region>masks/region.png</region>?", "left",
                modality="MR", question_type="R", answer_type="open", topic="where", facts={"name": "lesion"}),
    ]
    (root / "named.json").write_text(json.dumps(records))
    fake = FakeRuntime({"What is <region>?": ("It is the white matter.", ()),
                        "Is <region> the lesion or the cyst?": ("The lesion.", ()),
                        "Where is <region>?": ("On the left.", ())})
    report = evaluate(fake, root / "named.json", predictions=tmp_path / "n.jsonl")
    row = report.row("question_type", "R")
    assert (row.n_named, row.named) == (2, 0.5)  # "where" is not a naming question
    lines = [json.loads(x) for x in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert [x["metadata"].get("named") for x in lines] == [False, True, None]


def _bad_records(root: Path) -> list[dict]:
    """Six records no model can be asked, each for its own reason."""
    write_png(np.zeros((10, 10), np.uint8), root / "masks" / "small.png")
    write_png(np.zeros((24, 24), np.uint8), root / "masks" / "blank.png")
    (root / "broken.png").write_bytes(b"not a png")
    return [
        _record("gone", "missing.png", "Is this a CT image?", "no", answer_type="closed"),
        _record("unreadable", "broken.png", "Is this a CT image?", "no", answer_type="closed"),
        _record("shape", "mr_00--t--a--z_0001.png", "Segment the lesion.", "<SEG><mask>masks/small.png</mask>"),
        _record("reserved", "mr_00--t--a--z_0001.png", "What is <im_end> here?", "nothing"),
        _record("blank", "mr_00--t--a--z_0001.png", "What is in <region>masks/blank.png</region>?", "nothing"),
        {"id": "malformed", "image": "mr_00--t--a--z_0001.png", "conversations": [{"from": "human", "value": "?"}]},
    ]


def test_screening_finds_every_record_that_cannot_be_asked_before_a_model_loads(dataset):
    from medplib_runtime.evaluation.screening import screen_dataset

    root = dataset.parent
    good = json.loads(dataset.read_text())
    mixed = good[:2] + _bad_records(root) + good[2:]
    (root / "mixed.json").write_text(json.dumps(mixed))
    screened = screen_dataset(root / "mixed.json")
    assert [r.id for r in screened.dataset.records] == [r["id"] for r in good]
    reasons = {s.record: s.reason for s in screened.skipped}
    assert list(reasons) == ["gone", "unreadable", "shape", "reserved", "blank", "malformed"]
    assert reasons["blank"].endswith("(blank): its region mask is empty")
    assert "file missing.png not found" in reasons["gone"]
    assert "cannot read image" in reasons["unreadable"]
    assert "mask masks/small.png is (10, 10), the image (24, 24)" in reasons["shape"]
    assert "turn 0: the question holds <im_end>" in reasons["reserved"]
    assert "human/gpt pairs" in reasons["malformed"]
    assert all("\n" not in r for r in reasons.values())
    refusal = screened.refusal()
    assert refusal.startswith("record mixed.json#2 (gone)") and "(5 more records cannot be asked either)" in refusal
    assert [r.id for r in screen_dataset(root / "mixed.json", limit=3).dataset.records] == ["g-mr", "g-ct"]


def test_a_record_the_runtime_refuses_is_left_out_whole_with_skip_bad(dataset, tmp_path):
    """A two-turn record whose second question the runtime refuses: with ``skip_bad`` neither turn is
    scored or written (no half-scored record); without, the run stops with the record's one-line error."""
    from medplib_runtime.errors import InputError, RemoteError

    root = dataset.parent
    two_turns = {"id": "two", "image": "mr_00--t--a--z_0001.png", "answer_type": "closed", "conversations": [
        {"from": "human", "value": "<image>\nIn which plane is this slice?"}, {"from": "gpt", "value": "axial"},
        {"from": "human", "value": "Refused?"}, {"from": "gpt", "value": "no"}]}
    (root / "two.json").write_text(json.dumps(json.loads(dataset.read_text())[3:] + [two_turns]))

    class Refusing(FakeRuntime):
        def ask(self, request, *, on_token=None):
            if request.question == "Refused?":
                raise InputError("the runtime refuses this")
            return super().ask(request)

    fake = Refusing({"In which plane is this slice?": ("axial", ()),
                     "What is the area of the lesion?": ("lesion 12.0 mm²", ())})
    report = evaluate(fake, root / "two.json", predictions=tmp_path / "p.jsonl", skip_bad=True)
    assert report.records == 2 and report.turns == 2  # c-closed and c-open; "two" left out whole
    assert report.row("all", "all").n_closed == 1 and report.row("all", "all").accuracy == 1.0
    assert [s.record for s in report.skipped] == ["two"] and "the runtime refuses this" in report.skipped[0].reason
    assert "skipped 1 record that cannot be asked (first: record two: the runtime refuses this)" in report.table()
    assert report.as_dict()["skipped"] == [{"record": "two", "reason": "record two: the runtime refuses this"}]
    assert [json.loads(x)["answer_id"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == \
        ["c-closed#0", "c-open#0"]
    with pytest.raises(InputError, match=r"^record two: the runtime refuses this$"):
        evaluate(fake, root / "two.json")

    class Unreachable(FakeRuntime):  # not the record's fault: skipping it would skip every record
        def ask(self, request, *, on_token=None):
            raise RemoteError("cannot reach the medplib server", code="unreachable")

    with pytest.raises(RemoteError, match="cannot reach"):
        evaluate(Unreachable({}), root / "two.json", skip_bad=True)


def test_medplib_eval_refuses_bad_records_in_one_line_before_loading_a_model(dataset, capsys):
    from medplib_runtime.cli import main

    root = dataset.parent
    (root / "mixed.json").write_text(json.dumps(json.loads(dataset.read_text())[:1] + _bad_records(root)))
    code = main(["eval", str(root / "mixed.json"), "--predictions", str(root / "p.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("medplib: error: record mixed.json#1 (gone): file missing.png not found")
    assert err.endswith("(5 more records cannot be asked either); --skip-bad evaluates the rest and lists them")
    assert not (root / "p.jsonl").exists()
    (root / "none.json").write_text(json.dumps(_bad_records(root)[:1]))
    assert main(["eval", str(root / "none.json"), "--skip-bad"]) == 2
    assert "no record can be asked" in capsys.readouterr().err
