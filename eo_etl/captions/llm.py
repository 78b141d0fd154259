"""LLM captions through any OpenAI-compatible API (llama.cpp's server, vLLM, Ollama, hosted ones): the
facts go in as data, the model only puts them into words, and what comes back is checked before it is kept.

- **Endpoints**: ``chat`` (``POST {url}/chat/completions``: instructions as the system message, few-shot
  examples as turns) or ``completions`` (``POST {url}/completions``: one text prompt, for base models that
  have no chat template). The prompt is a versioned file (``prompts/<version>.yaml``).
- **Facts are data**: JSON between ``<facts>`` and ``</facts>`` (``facts_block``). JSON quotes and escapes
  every string (a newline in an OSM name is ``\\n``, a quote ``\\"``), and ``<``, ``>`` and backticks are
  escaped too, so no name can close the block, start a turn or a new "Caption:" line; every free-text fact
  was cut to 80 characters when the facts were made.
- **Checks** (``problem``): a caption that echoes instructions (its own wording, or words of a fact that
  reads like an instruction), is longer than ``max_chars`` or states a number the facts do not hold is
  rejected and asked again (``checks`` times in all, the temperature raised a little each time: a
  deterministic model would repeat itself); then it is kept as a *flag* with no text.
- **Failures**: 429, 5xx, timeouts and dropped connections are retried through the project's limiter
  (``eo_etl.sources.remote``: jittered backoff, ``concurrency`` requests in flight). A caption whose
  retries ran out is flagged ``transient: …`` and not cached, so the next run asks again; 401/403/404
  stop the stage with one line (every other caption would fail the same way).
- **Secrets**: the API key is read from the environment variable the recipe names, sent as a bearer
  token, and never logged, cached or written.
- **Cache**: every answer (a caption or a checks flag) is cached under (prompt version, model,
  parameters, facts hash, caption number) before it is returned; facts seen before cost no request.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import requests
import yaml

from eo_etl.captions.cache import CaptionCache, cache_key
from eo_etl.captions.facts import facts_hash, now, numbers_in
from eo_etl.sources.remote import HostLimiter, RetryPolicy, http_status, is_transient, limited_call
from eo_etl.text import printable

RETRY_TEMPERATURE_STEP = 0.3  # added per rejected try
MIN_CHARS = 12  # shorter answers are no caption
FATAL_STATUS = {401, 403, 404}
# Wording that gives orders to a model: a caption containing it echoes an injection (or the prompt).
INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget|override)\b.{0,40}\b(instructions?|rules|prompt|above|previous|facts)\b"
    r"|\b(system|assistant|user)\s*:|\byou are (now|an?)\b|\bnew instructions?\b|</?facts>|\bprompt\b",
    re.IGNORECASE | re.DOTALL,
)


class CaptionError(RuntimeError):
    """The model's service cannot caption at all (wrong URL, model or key): one line, the stage stops."""


@dataclass(frozen=True)
class Prompt:
    version: str
    instructions: str
    examples: tuple[tuple[dict, str], ...]


@functools.cache
def load_prompt(version: str) -> Prompt:
    """A prompt version shipped in ``prompts/`` (the version is an identifier: it names the file)."""
    path = files("eo_etl.captions") / "prompts" / f"{version}.yaml"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", version) or not path.is_file():
        shipped = sorted(p.name.removesuffix(".yaml") for p in (files("eo_etl.captions") / "prompts").iterdir()
                         if p.name.endswith(".yaml"))  # fmt: skip
        raise CaptionError(f"captions.prompt_version: {printable(repr(version), 80)} is not a prompt version; "
                           f"shipped: {', '.join(shipped)}")  # fmt: skip
    spec = yaml.safe_load(path.read_text())
    return Prompt(spec["version"], " ".join(spec["instructions"].split()),
                  tuple((ex["facts"], " ".join(ex["caption"].split())) for ex in spec["examples"]))  # fmt: skip


def facts_block(facts: Mapping[str, Any]) -> str:
    """The facts as the prompt quotes them: ``<facts>{…JSON…}</facts>``, every string JSON-escaped and
    ``<``, ``>``, backtick as ``\\u003c``, ``\\u003e``, ``\\u0060`` (still valid JSON, no markup)."""
    data = {key: value for key, value in facts.items() if key != "sample_id"}
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("`", "\\u0060")
    return f"<facts>{text}</facts>"


def chat_messages(prompt: Prompt, facts: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": prompt.instructions}]
    for example_facts, caption in prompt.examples:
        messages += [{"role": "user", "content": facts_block(example_facts)}, {"role": "assistant", "content": caption}]
    return [*messages, {"role": "user", "content": facts_block(facts)}]


def completion_prompt(prompt: Prompt, facts: Mapping[str, Any]) -> str:
    shots = "".join(f"Facts: {facts_block(f)}\nCaption: {caption}\n\n" for f, caption in prompt.examples)
    return f"{prompt.instructions}\n\n{shots}Facts: {facts_block(facts)}\nCaption:"


def _suspicious_words(facts: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Three-word runs of every free-text fact that reads like an instruction."""
    texts = [f.get("name", "") for f in facts.get("osm", [])] + [f.get("tag", "") for f in facts.get("osm", [])]
    runs = []
    for text in texts:
        if INSTRUCTION.search(text):
            words = re.findall(r"\w+", text.lower())
            runs += [tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 1))]
    return runs


def problem(caption: str, facts: Mapping[str, Any], max_chars: int) -> str | None:
    """Why ``caption`` cannot be kept, or None: too short or long, echoes instructions, or states a number
    the facts do not hold."""
    if len(caption) < MIN_CHARS:
        return "empty"
    if len(caption) > max_chars:
        return f"longer than {max_chars} characters"
    if INSTRUCTION.search(caption):
        return "echoes instructions"
    words = re.findall(r"\w+", caption.lower())
    shingles = {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
    if any(run in shingles for run in _suspicious_words(facts)):
        return "echoes an instruction found in the facts"
    allowed = numbers_in(facts)
    stated = {n.replace(",", "") for n in re.findall(r"\d+(?:[.,]\d+)?", caption)}
    extra = sorted(n for n in stated if n not in allowed and n.lstrip("0") not in allowed)
    if extra:
        return f"states numbers not in the facts: {', '.join(extra[:5])}"
    return None


@dataclass
class LlmCaptioner:
    """Captions for facts from one model behind one URL; see the module's notes for the guarantees."""

    url: str
    model: str
    cache: CaptionCache
    endpoint: str = "chat"
    prompt_version: str = "v1"
    temperature: float = 0.0
    max_tokens: int = 160
    n: int = 1
    timeout_s: float = 60.0
    checks: int = 3
    max_chars: int = 400
    concurrency: int = 4
    api_key_env: str | None = "OPENAI_API_KEY"
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(attempts=8, initial_s=0.5, max_s=8.0))
    requests_sent: int = 0  # requests that reached the network (retries included)

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.prompt = load_prompt(self.prompt_version)
        self.limiter = HostLimiter(per_host=self.concurrency)
        self._count_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any, cache: CaptionCache) -> LlmCaptioner:
        """From the recipe's ``captions`` section."""
        return cls(url=settings.url, model=settings.model, cache=cache, endpoint=settings.endpoint,
                   prompt_version=settings.prompt_version, temperature=settings.temperature,
                   max_tokens=settings.max_tokens, n=settings.n, timeout_s=settings.timeout_s, checks=settings.checks,
                   max_chars=settings.max_chars, concurrency=settings.concurrency, api_key_env=settings.api_key_env,
                   policy=RetryPolicy(attempts=settings.attempts, initial_s=0.5, max_s=8.0))  # fmt: skip

    @property
    def parameters(self) -> dict[str, Any]:
        """What decides the answer besides the prompt and facts: recorded with every caption, part of its key."""
        return {"endpoint": self.endpoint, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "max_chars": self.max_chars, "checks": self.checks}  # fmt: skip

    def body(self, facts: Mapping[str, Any], number: int, attempt: int = 0) -> dict[str, Any]:
        """The request for caption ``number`` of ``facts``, try ``attempt``."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": min(self.temperature + RETRY_TEMPERATURE_STEP * attempt, 2.0),
            "seed": number * 1000 + attempt,
        }
        if self.endpoint == "chat":
            return {**body, "messages": chat_messages(self.prompt, facts)}
        return {**body, "prompt": completion_prompt(self.prompt, facts), "stop": ["\n"]}

    def _send(self, body: dict[str, Any]) -> str:
        with self._count_lock:
            self.requests_sent += 1
        headers = {}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        path = "/chat/completions" if self.endpoint == "chat" else "/completions"
        answer = requests.post(self.url + path, json=body, headers=headers, timeout=self.timeout_s)
        answer.raise_for_status()
        choice = answer.json()["choices"][0]
        text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        return " ".join((text or "").split())

    def caption(self, facts: Mapping[str, Any], number: int = 0) -> dict[str, Any]:
        """Caption ``number`` of ``facts``: from the cache, else asked (and cached). A dict with ``caption``
        (None when flagged), ``flag``, ``model``, ``prompt_version``, ``parameters``, ``created``, ``cached``."""
        key = cache_key(self.prompt.version, self.model, self.parameters, facts_hash(facts), number)
        if (entry := self.cache.get(key)) is not None:
            return {**entry, "cached": True}
        entry = {"model": self.model, "prompt_version": self.prompt.version, "parameters": self.parameters}
        flag = None
        for attempt in range(self.checks):
            try:
                text = limited_call(self.policy, self.limiter, self.url, self._send, self.body(facts, number, attempt))
            except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as error:
                status = http_status(error)
                if status in FATAL_STATUS:
                    model = printable(repr(self.model), 80)
                    raise CaptionError(f"captions.url: {self.url} answered HTTP {status} for model {model}: "
                                       "check the URL, model and key") from None  # fmt: skip
                reason = f"{type(error).__name__}" + (f" HTTP {status}" if status else "")
                transient = is_transient(error)
                # a fault that may pass is not remembered: the next run asks again
                return {**entry, "caption": None, "flag": ("transient: " if transient else "") + reason,
                        "created": now(), "attempts": attempt + 1, "cached": False}  # fmt: skip
            flag = problem(text, facts, self.max_chars)
            if flag is None:
                entry.update(caption=text, flag=None, created=now(), attempts=attempt + 1)
                break
        else:
            entry.update(caption=None, flag=f"rejected: {flag}", created=now(), attempts=self.checks)
        self.cache.put(key, entry)
        return {**entry, "cached": False}

    def caption_all(self, all_facts: Sequence[Mapping[str, Any]]) -> list[list[dict[str, Any]]]:
        """``n`` captions for each facts, ``concurrency`` requests at a time, in the order given."""
        jobs = [(i, number) for i in range(len(all_facts)) for number in range(self.n)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            done = list(pool.map(lambda job: self.caption(all_facts[job[0]], job[1]), jobs))
        out: list[list[dict[str, Any]]] = [[] for _ in all_facts]
        for (i, _), result in zip(jobs, done):
            out[i].append(result)
        return out
