"""The HTTP backend against a real misbehaving server on 127.0.0.1, driven through the real CLI.

The server is a small http.server app in a thread: it answers in OpenAI's shapes, follows a
script of faults (fewer choices, none, HTML or cut-off JSON with status 200, Retry-After, a body
dropped mid-response, no usage) and records every request. Each run must end with exactly n
samples for every problem, or with one line and exit 2: a short run that exits 0 fails here.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ttscale.backends.openai_http import OpenAIBackend, retry_after_s
from ttscale.types import ChatMessage, GenRequest, SampleParams

N, PROBLEMS = 4, 2
ANSWER = "7 + 5 = 12, so the answer is \\boxed{12}."
TOKEN_IDS = [101, 102, 103, 104, 105, 106]  # what a vLLM server returns with return_token_ids


class FaultyServer:
    """An OpenAI-compatible server that misbehaves as scripted: one fault per request, in order."""

    def __init__(self):
        self.script: list[str] = []
        self.default = "ok"
        self.requests: list[dict] = []  # {"at": monotonic time, "path": ..., "body": ...}
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with owner._lock:
                    owner.requests.append({"at": time.monotonic(), "path": self.path, "body": body})
                    fault = owner.script.pop(0) if owner.script else owner.default
                owner.answer(self, fault, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self, *script: str, default: str = "ok") -> None:
        """Faults for the next requests, in order, then `default` for every request after them."""
        with self._lock:
            self.script, self.default, self.requests = list(script), default, []

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def completion(body: dict, choices: int, *, token_ids: bool = True, usage: bool = True) -> dict:
        """A chat.completion object as OpenAI (and vLLM with return_token_ids) shapes it."""
        out = {
            "id": "chatcmpl-faulty", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [
                {
                    "index": i, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None,
                    "finish_reason": "stop", **({"token_ids": TOKEN_IDS} if token_ids else {}),
                }
                for i in range(choices)
            ],
        }
        if usage:
            out["usage"] = {"prompt_tokens": 30, "completion_tokens": len(TOKEN_IDS) * choices,
                            "total_tokens": 30 + len(TOKEN_IDS) * choices}
        return out

    def answer(self, handler: BaseHTTPRequestHandler, fault: str, body: dict) -> None:
        n = body.get("n", 1)
        kind, _, arg = fault.partition(":")
        if kind == "ok":
            self.send(handler, 200, json.dumps(self.completion(body, n)))
        elif kind == "fewer":  # half of what was asked for (at least one)
            self.send(handler, 200, json.dumps(self.completion(body, max(1, n // 2))))
        elif kind == "one":  # a server that ignores n
            self.send(handler, 200, json.dumps(self.completion(body, 1)))
        elif kind == "none":
            self.send(handler, 200, json.dumps(self.completion(body, 0)))
        elif kind == "html":
            self.send(handler, 200, "<html>\n<body><h1>502 Bad Gateway</h1>\n</body>\n</html>\n", "text/html")
        elif kind == "cut":  # a complete HTTP message whose JSON stops half-way
            text = json.dumps(self.completion(body, n))
            self.send(handler, 200, text[: len(text) // 2])
        elif kind == "drop":  # the connection closes mid-body: fewer bytes than Content-Length
            payload = json.dumps(self.completion(body, n)).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload[: len(payload) // 3])
            handler.wfile.flush()
            handler.close_connection = True
        elif kind in ("429", "503"):
            error = {"error": {"message": "slow down", "type": "rate_limit", "code": int(kind)}}
            when = arg if arg != "date" else email.utils.formatdate(time.time() + 30, usegmt=True)
            self.send(handler, int(kind), json.dumps(error), headers={"Retry-After": when} if when else None)
        elif kind == "nousage":  # neither token ids nor usage: only texts
            self.send(handler, 200, json.dumps(self.completion(body, n, token_ids=False, usage=False)))
        elif kind == "noids-fewer":  # usage totals only (no per-sample ids), and half the choices
            self.send(handler, 200, json.dumps(self.completion(body, max(1, n // 2), token_ids=False)))
        elif kind == "extra":  # more choices than asked for
            self.send(handler, 200, json.dumps(self.completion(body, n + 2)))
        elif kind == "error200":  # an error object with status 200
            self.send(handler, 200, json.dumps({"error": {"message": "upstream timed out", "code": 504}}))
        else:
            raise AssertionError(f"unknown fault {fault!r}")

    @staticmethod
    def send(handler, status: int, text: str, content_type: str = "application/json", headers=None) -> None:
        payload = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    faulty = FaultyServer()
    yield faulty
    faulty.stop()


@pytest.fixture
def problems(write_problems):
    return write_problems(*({"id": f"p{i}", "question": f"What is 7 + {5 + i}?", "answer": str(12 + i)} for i in range(PROBLEMS)))


def ttscale_eval(server, problems, tmp_path, *options, model="smollm2-135m", base_url=None):
    """`ttscale eval` as a user runs it, one problem at a time (so the script's order is the requests')."""
    command = [
        sys.executable, "-m", "ttscale.cli", "eval", "-b", str(problems), "--backend", "openai",
        "--base-url", base_url or server.base_url, "--model", model, "--n", str(N), "--limit", str(PROBLEMS),
        "--concurrency", "1", "-o", str(tmp_path / "runs"),
        "--backend-option", "backoff_s=0", "--backend-option", "max_retries=2", *options,
    ]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def records_of(tmp_path) -> list[dict]:
    [run_dir] = (tmp_path / "runs").iterdir()
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]


def assert_complete(result, tmp_path) -> list[dict]:
    """Exit 0 with exactly N samples for every problem; anything short fails."""
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 0, result.stderr
    records = records_of(tmp_path)
    assert sorted(r["problem_id"] for r in records) == [f"p{i}" for i in range(PROBLEMS)]
    for record in records:
        assert len(record["candidates"]) == N and record["n"] == N, record["problem_id"]
        assert str(N) in record["pass_at_k"]
    return records


def assert_one_line_error(result) -> str:
    """Exit 2, no traceback, and the error is a single `error:` line on stderr.

    (The CLI may add a pointer to the run's engine.log on a line of its own; that is not an error line.)
    """
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def flat(text: str) -> str:
    """Text with every run of whitespace as one space: log lines may be wrapped to the console's width."""
    return " ".join(text.split())


def table_value(stdout: str, label: str) -> str:
    """The value cell of the printed table's row `label` (rich draws cells between │ or |)."""
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line)]
        if len(cells) >= 4 and cells[1] == label:
            return cells[2]
    raise AssertionError(f"no row {label!r} in:\n{stdout}")


def chat_url(server) -> str:
    return f"{server.base_url}/chat/completions"


def test_fewer_choices_are_topped_up_to_exactly_n(server, problems, tmp_path):
    server.reset("fewer")  # the first request gets 2 of 4, everything after is whole
    records = assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    bodies = [r["body"] for r in server.requests]
    assert [b["n"] for b in bodies] == [4, 2, 4]
    assert bodies[1]["seed"] == bodies[0]["seed"] + 2  # the top-up continues the seeds, no repeats
    first = next(r for r in records if r["problem_id"] == "p0")
    assert first["cost"]["generated_tokens"] == N * len(TOKEN_IDS)
    assert first["cost"]["prompt_tokens"] == 2 * 30  # two requests, each prefilled


def test_a_server_that_ignores_n_still_gives_n_samples(server, problems, tmp_path):
    server.reset(default="one")
    assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    assert [r["body"]["n"] for r in server.requests] == [4, 3, 2, 1] * PROBLEMS


def test_zero_choices_once_is_asked_again(server, problems, tmp_path):
    server.reset("none")
    assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    assert [r["body"]["n"] for r in server.requests] == [4, 4, 4]


def test_zero_choices_every_time_stops_with_one_line(server, problems, tmp_path):
    server.reset(default="none")
    line = assert_one_line_error(ttscale_eval(server, problems, tmp_path, "--backend-option", "max_topups=3"))
    assert chat_url(server) in line and "0 of the 4 samples" in line and "4 requests" in line
    assert len(server.requests) == 4  # the first request and 3 top-ups, then no more
    assert not records_of(tmp_path)  # nothing short was recorded


@pytest.mark.parametrize("fault", ["html", "cut"])
def test_a_200_that_is_not_json_is_retried(server, problems, tmp_path, fault):
    server.reset(fault)
    assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    assert len(server.requests) == 3


@pytest.mark.parametrize("fault", ["html", "cut"])
def test_a_200_that_is_never_json_stops_with_one_line(server, problems, tmp_path, fault):
    server.reset(default=fault)
    line = assert_one_line_error(ttscale_eval(server, problems, tmp_path))
    assert chat_url(server) in line and "not JSON" in line and "3 tries" in line
    assert len(server.requests) == 3  # max_retries=2


def test_a_dropped_body_is_retried(server, problems, tmp_path):
    server.reset("drop", "drop")
    assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    assert len(server.requests) == 4


def test_a_body_dropped_every_time_stops_with_one_line(server, problems, tmp_path):
    server.reset(default="drop")
    line = assert_one_line_error(ttscale_eval(server, problems, tmp_path))
    assert chat_url(server) in line and "RemoteProtocolError" in line
    assert len(server.requests) == 3


def test_retry_after_in_seconds_is_honoured(server, problems, tmp_path):
    server.reset("429:1")  # backoff_s=0: without the header the retry would follow at once
    assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    first, second = server.requests[0]["at"], server.requests[1]["at"]
    assert second - first >= 1.0  # the server's own clock: the client waited what it was told


def test_retry_after_above_the_cap_is_capped_and_said(server, problems, tmp_path):
    server.reset("503:3600")
    result = ttscale_eval(server, problems, tmp_path, "--backend-option", "max_retry_after_s=1")
    assert_complete(result, tmp_path)
    assert "asked to retry after 3600 s; waiting 1 s instead, the cap" in flat(result.stderr)
    assert server.requests[1]["at"] - server.requests[0]["at"] >= 1.0


def test_missing_usage_is_counted_with_the_models_tokenizer(server, problems, tmp_path):
    from tokenizers import Tokenizer  # the fast tokenizer's own file, read without transformers

    from ttscale.models import prepare_model

    server.reset(default="nousage")
    records = assert_complete(ttscale_eval(server, problems, tmp_path), tmp_path)
    tokenizer = Tokenizer.from_file(f"{prepare_model('smollm2-135m').path}/tokenizer.json")
    per_sample = len(tokenizer.encode(ANSWER, add_special_tokens=False).ids)
    assert per_sample > 1
    for record in records:
        assert [c["num_tokens"] for c in record["candidates"]] == [per_sample] * N
        cost = record["cost"]
        assert cost["generated_tokens"] == N * per_sample and cost["prompt_tokens"] > 0
        assert cost["flops"] > 0 and cost["uncounted_calls"] == 0
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["cost_known"] is True


def test_missing_usage_of_an_unknown_model_says_the_cost_is_unknown(server, problems, tmp_path):
    server.reset(default="nousage")
    result = ttscale_eval(server, problems, tmp_path, "--backend-option", "num_params=1000000", model="remote-model")
    records = assert_complete(result, tmp_path)
    for record in records:
        assert record["cost"]["uncounted_calls"] == 1  # and not a silent 0 that looks like a cost
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cost_known"] is False and summary["cost"]["uncounted_calls"] == PROBLEMS
    assert table_value(result.stdout, "generated tokens").startswith("unknown")
    assert table_value(result.stdout, "FLOPs").startswith("unknown")
    assert "tokenizer=DIR" in flat(result.stderr)  # the fix is said


def test_a_model_of_unknown_size_has_unknown_flops_in_the_table_summary_compare_and_report(server, problems, tmp_path):
    # As with llama.cpp's server: every token counted (usage and ids), but nothing says how big the model is.
    server.reset()
    result = ttscale_eval(server, problems, tmp_path, model="remote-model")
    for record in assert_complete(result, tmp_path):
        assert record["cost"]["generated_tokens"] == N * len(TOKEN_IDS) and record["cost"]["unpriced_calls"] == 1
    assert table_value(result.stdout, "generated tokens") == f"{PROBLEMS * N * len(TOKEN_IDS):,}"  # tokens are known
    assert table_value(result.stdout, "FLOPs").startswith("unknown (model size unknown")
    assert "e+00" not in result.stdout  # nor eFLOPs at 0
    [run_dir] = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cost_known"] is False and summary["cost"]["unpriced_calls"] == PROBLEMS
    assert summary["cost"]["flops"] is None and summary["cost"]["eflops"] is None  # unknown, not 0.0
    assert summary["cost"]["generated_tokens"] == PROBLEMS * N * len(TOKEN_IDS)

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "ttscale.cli", *args, str(run_dir), "--bootstrap", "0"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    compare = flat(cli("compare", "-o", str(tmp_path / "plots")))
    assert f"FLOPs unknown for {run_dir.name}" in compare and "left out of the matched-FLOPs view" in compare
    assert "│ unknown │ unknown │ 24 │" in compare  # N=4's FLOPs and eFLOPs; its tokens are known
    assert "e+00" not in compare
    cli("report", "-o", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text()
    assert f"FLOPs unknown for {run_dir.name}" in html and "<td>unknown</td>" in html and "e+00" not in html


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8000/v1", "localhost:8000", "http:///v1", "ftp://127.0.0.1/v1"])
def test_a_url_that_cannot_be_one_fails_at_once(server, problems, tmp_path, url):
    server.reset()
    line = assert_one_line_error(ttscale_eval(server, problems, tmp_path, base_url=url))
    assert repr(url) in line and "--base-url http://" in line and "tries" not in line
    assert not server.requests


# --- In-process: the waits themselves, through an injected sleep ----------------------------------

QUESTION = (ChatMessage(role="user", content="What is 7 + 5?"),)


async def test_retry_after_as_an_http_date_is_honoured(server):
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    server.reset("503:date", "429:2")
    backend = OpenAIBackend("m", base_url=server.base_url, num_params=7, backoff_s=0.0, sleep=sleep)
    try:
        [generation] = await backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=N, seed=3))])
    finally:
        await backend.close()
    assert len(generation.completions) == N and len(server.requests) == 3
    assert 28.0 <= waits[0] <= 30.0  # the date is 30 s ahead, to the second
    assert waits[1] == 2.0


async def test_retry_after_cap_and_plain_backoff(server, caplog):
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    server.reset("429:3600", "503", "500")  # "503" without a value: no Retry-After to honour
    backend = OpenAIBackend("m", base_url=server.base_url, num_params=7, backoff_s=0.5, max_retry_after_s=10, sleep=sleep)
    try:
        with caplog.at_level(logging.WARNING, logger="ttscale.backends.openai_http"):
            [generation] = await backend.generate([GenRequest(prompt=QUESTION, params=SampleParams(n=2))])
    finally:
        await backend.close()
    assert len(generation.completions) == 2
    assert waits == [10.0, 1.0, 2.0]  # capped, then backoff_s·2^k
    assert sum("3600 s; waiting 10 s instead" in r.getMessage() for r in caplog.records) == 1


def test_retry_after_values():
    now = 1_000_000.0
    assert retry_after_s("7", now) == 7.0
    assert retry_after_s(" 0 ", now) == 0.0
    assert retry_after_s(email.utils.formatdate(now + 42, usegmt=True), now) == 42.0
    assert retry_after_s(email.utils.formatdate(now - 42, usegmt=True), now) == 0.0  # in the past: at once
    for unreadable in (None, "", "soon", "nan", "inf"):
        assert retry_after_s(unreadable, now) is None


async def in_process(server, request, **options):
    backend = OpenAIBackend("m", base_url=server.base_url, num_params=7, backoff_s=0.0, **options)
    try:
        [generation] = await backend.generate([request])
    finally:
        await backend.close()
    return generation


async def test_usage_totals_only_and_fewer_choices_still_give_exact_counts(server):
    server.reset(default="noids-fewer")
    generation = await in_process(server, GenRequest(prompt=QUESTION, params=SampleParams(n=N, seed=1)))
    # n=4 gave 2 choices and one usage total: sent again as 4 single requests, each counted exactly
    assert [c.num_tokens for c in generation.completions] == [len(TOKEN_IDS)] * N
    assert [r["body"]["n"] for r in server.requests] == [N] + [1] * N
    assert sorted(r["body"]["seed"] for r in server.requests[1:]) == [1, 2, 3, 4]


async def test_more_choices_than_asked_keep_the_first_n(server, caplog):
    server.reset(default="extra")
    with caplog.at_level(logging.WARNING, logger="ttscale.backends.openai_http"):
        generation = await in_process(server, GenRequest(prompt=QUESTION, params=SampleParams(n=2)))
    assert len(generation.completions) == 2 and len(server.requests) == 1
    assert any("returned 4 choices for n=2" in r.getMessage() for r in caplog.records)


async def test_a_200_error_object_is_retried_then_one_line(server):
    from ttscale.errors import TtscaleError

    server.reset(default="error200")
    with pytest.raises(TtscaleError) as caught:
        await in_process(server, GenRequest(prompt=QUESTION), max_retries=1)
    message = str(caught.value)
    assert "\n" not in message and chat_url(server) in message and "not a completion" in message and "upstream timed out" in message
    assert len(server.requests) == 2
