"""Facts from the file, not guesses: the modality (and body part) a question asks about.

The shipped model answers "Is this a CT?" and "Is this an MRI?" both "yes"; its modality answers are
near chance. The file often knows: a DICOM header names the modality (0008,0060) and body part
(0018,0015), NRRD/MHA headers may carry a modality field (imaging/io.py puts both in
``Volume.metadata``), and a CT in Hounsfield units is unmistakable from its intensities. A question
that asks about the modality gets that fact with its source; when the evidence is not strong the
answer says so ("the file does not say; the model's guess follows") instead of guessing.

What the intensities can tell, and what not (thresholds measured on the sample volumes, tested):

* **CT**: air near −1000 HU (≥ 1 % of the voxels in −1100…−900) *and* a body that is mostly soft
  tissue (≥ 50 % of the voxels above −500 HU lie in −150…150 HU, ≤ 20 % in the −500…−150 gap).
* **MR, by elimination**: no negative values, a range beyond 8 bits, not HU-like even with the
  +1024 offset of a CT stored without its rescale intercept, and < 60 % of the voxels (an exactly-zero
  background aside) in the −150…150 soft-tissue band (a fat- and air-free CT crop would be). That
  rules out a CT in HU; among non-CT volumes of this kind MR is by far the likeliest, and the answer
  says it is an elimination.
* **Nothing** otherwise: 8-bit or 0–1 normalised data (a windowed CT looks like an MR), negatives
  without air (z-scored), HU-like only after an offset, a soft-tissue-only range. The intensities
  never tell MR from PET or ultrasound: such yes/no questions get the honest note.

Which questions ask about the modality is decided by patterns (tested), never by the LLM:
"Is this a CT image?", "Is this an MRI?", "Is this a CT or an MRI?", "What is the modality of this
image?", "What imaging modality was used?", "Which modality is this?", "What kind of scan is this?".
A question that only *names* a modality ("Is the lesion bright on CT?") is not a modality question;
it gets a note only when the file strongly contradicts its premise (the image is an MR). A model
answer that names a modality the file contradicts ("An axial CT slice…" on an MR) gets the same note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..imaging.windowing import finite_sample

# ------------------------------------------------------------------------------------ vocabulary

NAMES = {"CT": "CT", "MR": "MR", "PT": "PET", "NM": "nuclear medicine (SPECT/scintigraphy)", "US": "ultrasound",
         "XR": "X-ray", "MG": "mammography"}

_WORDS = {  # how questions (and answers) name each modality
    "CT": r"ct|cat scan|computed tomography|computeri[sz]ed tomography|computed axial tomography",
    "MR": r"mri?|magnetic resonance|nmr",
    "PT": r"pet|positron emission tomography",
    "NM": r"spect|scintigra\w*|nuclear medicine",
    "US": r"ultrasound|ultrasonograph\w*|sonograph\w*|sonogram|echograph\w*|echocardiogra\w*",
    "XR": r"x-?rays?|radiograph|radiographs|plain films?",
    "MG": r"mammogra\w*",
}
_ANY = "|".join(f"(?:{w})" for w in _WORDS.values())
_WORD_RE = {code: re.compile(rf"(?<![\w-])(?:{w})(?!\w|-guided)", re.I) for code, w in _WORDS.items()}

# DICOM (0008,0060) codes; free-form header values are matched against _WORDS as well
_DICOM_CODES = {"CT": "CT", "MR": "MR", "PT": "PT", "NM": "NM", "US": "US", "CR": "XR", "DX": "XR", "DR": "XR",
                "RF": "XR", "XA": "XR", "RG": "XR", "PX": "XR", "IO": "XR", "MG": "MG"}
_UNINFORMATIVE = {"", "OT", "SC", "OTHER", "AUTO", "UNKNOWN", "NONE", "SEG", "RTSTRUCT", "REG"}

# words between "is this a" and the modality: they make the question claim more than the modality
_QUALIFIERS = (r"axial|coronal|sagittal|contrast|contrast-enhanced|enhanced|non-contrast|unenhanced|native|t1|t2|"
               r"t1-weighted|t2-weighted|weighted|flair|diffusion|dwi|pd|stir|perfusion|low-dose|high-resolution|"
               r"3d|2d|spiral|helical|functional|cardiac|brain|head|chest|thoracic|lung|abdominal|abdomen|pelvic|"
               r"pelvis|spine|spinal|knee|liver|prostate|breast|whole-body|neck|cranial")
_NOUNS = r"image|images|scan|scans|slice|slices|study|volume|picture|exam|examination|series|data|sequence"
_SUBJECT = rf"(?:this|it|that|these|the)(?:\s+(?:{_NOUNS}))?"
_YES_NO = re.compile(
    rf"^\s*(?:(?:is|was|are|were)\s+{_SUBJECT}|(?:does|did)\s+{_SUBJECT}\s+(?:come|originate)|could\s+{_SUBJECT}\s+be)"
    rf"(?:\s+(?:acquired|taken|obtained|done|made|performed|captured|produced|imaged|scanned|come|from|with|by|on|"
    rf"using|via|of|in))*"
    rf"(?:\s+(?:an?|the))?(?P<quals>(?:\s+(?:{_QUALIFIERS}))*)\s+(?P<mod>{_ANY})(?![\w-])", re.I)
# after the modality of a yes/no question: an image noun and the end ("Is this a CT image?"), not more
# ("Is the CT normal?" asks about the image, it names the modality in passing)
_YES_NO_END = re.compile(rf"^(?:\s+(?:{_NOUNS}|scanner|machine|acquisition))?\s*(?:[?.!]|$|\s+(of|from)\b)", re.I)
_OR_ANOTHER = re.compile(rf"^(?:\s+(?:{_NOUNS}))?\s*,?\s+or\s+(?:an?\s+)?(?:{_ANY})(?![\w-])", re.I)
_BARE_CHOICE = re.compile(  # "CT or MRI?"
    rf"^\s*(?:{_ANY})(?:\s+(?:{_NOUNS}))?\s+or\s+(?:an?\s+)?(?:{_ANY})(?:\s+(?:{_NOUNS}))?\s*\??\s*$", re.I)
_ASKS_MODALITY = re.compile(
    r"\bmodalit(?:y|ies)\b"
    r"|\bwhat\s+(?:kind|type|sort)\s+of\s+(?:an?\s+)?(?:image|imaging|scan|scanner|study|acquisition|exam|picture)\b"
    r"|\b(?:imaging|scan(?:ning)?|acquisition)\s+(?:technique|method|technology|type|kind)\b"
    r"|\bhow\s+was\s+(?:this|the)\s+(?:image|scan|picture|volume|study)\s+(?:acquired|obtained|taken|made|produced|"
    r"generated|imaged)\b"
    r"|\bwhich\s+(?:scanner|machine)\b", re.I)
_BODY_PART = re.compile(r"\bbody\s+(?:part|region)s?\b|\bpart\s+of\s+the\s+body\b|\banatomical\s+(?:region|site|area)\b"
                        r"|\b(?:what|which)\s+anatomy\b", re.I)


def modalities_named(text: str) -> tuple[str, ...]:
    """The modality codes a text names, in order of first mention ('CT', 'MR', ...)."""
    found = sorted((m.start(), code) for code, rx in _WORD_RE.items() for m in [rx.search(text or "")] if m)
    return tuple(code for _, code in found)


@dataclass(frozen=True)
class Asked:
    """What a question asks: ``form`` is 'which' (name the modality), 'yes_no' (is it ``modality``?),
    'body_part', or 'premise' (names ``modality`` but asks something else)."""

    form: str
    modality: str | None = None
    qualifiers: tuple[str, ...] = ()


def modality_asked(question: str) -> Asked | None:
    """The modality question ``question`` asks, or None (decided by patterns, not by the model)."""
    q = (question or "").strip()
    m = _YES_NO.search(q)
    if m and _OR_ANOTHER.match(q[m.end():]):
        return Asked("which")  # "Is this a CT or an MRI?"
    end = _YES_NO_END.match(q[m.end():]) if m else None
    if end:
        quals = tuple(w.lower() for w in m.group("quals").split())
        rest = q[m.end() + end.end():].strip(" ?.!")  # "... of the chest": a claim the answer cannot check
        return Asked("yes_no", modalities_named(m.group("mod"))[0],
                     quals + ((f"{end.group(1).lower()} {rest}",) if end.group(1) else ()))
    if _BARE_CHOICE.match(q) or _ASKS_MODALITY.search(q):
        return Asked("which")
    if _BODY_PART.search(q):
        return Asked("body_part")
    named = set(modalities_named(q))
    return Asked("premise", named.pop()) if len(named) == 1 else None


# ------------------------------------------------------------------------------------ evidence

SOFT_CROP = 0.6  # this share of a non-negative image in -150..150 could be a CT crop of soft tissue (no air, no fat)
_MR_TERMS = re.compile(r"(?<!\w)(?:t1w?|t2w?|flair|dwi|adc|pdw?|swi|bold|dti|mprage|spgr)(?!\w)", re.I)


@dataclass(frozen=True)
class ModalityEvidence:
    """``modality`` is a code of NAMES, or None when the file does not say (``reason`` says why)."""

    modality: str | None
    source: str  # 'file', 'intensities' or 'none'
    reason: str
    by_elimination: bool = False  # MR because the intensities rule out a CT in HU

    def bracket(self) -> str:
        return f"[from the {'file' if self.source == 'file' else 'intensities'}: {self.reason}]"


def header_modality(metadata: dict | None) -> tuple[str | None, str]:
    """(code, what the header says) from ``metadata['modality']``; (None, '') when it has none or it says
    nothing useful (OT, SC, 'auto'); (None, why) when it names something unrecognised."""
    raw = str((metadata or {}).get("modality", "") or "").strip()
    where = "DICOM Modality (0008,0060)" if (metadata or {}).get("format") == "DICOM" else "the header's modality field"
    if raw.upper() in _UNINFORMATIVE:
        return None, (f"{where} is '{raw}', which names no modality" if raw and raw.lower() != "auto" else "")
    code = _DICOM_CODES.get(raw.upper())
    if code is None:
        named = modalities_named(raw)
        code = named[0] if len(set(named)) == 1 else None
    if code is None and _MR_TERMS.search(raw):
        code = "MR"  # 'T1', 'FLAIR', 'DWI': sequences only MR has
    if code is None:
        return None, f"{where} is '{raw}', which is not a modality this reader knows"
    return code, f"{where} = {raw}"


def _hu_profile(h: np.ndarray) -> dict:
    """Fractions that make a CT in HU: air, and the body (> −500 HU) mostly soft tissue, little in the gap."""
    air = float(((h >= -1100) & (h <= -900)).mean())
    body = h > -500
    n_body = max(int(body.sum()), 1)
    return {"air": air, "body": float(body.mean()), "soft": float(((h >= -150) & (h <= 150)).sum()) / n_body,
            "gap": float(((h > -500) & (h < -150)).sum()) / n_body, "bone": float((h >= 400).sum()) / n_body,
            "min": float(h.min()), "max": float(h.max())}


def _is_hu(p: dict) -> bool:
    return (p["air"] >= 0.01 and p["body"] >= 0.05 and p["soft"] >= 0.5 and p["gap"] <= 0.2
            and p["min"] >= -3100 and p["max"] >= 100)


def _range(lo: float, hi: float) -> str:
    return f"{lo:.4g} to {hi:.4g}"


def intensity_modality(array) -> ModalityEvidence:
    """CT from Hounsfield units, MR by elimination, or None (see the module's docstring)."""
    values = finite_sample(array)
    if values.size < 1000:
        return ModalityEvidence(None, "none", "too few finite values to judge the intensities")
    lo, hi = float(values.min()), float(values.max())
    p = _hu_profile(values)
    if _is_hu(p):
        return ModalityEvidence("CT", "intensities", (
            f"Hounsfield units: air near −1000 HU in {p['air']:.0%} of the voxels, {p['soft']:.0%} of the body "
            f"within −150 to 150 HU (soft tissue), {p['bone']:.1%} ≥ 400 HU (bone); an MR has no such scale"))
    for offset in (1024, 1000):
        if _is_hu(_hu_profile(values - offset)):
            return ModalityEvidence(None, "none", (
                f"its values ({_range(lo, hi)}) look like a CT stored without its rescale offset (−{offset}): "
                f"air near 0, soft tissue near {offset}; but the file does not say so"))
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return ModalityEvidence(None, "none", f"it is constant ({lo:.4g}): its intensities say nothing")
    if lo >= -1.0 and hi <= 1.0:
        return ModalityEvidence(None, "none", (
            f"its values run {_range(lo, hi)}, normalised: a CT's Hounsfield scale would be gone, so a CT and an MR "
            f"look alike"))
    if np.asarray(array).dtype == np.uint8 or (lo >= 0 and hi <= 255):
        return ModalityEvidence(None, "none", (
            f"its values run {_range(lo, hi)}, an 8-bit range: a windowed CT and an MR look alike there"))
    if float((values < -0.02 * max(hi, 1.0)).mean()) > 0.001:
        return ModalityEvidence(None, "none", (
            f"its values run {_range(lo, hi)}: negative, but with no air near −1000 HU (not a CT in HU, "
            f"nor an MR magnitude image as stored)"))
    tissue = values if float((values == lo).mean()) < 0.05 else values[values != lo]  # a zero background aside
    soft = float(((tissue >= -150) & (tissue <= 150)).mean()) if tissue.size else 1.0
    if soft >= SOFT_CROP:
        return ModalityEvidence(None, "none", (
            f"{soft:.0%} of its values lie in −150 to 150 (values {_range(lo, hi)}): that fits a CT crop of soft "
            f"tissue without air as well as an MR"))
    return ModalityEvidence("MR", "intensities", (
        f"a CT would hold air near −1000 HU and a body mostly within −150 to 150 HU; this image does not "
        f"(values {_range(lo, hi)}, {soft:.0%} in that band), so by elimination MR"), by_elimination=True)


def modality_evidence(metadata: dict | None, array) -> ModalityEvidence:
    """The header's modality when it names one (it wins over the intensities), else the intensities'."""
    code, said = header_modality(metadata)
    if code is not None:
        return ModalityEvidence(code, "file", said)
    found = intensity_modality(array)
    if said and found.modality is None:  # the header's field was useless: say both
        return ModalityEvidence(None, "none", f"{said}, and {found.reason}")
    if said:
        return ModalityEvidence(found.modality, found.source, f"{said}; {found.reason}", found.by_elimination)
    if found.modality is None:
        return ModalityEvidence(None, "none", f"no modality in its header, and {found.reason}")
    return found


# ------------------------------------------------------------------------------------ answers

@dataclass(frozen=True)
class FileFact:
    statement: str  # the fact (or the honest "does not say" note) with its source, without the model's text
    text: str  # the statement, then "Model: ..." (when a model text was given)
    kind: str  # 'modality', 'body_part', 'premise' (the question's), 'mention' (the model's answer's)
    answer: str | None  # 'yes', 'no', a modality/body part name; None when the file does not say
    evidence: ModalityEvidence | None = None


def _can_judge(asked: str, ev: ModalityEvidence) -> bool:
    """Whether ``ev`` can say yes or no to modality ``asked``: MR by elimination only rules out CT."""
    return ev.modality is not None and not (ev.by_elimination and asked not in ("CT", "MR"))


def _modality_answer(asked: Asked, ev: ModalityEvidence) -> tuple[str | None, str]:
    name = NAMES.get(ev.modality or "", "")
    if asked.form == "which":
        if ev.modality is None:
            return None, f"The file does not say which modality this is: {ev.reason}. The model's guess follows."
        return name, f"{name} {ev.bracket()}"
    want = NAMES[asked.modality]
    if not _can_judge(asked.modality, ev):
        why = ev.reason if ev.modality is None else f"the intensities only rule out a CT ({ev.reason})"
        return None, f"The file does not say whether this is {want}: {why}. The model's guess follows."
    if ev.modality != asked.modality:
        return "no", f"no: {name}, not {want} {ev.bracket()}"
    if asked.qualifiers:
        return "yes", (f"yes, {name}; whether it is {', '.join(asked.qualifiers)}, the file does not say "
                       f"{ev.bracket()}")
    return "yes", f"yes: {name} {ev.bracket()}"


def _body_part(metadata: dict | None) -> str:
    return str((metadata or {}).get("body_part", "") or "").strip()


def file_fact(question: str, metadata: dict | None, array, *, model_text: str = "") -> FileFact | None:
    """The file's answer to a modality (or body part) question, or a note where the question's premise or
    the model's answer contradicts a strong fact; None when neither applies.

    ``metadata``: ``Volume.metadata`` or a napari layer's metadata (its 'modality', 'format', 'body_part');
    ``array``: the voxels (any shape). The statement carries its source in brackets."""
    asked = modality_asked(question)
    model_named = modalities_named(model_text)
    if asked is None and not model_named:
        return None
    kind, answer = "modality", None
    ev = None
    if asked is not None and asked.form == "body_part":
        part = _body_part(metadata)
        if not part:
            return None  # only a header knows it; the intensities cannot
        kind, answer = "body_part", part.title()
        statement = f"{answer} [from the file: DICOM BodyPartExamined (0018,0015) = {part}]"
    elif asked is not None and asked.form in ("which", "yes_no"):
        ev = modality_evidence(metadata, array)
        answer, statement = _modality_answer(asked, ev)
    else:
        ev = modality_evidence(metadata, array)
        claimed = asked.modality if asked is not None else (model_named[0] if len(set(model_named)) == 1 else None)
        if claimed is None or not _can_judge(claimed, ev) or claimed == ev.modality:
            return None
        kind, answer = ("premise", "no") if asked is not None else ("mention", NAMES[ev.modality])
        whose = "the question assumes" if asked is not None else "the model's answer calls it"
        statement = (f"Note: this image is {NAMES[ev.modality]}, not {NAMES[claimed]} ({whose} {NAMES[claimed]}) "
                     f"{ev.bracket()}")
    text = statement + (f"\nModel: {model_text.strip()}" if model_text.strip() else "")
    return FileFact(statement, text, kind, answer, ev)


__all__ = ["Asked", "FileFact", "ModalityEvidence", "NAMES", "file_fact", "header_modality", "intensity_modality",
           "modalities_named", "modality_asked", "modality_evidence"]
